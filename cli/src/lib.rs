//! What every spanprof binary (server, operator, sidecar) shares around its `run`: one duration
//! grammar for every flag, logging set up one way (`--log-json`, colours only on a terminal),
//! waiting for SIGINT/SIGTERM, the admin endpoints, the metrics registry ([`metrics`]) and the
//! HTTP accept loop with its limits ([`serve`]). `main.rs` parses its `Args`, builds its config and calls
//! `run`; this crate is the rest of `main.rs` written once.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod serve;

use std::time::Duration;

/// Parses a duration: a number (decimals allowed) and a unit — `ms`, `s`, `m`, `h` or `d` — as
/// in `500ms`, `10s`, `1.5m`, `12h`, `7d`; a bare number is seconds, and `0` is zero. Every
/// duration flag of every spanprof binary takes this grammar.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: a number and a unit, e.g. 500ms, 10s, 5m, 12h or 7d"))?;
    let unit_secs = match unit {
        "ms" => 0.001,
        "s" | "" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: ms, s, m, h or d")),
    };
    Duration::try_from_secs_f64(n * unit_secs).map_err(|_| format!("{s:?} is out of range"))
}

/// [`parse_duration`] for flags where zero means nothing sensible (intervals, validity).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: must be more than 0")),
        d => Ok(d),
    }
}

/// Where a binary writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTo {
    Stdout,
    /// The sidecar: its stdout is not its own to fill.
    Stderr,
}

/// The logging flags every binary takes (`#[command(flatten)]`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SPANPROF_LOG_JSON")]
    pub log_json: bool,
}

impl LogArgs {
    /// Installs the global subscriber: level from `RUST_LOG` (default `info`), JSON lines with
    /// `--log-json`, else text with colour codes only when the output is a terminal
    /// (`kubectl logs` would show them as raw escapes).
    pub fn init(&self, to: LogTo) {
        use std::io::IsTerminal;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        match (self.log_json, to) {
            (true, LogTo::Stdout) => builder.json().init(),
            (true, LogTo::Stderr) => builder.json().with_writer(std::io::stderr).init(),
            (false, LogTo::Stdout) => builder.with_ansi(std::io::stdout().is_terminal()).init(),
            (false, LogTo::Stderr) => {
                builder.with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).init()
            }
        }
    }
}

/// Resolves when the process gets SIGINT or SIGTERM (what the kubelet sends to stop a pod). If
/// the handlers cannot be installed it never resolves, and says so in the log.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install the SIGINT/SIGTERM handlers: only SIGKILL stops this process");
            std::future::pending::<()>().await
        }
    }
}

/// The content type of `/metrics` (OpenMetrics text, what prometheus-client renders).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a binary's admin endpoints ask it.
pub trait Admin: Send + Sync + 'static {
    /// `/healthz`: `Err(why)` only when a restart helps (the kubelet restarts a failing container).
    fn live(&self) -> Result<(), String>;
    /// `/readyz`: `Err(why)` while it should get no traffic.
    fn ready(&self) -> Result<(), String>;
    /// `/metrics`: the OpenMetrics text.
    fn metrics(&self) -> String;
}

/// `/healthz` (`ok`), `/readyz` (`ready`) and `/metrics` on a binary's admin port; a failing
/// check answers 503 with its reason.
pub fn admin_router(admin: std::sync::Arc<dyn Admin>) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let check = |r: Result<(), String>, ok: &'static str| match r {
        Ok(()) => (StatusCode::OK, ok.to_owned()).into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    };
    let (live, ready, metrics) = (admin.clone(), admin.clone(), admin);
    axum::Router::new()
        .route("/healthz", get(move || async move { check(live.live(), "ok") }))
        .route("/readyz", get(move || async move { check(ready.ready(), "ready") }))
        .route("/metrics", get(move || async move { ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.metrics()) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar_for_every_duration_flag() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("10"), Duration::from_secs(10));
        assert_eq!(ok("1.5m"), Duration::from_secs(90));
        assert_eq!(ok("12h"), Duration::from_secs(12 * 3600));
        assert_eq!(ok("7d"), Duration::from_secs(7 * 86_400));
        assert_eq!(ok(" 0 "), Duration::ZERO);
        for bad in ["", "s", "10x", "-1s", "1e3s", "ten", "1.2.3s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_positive_duration("365d").unwrap(), Duration::from_secs(365 * 86_400));
    }

    struct Fixed(Result<(), String>);

    impl Admin for Fixed {
        fn live(&self) -> Result<(), String> {
            Ok(())
        }
        fn ready(&self) -> Result<(), String> {
            self.0.clone()
        }
        fn metrics(&self) -> String {
            "# EOF\n".into()
        }
    }

    async fn get(router: &axum::Router, path: &str) -> (u16, String, String) {
        use tower::ServiceExt;
        let req = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        let ct = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn admin_endpoints_say_why_they_fail() {
        let ready = admin_router(std::sync::Arc::new(Fixed(Ok(()))));
        assert_eq!(get(&ready, "/healthz").await.2, "ok");
        assert_eq!(get(&ready, "/readyz").await.0, 200);
        let (status, ct, body) = get(&ready, "/metrics").await;
        assert_eq!((status, ct.as_str(), body.as_str()), (200, OPENMETRICS, "# EOF\n"));
        let waiting = admin_router(std::sync::Arc::new(Fixed(Err("cache not synced yet".into()))));
        let (status, _, body) = get(&waiting, "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "cache not synced yet"));
    }
}
