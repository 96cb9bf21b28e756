//! spanprof-server: stores CPU profiles pushed with Pyroscope's protocols, merges profiles with
//! the same span ID upon insert, and serves the JSON API, exports and the flame-graph UI.
#![forbid(unsafe_code)]

pub mod error;
pub mod export;
pub mod flame;
pub mod gate;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod serve;
pub mod store;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use error::{Error, Result};

use store::embedded::EmbeddedOptions;
use store::Retention;

/// Everything the server needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub retention: Retention,
    /// How often retention runs.
    pub retention_interval: Duration,
    pub limits: ingest::Limits,
    /// Tuning of the embedded store.
    pub store: EmbeddedOptions,
    /// How many heavy queries run and wait at once.
    pub queries: gate::QueryLimits,
}

/// Runs the server until `shutdown` resolves (or SIGINT/SIGTERM when it is `None`), then
/// finishes in-flight requests and commits everything acknowledged before returning.
pub async fn run(config: Config, shutdown: Option<tokio::sync::oneshot::Receiver<()>>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind { addr: config.listen, source })?;
    serve(config, listener, shutdown).await
}

/// Like [`run`], on an already bound listener (tests bind port 0).
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<()> {
    let dir = config.data_dir.clone();
    let options = config.store.clone();
    let store = tokio::task::spawn_blocking(move || store::open(&dir, options))
        .await
        .map_err(|e| Error::Storage(format!("opening the store failed: {e}")))??;
    let state = Arc::new(http::AppState {
        store: store.clone(),
        limits: config.limits,
        metrics: metrics::Metrics::default(),
        ready: AtomicBool::new(false),
        queries: gate::QueryGate::new(config.queries),
    });
    let retention = tokio::spawn(retention_loop(state.clone(), config.retention, config.retention_interval));
    let app = http::router(state.clone());
    tracing::info!(listen = %listener.local_addr()?, data_dir = %config.data_dir.display(), "spanprof-server listening");
    state.ready.store(true, Ordering::Release);
    let ready = state.clone();
    serve::serve(listener, app, async move {
        match shutdown {
            Some(rx) => {
                let _ = rx.await;
            }
            None => shutdown_signal().await,
        }
        ready.ready.store(false, Ordering::Release);
        tracing::info!("shutting down: finishing in-flight requests");
    })
    .await?;
    retention.abort();
    tokio::task::spawn_blocking(move || store.close()).await.map_err(|e| Error::Storage(e.to_string()))?;
    tracing::info!("store closed; bye");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn retention_loop(state: Arc<http::AppState>, policy: Retention, every: Duration) {
    if policy.max_age.is_none() && policy.max_bytes.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    let mut last_collection: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let store = state.store.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        match tokio::task::spawn_blocking(move || store.enforce_retention(&policy, now)).await {
            Ok(Ok(stats)) => {
                let m = &state.metrics;
                m.retention_deleted
                    .get_or_create(&metrics::KindLabel { kind: "span_profile".into() })
                    .inc_by(stats.span_profiles_deleted);
                m.retention_deleted
                    .get_or_create(&metrics::KindLabel { kind: "process_bucket".into() })
                    .inc_by(stats.process_buckets_deleted);
                if stats.span_profiles_deleted + stats.process_buckets_deleted > 0 {
                    tracing::info!(?stats, "retention deleted old profiles");
                    // Deleted records leave frames and stacks nobody references; collecting
                    // them scans every record, so not after every pass — unless the store is
                    // over its size limit, which the unreferenced rows count against.
                    let store = state.store.clone();
                    let over = match (policy.max_bytes, tokio::task::spawn_blocking(move || store.stats()).await) {
                        (Some(max), Ok(Ok(s))) => s.record_bytes + s.interned_bytes > max,
                        _ => false,
                    };
                    if over || last_collection.is_none_or(|t| t.elapsed() >= GC_INTERVAL) {
                        last_collection = Some(std::time::Instant::now());
                        collect_garbage(&state).await;
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "retention failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "retention task failed"),
        }
    }
}

/// Least time between two collections of unreferenced frames and stacks.
const GC_INTERVAL: Duration = Duration::from_secs(600);

async fn collect_garbage(state: &Arc<http::AppState>) {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.collect_garbage()).await {
        Ok(Ok(stats)) => {
            let m = &state.metrics;
            m.retention_deleted.get_or_create(&metrics::KindLabel { kind: "frame".into() }).inc_by(stats.frames_deleted);
            m.retention_deleted.get_or_create(&metrics::KindLabel { kind: "stack".into() }).inc_by(stats.stacks_deleted);
            tracing::info!(?stats, "deleted frames and stacks no profile references");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "collecting unreferenced frames and stacks failed; will retry"),
        Err(e) => tracing::warn!(error = %e, "collecting unreferenced frames and stacks failed"),
    }
}
