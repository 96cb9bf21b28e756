//! spanprof-server: stores CPU profiles pushed with Pyroscope's protocols, merges profiles with
//! the same span ID upon insert, and serves the JSON API, exports and the flame-graph UI.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod diff;
pub mod error;
pub mod export;
pub mod flame;
pub mod gate;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod querier;
pub mod query;
pub mod selector;
pub mod store;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use error::{Error, Result};

use store::Retention;
use store::embedded::EmbeddedOptions;

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
    /// Blocks in object storage shared by replicas (`--object-store`); `None`: local only.
    pub blocks: Option<BlockConfig>,
}

/// Where and how a replica keeps blocks in object storage.
#[derive(Clone, Debug)]
pub struct BlockConfig {
    /// `s3://bucket/prefix` or `file:///path`.
    pub object_store: String,
    /// How often the head generation is sealed and becomes a block.
    pub interval: Duration,
    /// This replica's name in its blocks' IDs and metadata.
    pub replica: String,
    /// Bytes of block pages cached in memory.
    pub cache_bytes: usize,
    /// The other replicas (`--peers`): `dns+host:port` or a comma list of `host:port`.
    pub peers: Option<String>,
    /// How long blocks replaced by compaction are kept for queries that listed them.
    pub compaction_grace: Duration,
}

/// How often the block loop looks whether the head generation is due (its interval passed,
/// or it grew to a block's size) and retries a failed upload (with backoff up to the interval).
const BLOCK_TICK: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last block to upload; what does not make it is uploaded
/// after the restart (it stays in the local store).
const SHUTDOWN_UPLOAD: Duration = Duration::from_secs(30);

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
    let blocks = config.blocks.clone();
    let runtime = tokio::runtime::Handle::current();
    type Opened = (Arc<dyn store::ProfileStore>, Option<Arc<store::layered::LayeredStore>>);
    let (store, layered) = tokio::task::spawn_blocking(move || -> Result<Opened> {
        match blocks {
            None => Ok((store::open(&dir, options)?, None)),
            Some(b) => {
                let local = store::generations::Generations::open(&dir, options, &b.replica, now_ms())?;
                let bucket = Arc::new(store::bucket::Bucket::open(&b.object_store, b.cache_bytes)?);
                tracing::info!(bucket = %bucket.display, replica = %b.replica, "blocks go to object storage");
                let peers = b.peers.as_deref().map(store::peers::Peers::parse).transpose()?;
                let layered = Arc::new(store::layered::LayeredStore::new(local, bucket, runtime, b.replica, peers));
                layered.announce_recent_uploads(now_ms());
                Ok((layered.clone(), Some(layered)))
            }
        }
    })
    .await
    .map_err(|e| Error::Storage(format!("opening the store failed: {e}")))??;
    let mut metrics = metrics::Metrics::default();
    if let Some(l) = &layered {
        metrics.register_bucket(&l.status);
    }
    let state = Arc::new(http::AppState {
        store: store.clone(),
        limits: config.limits,
        metrics,
        ready: AtomicBool::new(false),
        queries: gate::QueryGate::new(config.queries),
        layered: layered.clone(),
    });
    let retention = tokio::spawn(retention_loop(state.clone(), config.retention, config.retention_interval));
    let shipper = match (&layered, &config.blocks) {
        (Some(l), Some(b)) => Some(tokio::spawn(ship_loop(l.clone(), b.interval, b.compaction_grace))),
        _ => None,
    };
    let app = http::router(state.clone());
    tracing::info!(listen = %listener.local_addr()?, data_dir = %config.data_dir.display(), "spanprof-server listening");
    state.ready.store(true, Ordering::Release);
    let ready = state.clone();
    spanprof_cli::serve::serve(listener, app, spanprof_cli::serve::Limits::default(), async move {
        match shutdown {
            Some(rx) => {
                let _ = rx.await;
            }
            None => spanprof_cli::shutdown_signal().await,
        }
        ready.ready.store(false, Ordering::Release);
        tracing::info!("shutting down: finishing in-flight requests");
    })
    .await?;
    retention.abort();
    if let (Some(shipper), Some(layered)) = (shipper, layered) {
        shipper.abort();
        // Everything local goes into a last block, unless the bucket keeps it waiting too long.
        let last = tokio::task::spawn_blocking(move || {
            if let Err(e) = layered.release_compactor_lease() {
                tracing::warn!(error = %e, "the compactor lease could not be released: it expires by itself");
            }
            ship_all(&layered)
        });
        match tokio::time::timeout(SHUTDOWN_UPLOAD, last).await {
            Ok(Ok(Ok(()))) => tracing::info!("local data uploaded"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "the last upload failed: the data stays local and is uploaded after a restart")
            }
            _ => tracing::warn!(
                "the last upload did not finish in time: the data stays local and is uploaded after a restart"
            ),
        }
    }
    tokio::task::spawn_blocking(move || store.close()).await.map_err(|e| Error::Storage(e.to_string()))?;
    tracing::info!("store closed; bye");
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Seals the head generation and uploads every sealed generation (a graceful stop).
fn ship_all(layered: &store::layered::LayeredStore) -> Result<()> {
    layered.seal_head(Duration::ZERO, true, now_ms())?;
    ship_sealed(layered)
}

/// Uploads every sealed generation, oldest first.
fn ship_sealed(layered: &store::layered::LayeredStore) -> Result<()> {
    while layered.ship(now_ms())?.is_some() {}
    Ok(())
}

/// Every [`BLOCK_TICK`], seals the head generation when it is due and uploads sealed
/// generations as blocks (a failed upload is retried with backoff: the data waits locally);
/// every `every`, compacts the bucket's blocks if this replica holds the compactor lease.
async fn ship_loop(layered: Arc<store::layered::LayeredStore>, every: Duration, grace: Duration) {
    let mut tick = tokio::time::interval(BLOCK_TICK.min(every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    let mut next_try = tokio::time::Instant::now();
    let mut next_compaction = tokio::time::Instant::now() + every;
    loop {
        tick.tick().await;
        // Sealing goes on while uploads back off: a generation stays the size of one interval.
        let l = layered.clone();
        match tokio::task::spawn_blocking(move || l.seal_head(every, false, now_ms())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sealing the head generation failed; retried at the next tick"),
            Err(e) => tracing::warn!(error = %e, "the sealing task failed"),
        }
        if tokio::time::Instant::now() >= next_try {
            let l = layered.clone();
            let shipped = tokio::task::spawn_blocking(move || ship_sealed(&l)).await;
            let failed = match shipped {
                Ok(Ok(())) => false,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "uploading a block failed; the data stays local and is retried");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the block task failed");
                    true
                }
            };
            failures = if failed { failures.saturating_add(1) } else { 0 };
            // 10 s, 20 s, 40 s, … up to the interval between blocks.
            let backoff = BLOCK_TICK.saturating_mul(1 << failures.min(16).saturating_sub(1)).min(every.max(BLOCK_TICK));
            next_try = tokio::time::Instant::now() + if failed { backoff } else { Duration::ZERO };
        }
        if tokio::time::Instant::now() < next_compaction {
            continue;
        }
        next_compaction = tokio::time::Instant::now() + every;
        let l = layered.clone();
        match tokio::task::spawn_blocking(move || l.compact(now_ms(), grace.as_millis() as u64)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "compaction failed; retried at the next tick"),
            Err(e) => tracing::warn!(error = %e, "the compaction task failed"),
        }
    }
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
            m.retention_deleted
                .get_or_create(&metrics::KindLabel { kind: "frame".into() })
                .inc_by(stats.frames_deleted);
            m.retention_deleted
                .get_or_create(&metrics::KindLabel { kind: "stack".into() })
                .inc_by(stats.stacks_deleted);
            tracing::info!(?stats, "deleted frames and stacks no profile references");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "collecting unreferenced frames and stacks failed; will retry"),
        Err(e) => tracing::warn!(error = %e, "collecting unreferenced frames and stacks failed"),
    }
}
