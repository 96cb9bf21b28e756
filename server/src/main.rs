//! `spanprof-server`: parses flags, builds a [`Config`], runs the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use spanprof_cli::{LogArgs, LogTo, parse_duration, parse_positive_duration};
use spanprof_server::gate::QueryLimits;
use spanprof_server::ingest::Limits;
use spanprof_server::store::Retention;
use spanprof_server::store::embedded::EmbeddedOptions;
use spanprof_server::{BlockConfig, Config};

/// spanprof server: Pyroscope-compatible ingest, span profiles merged by ID, query API and UI.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address for the UI, the API and ingest.
    #[arg(long, env = "SPANPROF_LISTEN", default_value = "0.0.0.0:4040")]
    listen: SocketAddr,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    limits: LimitArgs,
    /// Heavy queries (profiles, traces, whole-process views, exports) that build their answer at
    /// once (default: one per core); four times as many wait, more get 503 with Retry-After.
    #[arg(long, env = "SPANPROF_MAX_CONCURRENT_QUERIES")]
    max_concurrent_queries: Option<usize>,
    #[command(flatten)]
    blocks: BlockArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// The embedded store and what it keeps.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Store")]
struct StoreArgs {
    /// Directory of the embedded store.
    #[arg(long, env = "SPANPROF_DATA_DIR", default_value = "./spanprof-data")]
    data_dir: PathBuf,
    /// Delete profiles older than this (e.g. 7d, 12h, 30m; 0 keeps them forever).
    #[arg(long, env = "SPANPROF_RETENTION_AGE", default_value = "7d", value_parser = parse_duration)]
    retention_age: Duration,
    /// Keep stored profile records under this many bytes, oldest deleted first (0 = no limit).
    #[arg(long, env = "SPANPROF_RETENTION_BYTES", default_value_t = 10 << 30)]
    retention_bytes: u64,
    /// How often retention runs.
    #[arg(long, env = "SPANPROF_RETENTION_INTERVAL", default_value = "1m", value_parser = parse_positive_duration)]
    retention_interval: Duration,
    /// Inserts that may wait for the disk; more get 503 and are retried by clients.
    #[arg(long, env = "SPANPROF_INGEST_QUEUE", default_value_t = 256)]
    ingest_queue: usize,
    /// Free space kept on the data directory's filesystem: below it inserts are refused (507)
    /// and /readyz fails until space returns (default: 5 % of the filesystem, at most 1 GiB).
    #[arg(long, env = "SPANPROF_MIN_FREE_DISK_BYTES")]
    min_free_disk_bytes: Option<u64>,
    /// Block cache of the embedded store, MiB.
    #[arg(long, env = "SPANPROF_CACHE_MB", default_value_t = 256)]
    cache_mb: usize,
}

/// What one ingest request may hold.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Ingest limits")]
struct LimitArgs {
    /// Largest request body accepted, bytes.
    #[arg(long, env = "SPANPROF_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Largest size a compressed payload may expand to, bytes.
    #[arg(long, env = "SPANPROF_MAX_DECOMPRESSED_BYTES", default_value_t = 64 << 20)]
    max_decompressed_bytes: usize,
    /// Series (label sets) one ingest request may carry; more are refused (413).
    #[arg(long, env = "SPANPROF_MAX_SERIES_PER_REQUEST", default_value_t = 1_000)]
    max_series_per_request: usize,
    /// Labels of one series; more are refused (400).
    #[arg(long, env = "SPANPROF_MAX_LABELS_PER_SERIES", default_value_t = 30)]
    max_labels_per_series: usize,
    /// Bytes of a label value or span name; longer ones are refused (400).
    #[arg(long, env = "SPANPROF_MAX_LABEL_VALUE_BYTES", default_value_t = 2_048)]
    max_label_value_bytes: usize,
}

/// Replicas sharing an object store.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Object storage (several replicas)")]
struct BlockArgs {
    /// Object storage the replicas share (`s3://bucket/prefix`, credentials and endpoint from
    /// the AWS_* environment; or `file:///path`): the local data becomes blocks there, and every
    /// query reads them. Unset: everything stays in the local store.
    #[arg(long, env = "SPANPROF_OBJECT_STORE")]
    object_store: Option<String>,
    /// How often the local data (the head generation) becomes a block in the object store; sooner
    /// once it holds 500k span profiles or 256 MiB.
    #[arg(long, env = "SPANPROF_BLOCK_INTERVAL", default_value = "5m", value_parser = parse_positive_duration)]
    block_interval: Duration,
    /// This replica's name in its blocks (default: the pod's name, else the host name).
    #[arg(long, env = "SPANPROF_REPLICA_NAME")]
    replica_name: Option<String>,
    /// The pod's name (the downward API's `metadata.name`): the default replica name.
    #[arg(long, env = "POD_NAME", hide = true)]
    pod_name: Option<String>,
    /// The other replicas sharing the object store, asked for their local (not yet uploaded) data by
    /// every query: `dns+<host>:<port>` (every address of a headless Service) or a comma list of
    /// `host:port`. A peer that does not answer makes the answer partial, never an error.
    #[arg(long, env = "SPANPROF_PEERS")]
    peers: Option<String>,
    /// How long blocks replaced by compaction stay for queries that listed them before.
    #[arg(long, env = "SPANPROF_COMPACTION_GRACE", default_value = "5m", value_parser = parse_duration)]
    compaction_grace: Duration,
    /// Block pages cached in memory, MiB.
    #[arg(long, env = "SPANPROF_BLOCK_CACHE_MB", default_value_t = 256)]
    block_cache_mb: usize,
}

/// The host name (`/proc/sys/kernel/hostname`), or `spanprof-server` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "spanprof-server".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Destructured whole: a flag added to Args and not used here fails to compile.
    let Args {
        listen,
        store:
            StoreArgs {
                data_dir,
                retention_age,
                retention_bytes,
                retention_interval,
                ingest_queue,
                min_free_disk_bytes,
                cache_mb,
            },
        limits:
            LimitArgs {
                max_body_bytes,
                max_decompressed_bytes,
                max_series_per_request,
                max_labels_per_series,
                max_label_value_bytes,
            },
        max_concurrent_queries,
        blocks:
            BlockArgs { object_store, block_interval, replica_name, pod_name, peers, compaction_grace, block_cache_mb },
        log,
    } = Args::parse();
    log.init(LogTo::Stdout);
    if peers.is_some() && object_store.is_none() {
        anyhow::bail!("--peers needs --object-store: replicas share their older data through it");
    }
    let config = Config {
        listen,
        data_dir,
        retention: Retention {
            max_age: (!retention_age.is_zero()).then_some(retention_age),
            max_bytes: (retention_bytes > 0).then_some(retention_bytes),
        },
        retention_interval: retention_interval.max(Duration::from_secs(1)),
        limits: Limits {
            max_body_bytes,
            max_decompressed_bytes,
            max_series_per_request,
            max_labels_per_series,
            max_label_value_bytes,
            ..Limits::default()
        },
        store: EmbeddedOptions {
            queue_depth: ingest_queue.max(1),
            cache_bytes: cache_mb << 20,
            min_free_bytes: min_free_disk_bytes,
            ..Default::default()
        },
        queries: max_concurrent_queries.map_or_else(QueryLimits::default, QueryLimits::running),
        blocks: object_store.map(|object_store| BlockConfig {
            object_store,
            interval: block_interval.max(Duration::from_secs(1)),
            replica: replica_name.or(pod_name).unwrap_or_else(host_name),
            cache_bytes: block_cache_mb << 20,
            peers,
            compaction_grace,
        }),
    };
    spanprof_server::run(config, None).await?;
    Ok(())
}
