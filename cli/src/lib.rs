//! What every spanprof binary (server, operator, sidecar) shares around its `run`: one duration
//! grammar for every flag, logging set up one way (`--log-json`, colours only on a terminal),
//! and waiting for SIGINT/SIGTERM. `main.rs` parses its `Args`, builds its config and calls
//! `run`; this crate is the rest of `main.rs` written once.
#![forbid(unsafe_code)]

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
}
