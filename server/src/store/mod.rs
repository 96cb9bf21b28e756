//! Profile storage: the [`ProfileStore`] trait the HTTP layer uses, its query and result types,
//! and the embedded on-disk implementation ([`embedded::EmbeddedStore`], on fjall).
//!
//! Profiles with the same ID are merged upon insert. Span profiles (keyed by profile ID) are kept
//! apart from whole-process profiles (keyed by series and minute bucket).

pub mod block;
pub mod bucket;
pub mod codec;
mod disk;
pub mod embedded;
pub mod generations;
pub mod layered;
pub mod peers;
mod shared;
pub mod span_index;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::model::{Labels, ProfileId, SeriesBatch, TraceId};

/// Makes ring the process's rustls crypto provider (the object store's and peers' HTTPS
/// clients need one; ring, as everywhere in spanprof). Idempotent.
pub(crate) fn use_ring_for_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What the redb engine, removed after spanprof-server 0.1.0 at commit 19c0b91,
/// kept in the data directory.
const REDB_FILE: &str = "spanprof.redb";
/// The last commit whose server reads a redb store (`--store-engine redb`).
const REDB_LAST_COMMIT: &str = "19c0b91";

/// Opens the embedded store in `dir`. A directory that holds only a store of the removed redb
/// engine is refused rather than started empty beside it.
pub fn open(dir: &Path, options: embedded::EmbeddedOptions) -> Result<Arc<dyn ProfileStore>> {
    Ok(Arc::new(open_embedded(dir, options)?))
}

/// [`open`], as the concrete store (each local generation of the layered store is one). A
/// directory with generations not uploaded yet is refused too: without `--object-store` they
/// would be left behind unseen.
pub fn open_embedded(dir: &Path, options: embedded::EmbeddedOptions) -> Result<embedded::EmbeddedStore> {
    let generations =
        std::fs::read_dir(dir.join(generations::GENERATIONS_DIR)).map(|mut d| d.next().is_some()).unwrap_or(false);
    if generations && !dir.join(embedded::DIR_NAME).exists() {
        return Err(crate::error::Error::Storage(format!(
            "{} holds local data of a server run with --object-store ({}/) that may not be in the bucket yet: \
             start the server with the same --object-store to upload it, or on another data directory",
            dir.display(),
            generations::GENERATIONS_DIR,
        )));
    }
    check_not_redb(dir)?;
    embedded::EmbeddedStore::open(dir, options)
}

/// Refuses a directory that holds only a store of the removed redb engine, rather than starting
/// empty beside it.
pub(crate) fn check_not_redb(dir: &Path) -> Result<()> {
    if dir.join(REDB_FILE).exists() && !dir.join(embedded::DIR_NAME).exists() {
        return Err(crate::error::Error::Storage(format!(
            "{} holds a store of the redb engine ({REDB_FILE}), which this version no longer reads: the last \
             spanprof-server that does is 0.1.0 at commit {REDB_LAST_COMMIT} (--store-engine redb). Keep running that \
             version until its retention has emptied the store, or start this one on another data directory",
            dir.display(),
        )));
    }
    Ok(())
}

/// One span profile's metadata.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpanSummary {
    pub profile_id: ProfileId,
    pub trace_id: Option<TraceId>,
    pub service_name: String,
    pub span_name: String,
    /// Samples over all stacks.
    pub samples: u64,
    /// Sampling period, so CPU time = samples × period.
    pub period_ns: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Series labels of the first push (namespace, pod, container, node, …).
    pub labels: Labels,
}

/// Stacks (root first) with sample counts, frame names shared.
pub type Stacks = Vec<(Vec<Arc<str>>, u64)>;

/// A span profile: metadata and stacks.
#[derive(Clone, Debug)]
pub struct SpanProfile {
    pub summary: SpanSummary,
    pub stacks: Stacks,
}

/// A whole-process profile of one service over a time range.
#[derive(Clone, Debug)]
pub struct ProcessProfile {
    pub period_ns: u64,
    pub stacks: Stacks,
}

/// The length of the time buckets whole-process samples are kept in (a minute).
pub const BUCKET_MS: u64 = shared::BUCKET_MS;

/// Which whole-process series, over which time, a query reads.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcessQuery {
    pub selector: crate::selector::Selector,
    pub from_ms: u64,
    pub until_ms: u64,
}

impl ProcessQuery {
    /// The first minute bucket the range reads: the one `from_ms` falls in.
    pub fn first_bucket(&self) -> u64 {
        self.from_ms / shared::BUCKET_MS * shared::BUCKET_MS
    }
}

/// One series' samples per minute bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeriesPoints {
    pub labels: Labels,
    /// `(bucket start ms, samples, period ns)`, by bucket.
    pub points: Vec<(u64, u64, u64)>,
}

/// One span profile's CPU as the span index keeps it: what a span name's CPU distribution is
/// computed from without reading the profiles.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpanStat {
    pub profile_id: ProfileId,
    /// The `span_name` of its rollup ([`crate::model::UNNAMED_SPAN`] for a span without one).
    pub span_name: String,
    pub samples: u64,
    pub period_ns: u64,
    pub last_seen_ms: u64,
}

impl SpanStat {
    pub fn cpu_ns(&self) -> u64 {
        self.samples.saturating_mul(self.period_ns)
    }
}

/// Position in the newest-first listing, for pagination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub last_seen_ms: u64,
    pub profile_id: ProfileId,
}

impl Cursor {
    /// Opaque text form used by the API: hex only, so it goes into a URL as it is whatever
    /// characters the profile ID holds.
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let mut s = format!("{:x}.", self.last_seen_ms);
        for b in shared::id_key(&self.profile_id) {
            let _ = write!(s, "{b:02x}"); // writing to a String cannot fail
        }
        s
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (t, id) = s.split_once('.')?;
        if id.len() % 2 != 0 || !id.is_ascii() {
            return None;
        }
        let key = (0..id.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&id[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Cursor { last_seen_ms: u64::from_str_radix(t, 16).ok()?, profile_id: shared::id_from_key(&key).ok()? })
    }
}

/// Filters for listing span profiles, newest (by last seen) first.
#[derive(Clone, Debug, Default)]
pub struct SpanQuery {
    pub service: Option<String>,
    pub span_name: Option<String>,
    pub trace_id: Option<TraceId>,
    /// Only profiles seen at or after this time (Unix ms).
    pub from_ms: Option<u64>,
    /// Only profiles first seen at or before this time (Unix ms).
    pub until_ms: Option<u64>,
    pub min_samples: u64,
    pub limit: usize,
    pub after: Option<Cursor>,
}

/// A page of span profiles.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub profiles: Vec<SpanSummary>,
    /// Where the next page starts, when there may be more.
    pub next: Option<Cursor>,
}

/// What an insert did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertStats {
    pub samples: u64,
    pub span_profiles_created: u64,
    pub span_profiles_merged: u64,
    pub process_buckets: u64,
}

impl std::ops::AddAssign for InsertStats {
    fn add_assign(&mut self, o: Self) {
        self.samples += o.samples;
        self.span_profiles_created += o.span_profiles_created;
        self.span_profiles_merged += o.span_profiles_merged;
        self.process_buckets += o.process_buckets;
    }
}

/// How much data to keep.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    pub max_age: Option<Duration>,
    /// Upper bound on the stored profile bytes: records and the frame names and stacks they
    /// intern (not the engine's free or not yet compacted space).
    pub max_bytes: Option<u64>,
}

/// What one retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionStats {
    pub span_profiles_deleted: u64,
    pub process_buckets_deleted: u64,
}

/// What one garbage collection of frames and stacks removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub frames_deleted: u64,
    pub stacks_deleted: u64,
}

/// Sizes for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreStats {
    /// Bytes the store's files occupy on disk (allocated blocks).
    pub file_bytes: u64,
    /// Bytes of profile records (span profiles and whole-process buckets).
    pub record_bytes: u64,
    /// Bytes of interned frame names and stacks.
    pub interned_bytes: u64,
    pub span_profiles: u64,
}

/// A profile store. Calls block (disk I/O); the HTTP layer runs them on blocking threads.
pub trait ProfileStore: Send + Sync + 'static {
    /// Stores the batches durably and atomically, merging span profiles with the same ID.
    /// When this returns `Ok`, the data is on disk.
    fn insert(&self, batches: Vec<SeriesBatch>) -> Result<InsertStats>;
    fn span_profile(&self, id: ProfileId) -> Result<Option<SpanProfile>>;
    fn search_spans(&self, query: &SpanQuery) -> Result<Page>;
    /// All span profiles of a trace, oldest first.
    fn trace(&self, trace_id: TraceId) -> Result<Vec<SpanProfile>>;
    fn services(&self) -> Result<Vec<String>>;
    /// The labels of every whole-process series stored (span rollups included: they carry
    /// `span_name`).
    fn series(&self) -> Result<Vec<Labels>>;
    /// The whole-process profile of the series `q` selects over `[from_ms, until_ms]` (minute
    /// buckets started in it), merged onto one period. Span samples are in it through their
    /// rollup series (`span_name` set); `span_name=""` selects the samples outside spans.
    fn process_profile(&self, q: &ProcessQuery) -> Result<Option<ProcessProfile>>;
    /// Per series that `q` selects, its samples per minute bucket in the range.
    fn process_series(&self, q: &ProcessQuery) -> Result<Vec<SeriesPoints>>;
    /// The span profiles counted in the span rollups `q` selects (series with `span_name`) in
    /// the range: each profile's samples are in the rollup bucket of the minute it was last
    /// seen in (moved there whole when a later push merges into it), so these are exactly the
    /// profiles whose last-seen minute bucket started in `[from_ms, until_ms]`.
    fn span_stats(&self, q: &ProcessQuery) -> Result<Vec<SpanStat>>;
    /// Deletes what the policy no longer keeps; works in small steps so ingest is not held up.
    fn enforce_retention(&self, policy: &Retention, now_ms: u64) -> Result<RetentionStats>;
    /// Deletes the frames and stacks no record references any more (after retention deleted
    /// records). The mark runs on a snapshot beside ingest; only the sweep holds the writer.
    fn collect_garbage(&self) -> Result<GcStats>;
    fn stats(&self) -> Result<StoreStats>;
    /// Whether the store can take writes: its writer thread runs and the engine is not stuck
    /// in a failed state. `Err` says what is wrong (`/readyz` reports it) and whether only a
    /// restart recovers (then `/healthz` fails too, so the kubelet restarts the server).
    fn health(&self) -> std::result::Result<(), Trouble>;
    /// Stops accepting inserts, commits everything queued and waits for the writer.
    fn close(&self);
}

/// Why a store cannot take writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trouble {
    pub message: String,
    /// Only a restart recovers (a dead writer, a poisoned engine); a full disk recovers when
    /// space returns, and restarting would only take reads down too.
    pub restart_helps: bool,
}

/// The health of a store whose single writer thread is `writer` (`None` once closed).
pub(crate) fn writer_health(
    writer: &std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
) -> std::result::Result<(), Trouble> {
    let broken = |message: &str| Trouble { message: message.to_owned(), restart_helps: true };
    let guard = writer.lock().map_err(|_| broken("the store's writer handle is poisoned"))?;
    match guard.as_ref() {
        None => Err(Trouble { message: "the store is closed".into(), restart_helps: false }),
        Some(h) if h.is_finished() => {
            Err(broken("the store's writer thread stopped (see the log); writes fail until the server restarts"))
        }
        Some(_) => Ok(()),
    }
}

/// Trouble when less than the store's reserve is free: writes are refused until space returns,
/// which a restart would not bring back (and reads keep working meanwhile).
pub(crate) fn reserve_health(reserve: &disk::DiskReserve) -> std::result::Result<(), Trouble> {
    reserve.check().map_err(|e| Trouble {
        message: format!(
            "the disk is full: {e}; writes are refused (507) until space is freed or --retention-bytes is lowered"
        ),
        restart_helps: false,
    })
}
