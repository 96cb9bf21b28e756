//! spanprof-sidecar: samples an app's threads with `perf_event_open` (CPU clock, user registers
//! and stack copy), unwinds with DWARF CFI (framehop), joins each sample to the root span the
//! thread was running (the span-context channel), aggregates per upload interval into pprof,
//! symbolizes (blazesym) and pushes to the server with Pyroscope's push API.
//!
//! Threads: the sampling loop ([`agent`]) owns the perf rings and per-process unwinders; a
//! symbolizer thread turns each interval into gzipped pprof; a small tokio runtime pushes the
//! byte-bounded backlog ([`upload`]) and serves `/healthz`, `/readyz` and `/metrics`.
// `deny`, not `forbid`: `perf::sys` alone opts back in and justifies every block.
#![deny(unsafe_code)]

pub mod agent;
pub mod aggregate;
pub mod cli;
pub mod discover;
pub mod encode;
pub mod error;
pub mod join;
pub mod metrics;
pub mod modules;
pub mod perf;
pub mod pod;
pub mod procfs;
pub mod proto;
pub mod symbolize;
pub mod unwind;
pub mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, UNIX_EPOCH};

pub use error::{Error, Result};

use agent::{Agent, AgentConfig, Batch};
use discover::{Scope, Targets};
use metrics::Metrics;
use modules::Registry;
use symbolize::Symbolizer;
use upload::Uploads;

/// Everything the sidecar runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub server_url: String,
    pub context_dir: Option<PathBuf>,
    pub sample_rate_hz: u64,
    pub upload_interval: Duration,
    pub targets: Targets,
    pub stack_bytes: u32,
    pub max_buffer_bytes: usize,
    /// Per cgroup where possible (cheapest for the app), or always per thread.
    pub scope: Scope,
    /// How many CPUs the sampled containers may use together (sizes the rings); `None`: all.
    pub app_cpus: Option<f64>,
    /// Name the functions inlined at each frame too (DWARF line tables), as `perf report` does.
    pub inlined_frames: bool,
    pub listen: SocketAddr,
    pub service_name: Option<String>,
    /// Each container's service name, `SPANPROF_SERVICE_NAMES` parsed (see `spanprof_channel::pod`).
    pub service_names: Vec<(String, String)>,
    /// Extra series labels: namespace, pod, container, node (empty values are left out).
    pub series_labels: Vec<(String, String)>,
}

impl Config {
    fn check(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.sample_rate_hz) {
            return Err(Error::Config(format!("--sample-rate-hz {} must be within 1..=10000", self.sample_rate_hz)));
        }
        if self.stack_bytes < 512 || self.stack_bytes > 65_000 || !self.stack_bytes.is_multiple_of(8) {
            return Err(Error::Config(format!(
                "--stack-copy-bytes {} must be a multiple of 8 within 512..=65000",
                self.stack_bytes
            )));
        }
        if !(self.server_url.starts_with("http://") || self.server_url.starts_with("https://")) {
            return Err(Error::Config(format!(
                "--server-url {:?} must start with http:// or https://",
                self.server_url
            )));
        }
        Ok(())
    }
}

/// Opens the sampler. When perf events are not permitted (no CAP_PERFMON, a strict
/// `perf_event_paranoid`, a seccomp profile without `perf_event_open`), the sidecar does not
/// exit: as a native sidecar it would crash-loop and keep the app's pod from becoming ready.
/// It says what to grant, shows `sampling_permitted 0` and tries again every minute. `None`:
/// signalled meanwhile.
async fn open_sampler(config: &Config, metrics: &Metrics) -> Result<Option<perf::Sampler>> {
    let settings =
        perf::Settings { freq_hz: config.sample_rate_hz, stack_bytes: config.stack_bytes, app_cpus: config.app_cpus };
    let mut warned = false;
    loop {
        match perf::Sampler::new(settings) {
            Ok(s) => {
                metrics.sampling_permitted.set(1);
                metrics.ring_bytes.set(i64::try_from(s.ring_bytes()).unwrap_or(i64::MAX));
                return Ok(Some(s));
            }
            Err(Error::PerfNotPermitted(hint)) => {
                metrics.sampling_permitted.set(0);
                if !warned {
                    tracing::error!(%hint, retry = ?PERMISSION_RETRY,
                        "perf events are not permitted: not sampling; staying up (the app is not affected) and trying again");
                    warned = true;
                }
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = tokio::time::sleep(PERMISSION_RETRY) => {}
            () = spanprof_cli::shutdown_signal() => return Ok(None),
        }
    }
}

/// How often free heap memory is given back to the kernel at most.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Turns each interval's aggregate into one push request; runs until the agent hangs up.
fn symbolize_loop(
    batches: Receiver<Batch>,
    registry: Arc<Registry>,
    uploads: Arc<Uploads>,
    metrics: Arc<Metrics>,
    config: Config,
) {
    let mut symbolizer = Symbolizer::new().show_inlined(config.inlined_frames);
    let period_ns = 1_000_000_000 / config.sample_rate_hz as i64;
    let mut n = 0u64;
    let mut last_trim = std::time::Instant::now();
    for batch in batches {
        symbolizer.resolve(&registry, batch.aggregate.frames());
        metrics.symbols_cached.set(symbolizer.cached() as i64);
        let timing = encode::Timing {
            period_ns,
            time_unix_ns: batch.start.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0),
            duration_ns: batch.duration.as_nanos() as i64,
        };
        let profiles = batch
            .aggregate
            .series
            .iter()
            .map(|(series, stacks)| {
                let p = encode::build_profile(stacks, |f| symbolizer.names(&registry, f), timing);
                (encode::series_labels(series, &config.series_labels), p)
            })
            .collect();
        n += 1;
        let body = encode::push_request(profiles, &format!("{}-{n}", std::process::id()));
        tracing::debug!(samples = batch.aggregate.samples(), bytes = body.len(), "interval ready");
        uploads.enqueue(body);
        // After this thread's biggest frees, at most once a minute: a trim keeps RSS at the live
        // heap, but each one hands pages back that the next intervals fault in again (trimming
        // every 10 s interval was a fifth of this thread's CPU).
        if last_trim.elapsed() >= TRIM_EVERY {
            perf::release_free_memory();
            last_trim = std::time::Instant::now();
        }
    }
}

/// A sampling loop that has not gone round for this long is stuck (it wakes at least every
/// second): `/healthz` fails, so the kubelet restarts the sampler (a native sidecar restarts on
/// its own, without the app).
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

/// `/healthz`: alive unless the started sampling loop stalled.
fn liveness(since_beat: Option<Duration>) -> (axum::http::StatusCode, String) {
    match since_beat {
        Some(d) if d > STALLED_AFTER => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("the sampling loop has not run for {} s", d.as_secs()),
        ),
        _ => (axum::http::StatusCode::OK, "ok".into()),
    }
}

/// The sampler's admin endpoints: alive while its loop runs ([`liveness`]), ready once sampling.
struct Admin {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

impl spanprof_cli::Admin for Admin {
    fn live(&self) -> std::result::Result<(), String> {
        match liveness(self.metrics.since_beat()) {
            (axum::http::StatusCode::OK, _) => Ok(()),
            (_, why) => Err(why),
        }
    }

    fn ready(&self) -> std::result::Result<(), String> {
        if self.ready.load(Ordering::Acquire) { Ok(()) } else { Err("not ready".into()) }
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
}

async fn serve_http(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Result<()> {
    axum::serve(listener, spanprof_cli::admin_router(Arc::new(Admin { metrics, ready }))).await.map_err(Error::Serve)
}

/// How often the sidecar tries again to open perf events when they are not permitted.
const PERMISSION_RETRY: Duration = Duration::from_secs(60);

/// Runs the sidecar until SIGINT/SIGTERM; then uploads what it has (for a few seconds at most).
pub fn run(config: Config) -> Result<()> {
    config.check()?;
    let metrics = Arc::new(Metrics::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("spanprof-io")
        .build()
        .map_err(Error::Serve)?;
    let ready = Arc::new(AtomicBool::new(false));
    // Sampling matters more than its metrics: a taken port (two hostNetwork pods on a node, an
    // app on the same port) must not make a native sidecar crash-loop and hold the app back.
    match rt.block_on(tokio::net::TcpListener::bind(config.listen)) {
        Ok(listener) => {
            rt.spawn({
                let (m, r) = (Arc::clone(&metrics), Arc::clone(&ready));
                async move {
                    if let Err(e) = serve_http(listener, m, r).await {
                        tracing::error!(error = %e, "metrics server stopped");
                    }
                }
            });
        }
        Err(e) => {
            metrics.metrics_listen_failures.inc();
            tracing::error!(
                listen = %config.listen,
                error = %e,
                "cannot serve /metrics, /healthz and /readyz on {} (--listen, SPANPROF_SIDECAR_LISTEN); sampling goes on without them",
                config.listen
            );
        }
    }
    let Some(sampler) = rt.block_on(open_sampler(&config, &metrics))? else {
        return Ok(()); // signalled before sampling was ever permitted
    };
    sampler.start()?;
    tracing::info!(listen = %config.listen, server = %config.server_url, hz = config.sample_rate_hz,
        interval = ?config.upload_interval, "spanprof-sidecar started");
    let uploads = Arc::new(Uploads::new(config.max_buffer_bytes, Arc::clone(&metrics)));
    let pusher = rt.spawn(upload::run(Arc::clone(&uploads), config.server_url.clone(), Duration::from_secs(5)));

    let registry = Arc::new(Registry::default());
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(2);
    let symbolizer = std::thread::Builder::new()
        .name("spanprof-symbolize".into())
        .spawn({
            let (r, u, m, c) = (Arc::clone(&registry), Arc::clone(&uploads), Arc::clone(&metrics), config.clone());
            move || symbolize_loop(rx, r, u, m, c)
        })
        .map_err(Error::Serve)?;
    let stop = Arc::new(AtomicBool::new(false));
    let agent = Agent::new(
        sampler,
        Arc::clone(&registry),
        Arc::clone(&metrics),
        AgentConfig {
            discovery: discover::Config {
                targets: config.targets.clone(),
                context_dir: config.context_dir.clone(),
                service_name: config.service_name.clone(),
                service_names: config.service_names.clone(),
                scope: config.scope,
            },
            upload_interval: config.upload_interval,
            // While samples come too late for their threads' span history (more than 1,024
            // root-span changes per thread per second): 4,096 changes per second per thread can
            // be joined at this interval. Measured: 100 ms cost 2 ms more sidecar CPU per 1,000
            // samples (BENCHMARKS.md).
            poll_interval: Duration::from_millis(250),
        },
    );
    let sampling = std::thread::Builder::new()
        .name("spanprof-sample".into())
        .spawn({
            let stop = Arc::clone(&stop);
            move || agent.run(&stop, tx)
        })
        .map_err(Error::Serve)?;
    ready.store(true, Ordering::Release);

    rt.block_on(spanprof_cli::shutdown_signal());
    tracing::info!("shutting down: uploading what is left");
    stop.store(true, Ordering::Release);
    let _ = sampling.join();
    let _ = symbolizer.join();
    uploads.close();
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), pusher).await });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_only_when_the_started_loop_stalls() {
        assert_eq!(liveness(None).0, axum::http::StatusCode::OK, "not started (waiting for permission)");
        assert_eq!(liveness(Some(Duration::from_secs(1))).0, axum::http::StatusCode::OK);
        let (status, text) = liveness(Some(STALLED_AFTER + Duration::from_secs(5)));
        assert_eq!(status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("35 s"), "{text}");
        let m = crate::metrics::Metrics::default();
        assert_eq!(m.since_beat(), None);
        m.beat();
        assert!(m.since_beat().is_some_and(|d| d < Duration::from_secs(1)));
    }
}
