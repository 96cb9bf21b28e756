//! The embedded store: span profiles and whole-process buckets in fjall's LSM tree, whose appends
//! cost the same at millions of random span IDs (where a copy-on-write B-tree, redb, dirtied pages
//! all over its file: README, Storage).
//!
//! One directory `spanprof.fjall` in the data directory, one keyspace per index. Tuple keys are
//! encoded big-endian (and strings length-prefixed) so byte order is tuple order and range and
//! reverse scans work. One writer thread group-commits inserts in one atomic write batch
//! ([`Writes`], whose reads see the group's own writes, so several inserts of one span ID in a
//! group merge) and fsyncs the journal before anyone is answered; readers use snapshots, so a
//! listing never sees half a commit.

use spanprof_proto::labels as wire;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ahash::AHashMap as HashMap;
use fjall::{
    KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace, Snapshot, UserKey,
    UserValue,
};
use prost::Message;

use super::codec::{self, Counts, SpanRecord, StackRecord, StacksRecord};
use super::disk::{DiskReserve, allocated_bytes};
use super::shared::{
    BUCKET_MS, GC_SWEEP_ROWS, GcBounds, GcCandidates, InternSink, Interner, MAX_ID_KEY_BYTES, Mark, MergedSpan,
    PendingInterns, RETENTION_STEP_ROWS, SCAN_BUDGET, SeriesRecord, SizeEstimate, id_from_key, id_key, merge_span,
    rescaled, series_id_seed, span_labels, summary,
};
use super::span_index::{self, CHUNK_ENTRIES};
use super::{
    Cursor, GcStats, InsertStats, Page, ProcessProfile, ProcessQuery, ProfileStore, Retention, RetentionStats,
    SeriesPoints, SpanProfile, SpanQuery, SpanStat, Stacks, StoreStats,
};
use crate::error::{Error, Result};
use crate::model::{Labels, ProfileId, SeriesBatch, TraceId, rescale_count};

/// Tuning of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Inserts waiting for the writer at most; more are refused (HTTP 503) rather than queued.
    pub queue_depth: usize,
    /// Most inserts committed together in one write batch.
    pub max_group: usize,
    /// fjall's block cache, bytes.
    pub cache_bytes: usize,
    /// Free space kept on the data directory's filesystem: inserts are refused (507) below it.
    /// `None`: 5 % of the filesystem, at most 1 GiB ([`super::disk`]).
    pub min_free_bytes: Option<u64>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { queue_depth: 256, max_group: 64, cache_bytes: 256 << 20, min_free_bytes: None }
    }
}

/// The store's directory in the data directory.
pub const DIR_NAME: &str = "spanprof.fjall";

const RECORD_BYTES: &str = "record_bytes";

/// The stacks and frames of one snapshot, by ID, for building a block from stored records.
struct SnapshotStacks<'r> {
    snap: &'r Snapshot,
    k: &'r Keyspaces,
}

impl super::block::StackSource for SnapshotStacks<'_> {
    fn frames_of(&mut self, id: u32) -> Result<Vec<u32>> {
        let bytes = self
            .snap
            .get(self.k.stacks.inner(), id.to_be_bytes())?
            .ok_or_else(|| Error::Corrupt(format!("stack {id} missing")))?;
        Ok(codec::decode::<StackRecord>(&bytes, "stack")?.frame_ids)
    }

    fn frame_name(&mut self, id: u32) -> Result<Arc<str>> {
        let bytes = self
            .snap
            .get(self.k.frames.inner(), id.to_be_bytes())?
            .ok_or_else(|| Error::Corrupt(format!("frame {id} missing")))?;
        Ok(Arc::from(String::from_utf8_lossy(&bytes).as_ref()))
    }
}
const SPAN_COUNT: &str = "span_profiles";

/// The keyspaces.
struct Keyspaces {
    db: SingleWriterTxDatabase,
    /// profile ID ([`id_key`]) → `SpanRecord`
    spans: SingleWriterTxKeyspace,
    /// (last_seen_ms, profile ID): [`time_key`]
    spans_by_time: SingleWriterTxKeyspace,
    /// (service, last_seen_ms, profile ID): [`svc_time_key`]
    spans_by_service: SingleWriterTxKeyspace,
    /// (trace id, profile ID): [`trace_key`]
    spans_by_trace: SingleWriterTxKeyspace,
    /// frame id (4) → name
    frames: SingleWriterTxKeyspace,
    /// stack id (4) → `StackRecord`
    stacks: SingleWriterTxKeyspace,
    /// series id (8) → `SeriesRecord`
    series: SingleWriterTxKeyspace,
    /// (service, series id): [`svc_key`]
    series_by_service: SingleWriterTxKeyspace,
    /// (series id, bucket start ms) → `StacksRecord`
    process: SingleWriterTxKeyspace,
    /// (bucket start ms, series id)
    process_by_time: SingleWriterTxKeyspace,
    /// (span-rollup series id, minute, chunk) → packed entries ([`span_index`]): the per-span
    /// CPU of a span name without reading its profiles.
    span_index: SingleWriterTxKeyspace,
    /// counter name → u64 BE
    meta: SingleWriterTxKeyspace,
}

impl Keyspaces {
    fn open(path: &Path, cache_bytes: u64) -> Result<Self> {
        let db = SingleWriterTxDatabase::builder(path).cache_size(cache_bytes).open()?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(Keyspaces {
            spans: ks("spans")?,
            spans_by_time: ks("spans_by_time")?,
            spans_by_service: ks("spans_by_service")?,
            spans_by_trace: ks("spans_by_trace")?,
            frames: ks("frames")?,
            stacks: ks("stacks")?,
            series: ks("series")?,
            series_by_service: ks("series_by_service")?,
            process: ks("process")?,
            process_by_time: ks("process_by_time")?,
            span_index: ks("span_index")?,
            meta: ks("meta")?,
            db,
        })
    }
}

fn k2(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

/// (last_seen_ms, profile ID key): the ID is last, so it is the key's rest.
fn time_key(t: u64, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&t.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// (trace ID, profile ID key).
fn trace_key(trace: u128, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + id.len());
    k.extend_from_slice(&trace.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// (service, last_seen_ms, profile ID key).
fn svc_time_key(service: &str, t: u64, id: &[u8]) -> Vec<u8> {
    let mut k = svc_key(service, &[t]);
    k.extend_from_slice(id);
    k
}

/// The (last_seen_ms, profile ID key) that follow the first `skip` bytes of an index key.
fn time_and_id(key: &[u8], skip: usize) -> Result<(u64, Vec<u8>)> {
    let corrupt = || Error::Corrupt("short span index key".into());
    let t = key.get(skip..skip + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).ok_or_else(corrupt)?;
    Ok((u64::from_be_bytes(t), key[skip + 8..].to_vec()))
}

/// The length of a [`svc_key`]'s service prefix.
fn svc_prefix_len(key: &[u8]) -> Result<usize> {
    let len = key
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .ok_or_else(|| Error::Corrupt("service index key".into()))?;
    Ok(4 + u32::from_be_bytes(len) as usize)
}

/// A service name as a key prefix: length first, so one service's keys are exactly those with
/// its prefix whatever bytes the name holds (order across services does not matter).
fn svc_prefix(service: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + service.len() + 16);
    k.extend_from_slice(&(service.len() as u32).to_be_bytes());
    k.extend_from_slice(service.as_bytes());
    k
}

/// `svc_prefix(service)` followed by big-endian u64s.
fn svc_key(service: &str, rest: &[u64]) -> Vec<u8> {
    let mut k = svc_prefix(service);
    for v in rest {
        k.extend_from_slice(&v.to_be_bytes());
    }
    k
}

/// The service name of a [`svc_key`].
fn svc_of(key: &[u8]) -> Result<String> {
    let corrupt = || Error::Corrupt("service index key".into());
    let len = key.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).ok_or_else(corrupt)?;
    let name = key.get(4..4 + u32::from_be_bytes(len) as usize).ok_or_else(corrupt)?;
    String::from_utf8(name.to_vec()).map_err(|_| corrupt())
}

/// The big-endian u64 ending `key` `from_end` u64s before its end (0 = the last one).
fn u64_at_end(key: &[u8], from_end: usize) -> Result<u64> {
    let end = key.len().checked_sub(8 * from_end).ok_or_else(|| Error::Corrupt("short index key".into()))?;
    let start = end.checked_sub(8).ok_or_else(|| Error::Corrupt("short index key".into()))?;
    key.get(start..end)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::Corrupt("short index key".into()))
}

fn u32_key(key: &[u8]) -> Result<u32> {
    <[u8; 4]>::try_from(key).map(u32::from_be_bytes).map_err(|_| Error::Corrupt("id key".into()))
}

fn counter(r: &impl Readable, k: &Keyspaces, name: &str) -> Result<u64> {
    counter_value(name, r.get(k.meta.inner(), name)?)
}

fn counter_value(name: &str, stored: Option<UserValue>) -> Result<u64> {
    match stored {
        Some(v) => {
            <[u8; 8]>::try_from(&*v).map(u64::from_be_bytes).map_err(|_| Error::Corrupt(format!("counter {name}")))
        }
        None => Ok(0),
    }
}

fn add_counter(w: &mut Writes<'_>, k: &Keyspaces, name: &str, delta: i64) -> Result<()> {
    if delta == 0 {
        return Ok(());
    }
    let cur = counter_value(name, w.get(&k.meta, name)?)?;
    w.insert(&k.meta, name, cur.saturating_add_signed(delta).to_be_bytes());
    Ok(())
}

/// What the writer changes in one step (an insert group, a retention step, a sweep chunk): the
/// last write of each key, kept in memory where the step's own reads find it, then committed as
/// one atomic write batch with the journal fsynced before anyone is answered. The writer thread
/// is the only writer, so what a read finds beneath is everything committed before the step. (A
/// read-your-writes transaction kept the same writes in a skiplist of its own and inserted each
/// into the memtable again at commit: ~40 % of the writer's CPU, BENCHMARKS.md.)
struct Writes<'k> {
    db: &'k fjall::Database,
    /// Per keyspace written: key → its new value, `None` for a removal.
    changes: Vec<(fjall::Keyspace, HashMap<UserKey, Option<UserValue>>)>,
}

impl<'k> Writes<'k> {
    fn new(k: &'k Keyspaces) -> Self {
        Writes { db: k.db.inner(), changes: Vec::new() }
    }

    fn changes_of(&self, ks: &SingleWriterTxKeyspace) -> Option<&HashMap<UserKey, Option<UserValue>>> {
        self.changes.iter().find(|(written, _)| written == ks.inner()).map(|(_, changes)| changes)
    }

    fn changes_mut(&mut self, ks: &SingleWriterTxKeyspace) -> &mut HashMap<UserKey, Option<UserValue>> {
        let i = match self.changes.iter().position(|(written, _)| written == ks.inner()) {
            Some(i) => i,
            None => {
                self.changes.push((ks.inner().clone(), HashMap::new()));
                self.changes.len() - 1
            }
        };
        &mut self.changes[i].1
    }

    /// The value of `key`: this step's write, else what is committed.
    fn get(&self, ks: &SingleWriterTxKeyspace, key: impl AsRef<[u8]>) -> Result<Option<UserValue>> {
        let key = key.as_ref();
        if let Some(change) = self.changes_of(ks).and_then(|changes| changes.get(key)) {
            return Ok(change.clone());
        }
        Ok(ks.get(key)?)
    }

    fn insert(&mut self, ks: &SingleWriterTxKeyspace, key: impl Into<UserKey>, value: impl Into<UserValue>) {
        self.changes_mut(ks).insert(key.into(), Some(value.into()));
    }

    fn remove(&mut self, ks: &SingleWriterTxKeyspace, key: impl Into<UserKey>) {
        self.changes_mut(ks).insert(key.into(), None);
    }

    /// The committed rows of `ks` under `prefix`, in key order. Scans do not see this step's
    /// writes, so a scan of a keyspace the step has written to is refused: every step scans
    /// before it writes there (the span index is written at the end of a group).
    fn committed_prefix(&self, ks: &SingleWriterTxKeyspace, prefix: &[u8]) -> Result<fjall::Iter> {
        if self.changes_of(ks).is_some_and(|changes| !changes.is_empty()) {
            return Err(Error::Storage(format!("internal: a scan of {} after writing to it", ks.inner().name())));
        }
        Ok(ks.inner().prefix(prefix))
    }

    /// Writes every change atomically (readers' snapshots see all or none) and fsyncs the journal.
    fn commit(self) -> Result<()> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for (ks, changes) in self.changes {
            for (key, value) in changes {
                match value {
                    Some(value) => batch.insert(&ks, key, value),
                    None => batch.remove(&ks, key),
                }
            }
        }
        batch.commit()?;
        Ok(())
    }
}

enum Command {
    Insert(Vec<SeriesBatch>, SyncSender<Result<InsertStats>>),
    Retention(Retention, u64, SyncSender<Result<RetentionStats>>),
    /// Garbage collection of frames and stacks: start marking, then sweep (or abort).
    GcBegin(SyncSender<GcBounds>),
    GcSweep(GcCandidates, SyncSender<Result<GcStats>>),
    GcAbort,
}

/// The embedded store on fjall. Cheap to share: clone the `Arc`.
pub struct EmbeddedStore {
    ks: Arc<Keyspaces>,
    path: PathBuf,
    tx: Mutex<Option<SyncSender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Set by the writer when fjall stopped taking writes (poisoned after an I/O error such as a
    /// full disk); cleared by a later successful write.
    failed: Arc<Mutex<Option<String>>>,
    reserve: DiskReserve,
    /// Bytes of the frame and stack tables, as the writer's interner counts them.
    interned_bytes: Arc<AtomicU64>,
}

/// The series `selector` selects: through the service index when it names one service.
fn selected_series(r: &Snapshot, k: &Keyspaces, selector: &crate::selector::Selector) -> Result<Vec<(u64, Labels)>> {
    let decode = |v: &[u8]| -> Result<Labels> {
        let rec: SeriesRecord = codec::decode(v, "series")?;
        Ok(rec.labels.into_iter().map(|l| (l.name, l.value)).collect())
    };
    let mut out = Vec::new();
    if let Some(service) = selector.required(wire::SERVICE_NAME) {
        for row in r.prefix(k.series_by_service.inner(), svc_prefix(service)) {
            let sid = u64_at_end(&row.key()?, 0)?;
            let Some(v) = r.get(k.series.inner(), sid.to_be_bytes())? else { continue };
            let labels = decode(&v)?;
            if selector.matches(&labels) {
                out.push((sid, labels));
            }
        }
    } else {
        for row in r.iter(k.series.inner()) {
            let (key, v) = row.into_inner()?;
            let labels = decode(&v)?;
            if selector.matches(&labels) {
                out.push((u64_at_end(&key, 0)?, labels));
            }
        }
    }
    Ok(out)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, replaying the journal after an unclean shutdown.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(DIR_NAME);
        let ks = Arc::new(Keyspaces::open(&path, options.cache_bytes as u64)?);
        let mut interner = Interner::default();
        {
            let r = ks.db.read_tx();
            for row in r.iter(ks.frames.inner()) {
                let (id, name) = row.into_inner()?;
                let name = std::str::from_utf8(&name).map_err(|_| Error::Corrupt("frame name".into()))?;
                interner.load_frame(u32_key(&id)?, name);
            }
            for row in r.iter(ks.stacks.inner()) {
                let (id, bytes) = row.into_inner()?;
                interner.load_stack(u32_key(&id)?, &bytes)?;
            }
        }
        let (tx, rx) = mpsc::sync_channel(options.queue_depth);
        let writer_ks = ks.clone();
        let max_group = options.max_group.max(1);
        let failed = Arc::new(Mutex::new(None));
        let writer_failed = Arc::clone(&failed);
        let reserve = DiskReserve::new(dir, options.min_free_bytes);
        let writer_reserve = reserve.clone();
        let interned_bytes = Arc::new(AtomicU64::new(interner.bytes()));
        let writer_interned = Arc::clone(&interned_bytes);
        let writer = std::thread::Builder::new().name("spanprof-store-writer".into()).spawn(move || {
            writer_loop(&writer_ks, rx, interner, max_group, &writer_failed, &writer_reserve, &writer_interned)
        })?;
        Ok(EmbeddedStore {
            ks,
            path,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            failed,
            reserve,
            interned_bytes,
        })
    }

    fn send(&self, cmd: Command) -> Result<()> {
        let guard = self.tx.lock().map_err(|_| Error::Unavailable)?;
        let tx = guard.as_ref().ok_or(Error::Unavailable)?;
        match tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(Error::Unavailable),
        }
    }

    /// Stops accepting inserts, lets the writer commit everything queued, and waits for it.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }

    /// Like [`Self::send`], but waits for room: a collection's sweep must reach the writer, or
    /// marking would go on (and remember every ID used) until the next collection.
    fn send_waiting(&self, cmd: Command) -> Result<()> {
        let tx = self.tx.lock().map_err(|_| Error::Unavailable)?.as_ref().ok_or(Error::Unavailable)?.clone();
        tx.send(cmd).map_err(|_| Error::Unavailable)
    }

    fn read(&self) -> Snapshot {
        self.ks.db.read_tx()
    }

    /// The mark phase of a collection, on a snapshot, outside the writer.
    fn mark(&self, bounds: GcBounds) -> Result<GcCandidates> {
        let r = self.read();
        let k = &*self.ks;
        let mut mark = Mark::new(bounds);
        for row in r.iter(k.spans.inner()) {
            let (_, bytes) = row.into_inner()?;
            let rec: SpanRecord = codec::decode(&bytes, "span")?;
            mark.record(&rec.stack_counts()?);
        }
        for row in r.iter(k.process.inner()) {
            let (_, bytes) = row.into_inner()?;
            let rec: StacksRecord = codec::decode(&bytes, "process bucket")?;
            mark.record(&rec.to_counts()?);
        }
        for row in r.iter(k.stacks.inner()) {
            let (id, bytes) = row.into_inner()?;
            mark.stack(u32_key(&id)?, &bytes)?;
        }
        let mut frames = Vec::new();
        for row in r.iter(k.frames.inner()) {
            frames.push(u32_key(&row.key()?)?);
        }
        Ok(mark.finish(frames.into_iter()))
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Writes a group's new frames and stacks into their keyspaces.
struct FjallInterns<'a, 'tx> {
    w: &'a mut Writes<'tx>,
    k: &'a Keyspaces,
}

impl InternSink for FjallInterns<'_, '_> {
    fn put_frame(&mut self, id: u32, name: &str) -> Result<()> {
        self.w.insert(&self.k.frames, id.to_be_bytes(), name);
        Ok(())
    }

    fn put_stack(&mut self, id: u32, record: &[u8]) -> Result<()> {
        self.w.insert(&self.k.stacks, id.to_be_bytes(), record);
        Ok(())
    }
}

fn writer_loop(
    k: &Keyspaces,
    rx: Receiver<Command>,
    mut interner: Interner,
    max_group: usize,
    failed: &Mutex<Option<String>>,
    reserve: &DiskReserve,
    interned_bytes: &AtomicU64,
) {
    while let Ok(first) = rx.recv() {
        let mut inserts = Vec::new();
        let mut others = Vec::new();
        match first {
            Command::Insert(b, reply) => inserts.push((b, reply)),
            other => others.push(other),
        }
        while inserts.len() < max_group {
            match rx.try_recv() {
                Ok(Command::Insert(b, reply)) => inserts.push((b, reply)),
                Ok(other) => others.push(other),
                Err(_) => break,
            }
        }
        // Under the reserve nothing reaches the engine, which so never meets ENOSPC mid-write.
        if let Err(Error::DiskFull { free, reserve }) = reserve.check() {
            for (_, reply) in inserts.drain(..) {
                let _ = reply.send(Err(Error::DiskFull { free, reserve }));
            }
        }
        if !inserts.is_empty() {
            match insert_group(k, &mut interner, &inserts) {
                Ok(stats) => {
                    interned_bytes.store(interner.bytes(), Ordering::Relaxed);
                    if let Ok(mut f) = failed.lock() {
                        f.take();
                    }
                    for ((_, reply), s) in inserts.into_iter().zip(stats) {
                        let _ = reply.send(Ok(s));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "insert group commit failed; nothing of it was stored");
                    // A full disk, and fjall refusing every later write once poisoned by one:
                    // health reports it until a write succeeds again.
                    let text = e.to_string();
                    if (text.contains("Poisoned") || text.contains("No space left") || text.contains("StorageFull"))
                        && let Ok(mut f) = failed.lock()
                    {
                        *f = Some(e.to_string());
                    }
                    for (_, reply) in inserts {
                        let _ = reply.send(Err(Error::Storage(e.to_string())));
                    }
                }
            }
        }
        for cmd in others {
            match cmd {
                Command::Retention(policy, now_ms, reply) => {
                    let _ = reply.send(retention_step(k, &policy, now_ms, interner.bytes()));
                }
                Command::GcBegin(reply) => {
                    let _ = reply.send(interner.begin_marking());
                }
                Command::GcSweep(candidates, reply) => {
                    let doomed = interner.end_marking(candidates);
                    let swept = sweep(k, &mut interner, doomed);
                    // Before the reply: whoever waits for the collection then sees its effect.
                    interned_bytes.store(interner.bytes(), Ordering::Relaxed);
                    let _ = reply.send(swept);
                }
                Command::GcAbort => interner.abort_marking(),
                Command::Insert(..) => {}
            }
        }
        interned_bytes.store(interner.bytes(), Ordering::Relaxed);
    }
    // Every commit was already fsynced; this only covers anything fjall buffered on its own.
    if let Err(e) = k.db.persist(PersistMode::SyncAll) {
        tracing::error!(error = %e, "persisting the fjall journal at close failed");
    }
}

/// Applies a group of inserts and commits them atomically and durably (journal fsynced).
fn insert_group(
    k: &Keyspaces,
    interner: &mut Interner,
    inserts: &[(Vec<SeriesBatch>, SyncSender<Result<InsertStats>>)],
) -> Result<Vec<InsertStats>> {
    let mut w = Writes::new(k);
    let mut pending = PendingInterns::new(interner);
    let mut stats = Vec::with_capacity(inserts.len());
    let mut bytes_delta: i64 = 0;
    let mut spans_delta: i64 = 0;
    let mut adds = BucketAdds::default();
    let mut index = IndexChanges::default();
    for (batches, _) in inserts {
        let mut s = InsertStats::default();
        for batch in batches {
            let mut g = Group {
                adds: &mut adds,
                index: &mut index,
                bytes_delta: &mut bytes_delta,
                spans_delta: &mut spans_delta,
            };
            s += insert_batch(&mut w, k, interner, &mut pending, &mut g, batch)?;
        }
        stats.push(s);
    }
    bytes_delta += adds.write(&mut w, k)?;
    bytes_delta += index.write(&mut w, k)?;
    add_counter(&mut w, k, RECORD_BYTES, bytes_delta)?;
    add_counter(&mut w, k, SPAN_COUNT, spans_delta)?;
    w.commit()?;
    pending.commit_into(interner);
    Ok(stats)
}

fn series_id(w: &mut Writes<'_>, k: &Keyspaces, labels: &Labels) -> Result<u64> {
    let mut id = series_id_seed(labels);
    let record = SeriesRecord::from_labels(labels).encode_to_vec();
    loop {
        match w.get(&k.series, id.to_be_bytes())? {
            None => {
                w.insert(&k.series, id.to_be_bytes(), record.as_slice());
                let service = labels.get(wire::SERVICE_NAME).map(String::as_str).unwrap_or("");
                w.insert(&k.series_by_service, svc_key(service, &[id]), []);
                return Ok(id);
            }
            Some(bytes) if *bytes == *record => return Ok(id),
            Some(_) => id = id.wrapping_add(1),
        }
    }
}

/// What an insert group accumulates beside its writes, written once at its end.
struct Group<'g> {
    adds: &'g mut BucketAdds,
    index: &'g mut IndexChanges,
    bytes_delta: &'g mut i64,
    spans_delta: &'g mut i64,
}

/// Writes one batch into the group's writes.
fn insert_batch(
    w: &mut Writes<'_>,
    k: &Keyspaces,
    interner: &Interner,
    pending: &mut PendingInterns,
    g: &mut Group<'_>,
    batch: &SeriesBatch,
) -> Result<InsertStats> {
    let adds = &mut *g.adds;
    let mut stats = InsertStats { samples: batch.total_samples(), ..Default::default() };
    let span_labels = span_labels(batch);
    let mut frame_ids = Vec::new();

    if !batch.process.is_empty() {
        let sid = series_id(w, k, &batch.labels)?;
        let counts =
            pending.counts(interner, &mut FjallInterns { w, k }, &batch.frames, &mut frame_ids, &batch.process)?;
        adds.add(k2(sid, bucket_of(batch.from_ms)), &counts, batch.period_ns, 1);
        stats.process_buckets += 1;
    }

    // The batch's span-rollup series, by span name.
    let mut rollups: HashMap<String, u64> = HashMap::new();
    for span in &batch.spans {
        let id = id_key(&span.profile_id);
        let id = id.as_slice();
        let counts =
            pending.counts(interner, &mut FjallInterns { w, k }, &batch.frames, &mut frame_ids, &span.stacks)?;
        // The group reads its own writes: an ID pushed twice in one group merges twice.
        let old = w.get(&k.spans, id)?;
        let old_len = old.as_ref().map_or(0, |o| o.len());
        let MergedSpan { mut rec, old_last_seen, new_trace, gained_name, counts: merged } =
            merge_span(old.as_deref(), batch, span, &span_labels, &counts)?;
        let old_rollup = rec.rollup_series;
        let name = crate::model::rollup_span_name(&rec.span_name);
        // A profile stays in the rollup series of its first push unless it gains its name.
        if old_rollup == 0 || gained_name {
            rec.rollup_series = match rollups.get(name) {
                Some(&sid) => sid,
                None => {
                    let mut labels = batch.labels.clone();
                    labels.insert(crate::selector::SPAN_NAME_LABEL.to_owned(), name.to_owned());
                    let sid = series_id(w, k, &labels)?;
                    rollups.insert(name.to_owned(), sid);
                    stats.process_buckets += 1;
                    sid
                }
            };
        }
        let new_key = k2(rec.rollup_series, bucket_of(rec.last_seen_ms));
        // Where the profile's index entry is now, if it has one.
        let mut in_chunk = None;
        match (old_last_seen, merged) {
            (Some(t), Some(merged)) => {
                w.remove(&k.spans_by_time, time_key(t, id));
                w.remove(&k.spans_by_service, svc_time_key(&rec.service_name, t, id));
                stats.span_profiles_merged += 1;
                if old_rollup == 0 {
                    // Stored by a version that counted span samples per push: only this part.
                    adds.add(new_key, &counts, batch.period_ns, 1);
                } else if k2(old_rollup, bucket_of(t)) == new_key {
                    adds.add(new_key, &counts, batch.period_ns, 1);
                    in_chunk = Some(rec.stat_chunk);
                } else {
                    // The profile moves to the bucket of its new last-seen minute, whole (its
                    // index chunk is still the one it had: `put` below has not moved it yet).
                    adds.add(k2(old_rollup, bucket_of(t)), &merged.before, merged.before_period_ns, -1);
                    adds.add(new_key, &merged.after, rec.period_ns, 1);
                    g.index.remove(w, k, (old_rollup, bucket_of(t), rec.stat_chunk), id)?;
                }
            }
            _ => {
                stats.span_profiles_created += 1;
                *g.spans_delta += 1;
                adds.add(new_key, &counts, batch.period_ns, 1);
            }
        }
        let entry = span_index::Entry {
            id: id.to_vec(),
            samples: rec.samples,
            period_ns: rec.period_ns,
            last_seen_ms: rec.last_seen_ms,
        };
        rec.stat_chunk = g.index.put(w, k, rec.rollup_series, bucket_of(rec.last_seen_ms), in_chunk, entry)?;
        if let Some(t) = new_trace {
            w.insert(&k.spans_by_trace, trace_key(t.0, id), []);
        }
        w.insert(&k.spans_by_time, time_key(rec.last_seen_ms, id), []);
        w.insert(&k.spans_by_service, svc_time_key(&rec.service_name, rec.last_seen_ms, id), []);
        let bytes = rec.encode_to_vec();
        *g.bytes_delta += bytes.len() as i64 - old_len as i64;
        w.insert(&k.spans, id, bytes);
    }
    Ok(stats)
}

/// The start of the minute bucket `t_ms` falls in.
fn bucket_of(t_ms: u64) -> u64 {
    t_ms / BUCKET_MS * BUCKET_MS
}

/// What a group changes in the span index, chunk by chunk: each chunk it touches is read once,
/// changed in memory and written once at the end (an emptied chunk is deleted).
#[derive(Default)]
struct IndexChanges {
    /// Chunks read (or started) by the group: their entries and the bytes they had.
    chunks: HashMap<[u8; 20], (Vec<span_index::Entry>, usize)>,
    /// The last chunk of (series, minute), once looked up or started.
    last: HashMap<(u64, u64), u32>,
}

impl IndexChanges {
    fn chunk(&mut self, w: &Writes<'_>, k: &Keyspaces, key: [u8; 20]) -> Result<&mut Vec<span_index::Entry>> {
        if !self.chunks.contains_key(&key) {
            let (_, minute, _) = span_index::decode_chunk_key(&key)?;
            let loaded = match w.get(&k.span_index, key)? {
                Some(bytes) => (span_index::decode_chunk(minute, &bytes)?, bytes.len()),
                None => (Vec::new(), 0),
            };
            self.chunks.insert(key, loaded);
        }
        Ok(&mut self.chunks.entry(key).or_default().0)
    }

    /// The number of the last chunk of (series, minute); 0 when it has none.
    fn last_chunk(&mut self, w: &Writes<'_>, k: &Keyspaces, series: u64, minute: u64) -> Result<u32> {
        if let Some(&n) = self.last.get(&(series, minute)) {
            return Ok(n);
        }
        let n = match w.committed_prefix(&k.span_index, &k2(series, minute))?.next_back() {
            Some(row) => span_index::decode_chunk_key(&row.key()?)?.2,
            None => 0,
        };
        self.last.insert((series, minute), n);
        Ok(n)
    }

    /// Puts `entry` in the index of (series, minute): in place in chunk `current` when it is
    /// there, else appended to the last chunk (a new one when that is full). Returns its chunk.
    fn put(
        &mut self,
        w: &Writes<'_>,
        k: &Keyspaces,
        series: u64,
        minute: u64,
        current: Option<u32>,
        entry: span_index::Entry,
    ) -> Result<u32> {
        if let Some(n) = current {
            let chunk = self.chunk(w, k, span_index::chunk_key(series, minute, n))?;
            if let Some(slot) = chunk.iter_mut().find(|e| e.id == entry.id) {
                *slot = entry;
                return Ok(n);
            }
        }
        let mut n = self.last_chunk(w, k, series, minute)?;
        if self.chunk(w, k, span_index::chunk_key(series, minute, n))?.len() >= CHUNK_ENTRIES {
            n = n.checked_add(1).ok_or_else(|| Error::Storage("span index: too many chunks in one minute".into()))?;
            self.last.insert((series, minute), n);
        }
        self.chunk(w, k, span_index::chunk_key(series, minute, n))?.push(entry);
        Ok(n)
    }

    /// Takes profile `id` out of chunk `(series, minute, chunk)`.
    fn remove(
        &mut self,
        w: &Writes<'_>,
        k: &Keyspaces,
        (series, minute, chunk): (u64, u64, u32),
        id: &[u8],
    ) -> Result<()> {
        self.chunk(w, k, span_index::chunk_key(series, minute, chunk))?.retain(|e| e.id != id);
        Ok(())
    }

    /// Writes every changed chunk; returns the record bytes that added.
    fn write(self, w: &mut Writes<'_>, k: &Keyspaces) -> Result<i64> {
        let mut delta = 0i64;
        for (key, (entries, old_len)) in self.chunks {
            if entries.is_empty() {
                if old_len > 0 {
                    w.remove(&k.span_index, key);
                }
                delta -= old_len as i64;
                continue;
            }
            let (_, minute, _) = span_index::decode_chunk_key(&key)?;
            let bytes = span_index::encode_chunk(minute, &entries);
            delta += bytes.len() as i64 - old_len as i64;
            w.insert(&k.span_index, key, bytes);
        }
        Ok(delta)
    }
}

/// What a group adds to (or, as profiles move between minutes or expire, takes from) bucket
/// records (series, minute), summed per record so each is read, merged and written once per
/// group however many batches and profiles add to it.
#[derive(Default)]
struct BucketAdds(HashMap<[u8; 16], (HashMap<u32, i128>, u64)>);

impl BucketAdds {
    /// Adds `sign` × `counts` taken at `period_ns` to the bucket record `key`.
    fn add(&mut self, key: [u8; 16], counts: &Counts, period_ns: u64, sign: i128) {
        let (acc, period) = self.0.entry(key).or_insert_with(|| (HashMap::new(), period_ns));
        for &(stack, count) in counts {
            let count = if period_ns == *period { count } else { rescale_count(count, period_ns, *period) };
            *acc.entry(stack).or_default() += sign * i128::from(count);
        }
    }

    /// Merges every change into its stored record (a record left empty is deleted; nothing is
    /// taken from a record that is gone); returns the record bytes that added.
    fn write(self, w: &mut Writes<'_>, k: &Keyspaces) -> Result<i64> {
        let mut delta = 0i64;
        for (key, (changes, period_ns)) in self.0 {
            let old = w.get(&k.process, key)?;
            let (stored, period) = match &old {
                Some(bytes) => {
                    let rec: StacksRecord = codec::decode(bytes, "process bucket")?;
                    (rec.to_counts()?, rec.period_ns)
                }
                None => (Vec::new(), period_ns),
            };
            let mut changes: Vec<(u32, i128)> = changes
                .into_iter()
                .map(|(stack, change)| {
                    if period == period_ns {
                        return (stack, change);
                    }
                    let magnitude =
                        rescale_count(change.unsigned_abs().min(u128::from(u64::MAX)) as u64, period_ns, period);
                    (stack, change.signum() * i128::from(magnitude))
                })
                .collect();
            changes.sort_unstable_by_key(|c| c.0);
            let merged = apply_changes(&stored, &changes);
            let (sid, bucket) = (u64_at_end(&key, 1)?, u64_at_end(&key, 0)?);
            if merged.is_empty() {
                if old.is_some() {
                    w.remove(&k.process, key);
                    w.remove(&k.process_by_time, k2(bucket, sid));
                }
                delta -= old.map_or(0, |o| o.len() as i64);
                continue;
            }
            if old.is_none() {
                w.insert(&k.process_by_time, k2(bucket, sid), []);
            }
            let encoded = StacksRecord::from_counts(&merged, period).encode_to_vec();
            delta += encoded.len() as i64 - old.map_or(0, |o| o.len() as i64);
            w.insert(&k.process, key, encoded);
        }
        Ok(delta)
    }
}

/// Sorted stored counts plus sorted signed changes, in one pass (a bucket record can hold tens
/// of thousands of stacks; a group's changes touch few): counts that end at zero or below go.
fn apply_changes(stored: &Counts, changes: &[(u32, i128)]) -> Counts {
    let mut out = Vec::with_capacity(stored.len() + changes.len());
    let mut push = |stack: u32, count: i128| {
        if count > 0 {
            out.push((stack, count.min(i128::from(u64::MAX)) as u64));
        }
    };
    let (mut i, mut j) = (0, 0);
    loop {
        match (stored.get(i), changes.get(j)) {
            (Some(&(a, ca)), Some(&(b, cb))) if a == b => {
                push(a, i128::from(ca) + cb);
                i += 1;
                j += 1;
            }
            (Some(&(a, ca)), Some(&(b, _))) if a < b => {
                push(a, i128::from(ca));
                i += 1;
            }
            (Some(&(a, ca)), None) => {
                push(a, i128::from(ca));
                i += 1;
            }
            (_, Some(&(b, cb))) => {
                push(b, cb);
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// The first `n` keys of an index keyed by a time and then `decode`'s rest, decoded.
fn oldest<T>(
    w: &Writes<'_>,
    ks: &SingleWriterTxKeyspace,
    n: usize,
    decode: impl Fn(&[u8]) -> Result<(u64, T)>,
) -> Result<Vec<(u64, T)>> {
    let mut out = Vec::with_capacity(n.min(1024));
    for row in w.committed_prefix(ks, &[])?.take(n) {
        out.push(decode(&row.key()?)?);
    }
    Ok(out)
}

/// Deletes unreferenced frame and stack rows, [`GC_SWEEP_ROWS`] per commit, and forgets
/// each chunk in the interner once it is committed.
fn sweep(k: &Keyspaces, interner: &mut Interner, doomed: GcCandidates) -> Result<GcStats> {
    let mut stats = GcStats::default();
    for chunk in doomed.stacks.chunks(GC_SWEEP_ROWS) {
        let mut w = Writes::new(k);
        let mut gone = Vec::with_capacity(chunk.len());
        for &id in chunk {
            if let Some(record) = w.get(&k.stacks, id.to_be_bytes())? {
                w.remove(&k.stacks, id.to_be_bytes());
                gone.push((id, record));
            }
        }
        w.commit()?;
        for (id, record) in gone {
            interner.forget_stack(id, &record)?;
            stats.stacks_deleted += 1;
        }
    }
    for chunk in doomed.frames.chunks(GC_SWEEP_ROWS) {
        let mut w = Writes::new(k);
        let mut gone = Vec::with_capacity(chunk.len());
        for &id in chunk {
            if let Some(name) = w.get(&k.frames, id.to_be_bytes())? {
                w.remove(&k.frames, id.to_be_bytes());
                gone.push((id, name));
            }
        }
        w.commit()?;
        for (id, name) in gone {
            let name = std::str::from_utf8(&name).map_err(|_| Error::Corrupt(format!("frame {id} name")))?;
            interner.forget_frame(id, name);
            stats.frames_deleted += 1;
        }
    }
    Ok(stats)
}

/// One bounded retention step: deletes at most [`RETENTION_STEP_ROWS`] expired rows. The size
/// limit counts the records and the `interned` frame and stack bytes.
fn retention_step(k: &Keyspaces, policy: &Retention, now_ms: u64, interned: u64) -> Result<RetentionStats> {
    let mut stats = RetentionStats::default();
    let mut w = Writes::new(k);
    let mut bytes_delta = 0i64;
    let mut spans_delta = 0i64;
    let cutoff = policy.max_age.map(|a| now_ms.saturating_sub(a.as_millis() as u64));
    let mut size = SizeEstimate::new(counter_value(RECORD_BYTES, w.get(&k.meta, RECORD_BYTES)?)?, interned);
    // A step deletes at most RETENTION_STEP_ROWS rows, so the oldest that many entries of each
    // index are all it can reach: read them once rather than re-scanning past the tombstones
    // this step leaves at the front of the index after every delete.
    let spans = oldest(&w, &k.spans_by_time, RETENTION_STEP_ROWS, |key| time_and_id(key, 0))?;
    let buckets =
        oldest(&w, &k.process_by_time, RETENTION_STEP_ROWS, |key| Ok((u64_at_end(key, 1)?, u64_at_end(key, 0)?)))?;
    let (mut si, mut bi) = (0, 0);
    let mut deleted = 0;
    // What the deleted profiles take from their rollup buckets and the span index.
    let mut adds = BucketAdds::default();
    let mut index = IndexChanges::default();
    while deleted < RETENTION_STEP_ROWS {
        let over_size = size.over(policy.max_bytes);
        let oldest_span = spans.get(si);
        let oldest_bucket = buckets.get(bi).copied();
        // The older of the two oldest entries goes first.
        let span_first = match (oldest_span, oldest_bucket) {
            (Some(&(t, _)), Some((b, _))) => t <= b + BUCKET_MS,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let oldest_time = if span_first { oldest_span.map(|k| k.0) } else { oldest_bucket.map(|k| k.0 + BUCKET_MS) };
        let expired = matches!((cutoff, oldest_time), (Some(c), Some(t)) if t < c);
        if !expired && !over_size {
            break;
        }
        let freed = if span_first {
            let Some((last_seen, id)) = oldest_span else { break };
            let last_seen = *last_seen;
            si += 1;
            w.remove(&k.spans_by_time, time_key(last_seen, id));
            stats.span_profiles_deleted += 1;
            spans_delta -= 1;
            delete_span(&mut w, k, (&mut adds, &mut index), id, last_seen)?
        } else {
            let Some((bucket, sid)) = oldest_bucket else { break };
            bi += 1;
            w.remove(&k.process_by_time, k2(bucket, sid));
            stats.process_buckets_deleted += 1;
            let old = w.get(&k.process, k2(sid, bucket))?.map(|v| v.len());
            w.remove(&k.process, k2(sid, bucket));
            old.unwrap_or(0) as u64
        };
        size.deleted(freed);
        bytes_delta -= freed as i64;
        deleted += 1;
    }
    bytes_delta += adds.write(&mut w, k)?;
    bytes_delta += index.write(&mut w, k)?;
    add_counter(&mut w, k, RECORD_BYTES, bytes_delta)?;
    add_counter(&mut w, k, SPAN_COUNT, spans_delta)?;
    w.commit()?;
    Ok(stats)
}

/// Deletes a span's record, its index entries and its samples from its rollup bucket (into
/// `adds`); returns the bytes freed.
fn delete_span(
    w: &mut Writes<'_>,
    k: &Keyspaces,
    (adds, index): (&mut BucketAdds, &mut IndexChanges),
    id: &[u8],
    last_seen: u64,
) -> Result<u64> {
    let Some(bytes) = w.get(&k.spans, id)? else { return Ok(0) };
    w.remove(&k.spans, id);
    let rec: SpanRecord = codec::decode(&bytes, "span")?;
    w.remove(&k.spans_by_service, svc_time_key(&rec.service_name, last_seen, id));
    // What leaving the rollup bucket and the span index frees, at most: its stack entries and
    // its index entry (shared stacks stay, so this may credit more than is freed: the next
    // retention pass reads the true size and goes on).
    let mut shares = 0u64;
    if rec.rollup_series != 0 {
        index.remove(w, k, (rec.rollup_series, bucket_of(last_seen), rec.stat_chunk), id)?;
        adds.add(k2(rec.rollup_series, bucket_of(last_seen)), &rec.stack_counts()?, rec.period_ns, -1);
        let varints =
            |v: &mut dyn Iterator<Item = u64>| v.map(|x| prost::encoding::encoded_len_varint(x) as u64).sum::<u64>();
        shares = varints(&mut rec.stack_id_deltas.iter().map(|&d| u64::from(d)))
            + varints(&mut rec.counts.iter().copied())
            + id.len() as u64
            + 8;
    }
    if let Some(t) = codec::trace_from_bytes(&rec.trace_id) {
        w.remove(&k.spans_by_trace, trace_key(t.0, id));
    }
    Ok(bytes.len() as u64 + shares)
}

/// Resolves stack IDs to frame names within one snapshot, caching what it has seen.
struct Resolver<'r> {
    snap: &'r Snapshot,
    k: &'r Keyspaces,
    frame_cache: HashMap<u32, Arc<str>>,
}

impl<'r> Resolver<'r> {
    fn new(snap: &'r Snapshot, k: &'r Keyspaces) -> Self {
        Resolver { snap, k, frame_cache: HashMap::new() }
    }

    fn frame(&mut self, id: u32) -> Result<Arc<str>> {
        if let Some(f) = self.frame_cache.get(&id) {
            return Ok(f.clone());
        }
        let name: Arc<str> = match self.snap.get(self.k.frames.inner(), id.to_be_bytes())? {
            Some(v) => Arc::from(std::str::from_utf8(&v).map_err(|_| Error::Corrupt(format!("frame {id} name")))?),
            None => return Err(Error::Corrupt(format!("frame {id} missing"))),
        };
        self.frame_cache.insert(id, name.clone());
        Ok(name)
    }

    fn resolve(&mut self, counts: &Counts) -> Result<Stacks> {
        let mut out = Vec::with_capacity(counts.len());
        for &(sid, count) in counts {
            let rec: StackRecord = match self.snap.get(self.k.stacks.inner(), sid.to_be_bytes())? {
                Some(v) => codec::decode(&v, "stack")?,
                None => return Err(Error::Corrupt(format!("stack {sid} missing"))),
            };
            let mut frames = Vec::with_capacity(rec.frame_ids.len());
            for f in rec.frame_ids {
                frames.push(self.frame(f)?);
            }
            out.push((frames, count));
        }
        Ok(out)
    }
}

fn load_span(resolver: &mut Resolver<'_>, id: &[u8]) -> Result<Option<SpanProfile>> {
    let Some(bytes) = resolver.snap.get(resolver.k.spans.inner(), id)? else { return Ok(None) };
    let rec: SpanRecord = codec::decode(&bytes, "span")?;
    let stacks = resolver.resolve(&rec.stack_counts()?)?;
    Ok(Some(SpanProfile { summary: summary(id_from_key(id)?, rec), stacks }))
}

impl EmbeddedStore {
    /// The IDs of trace `trace`'s span profiles, without loading them.
    pub fn trace_ids(&self, trace: TraceId) -> Result<Vec<ProfileId>> {
        let r = self.read();
        let mut out = Vec::new();
        for row in r.prefix(self.ks.spans_by_trace.inner(), trace.0.to_be_bytes()) {
            let key = row.key()?;
            out.push(id_from_key(key.get(16..).ok_or_else(|| Error::Corrupt("trace index key".into()))?)?);
        }
        Ok(out)
    }

    /// The metadata of span profile `id`, without its stacks.
    pub fn span_summary(&self, id: &ProfileId) -> Result<Option<super::SpanSummary>> {
        let r = self.read();
        let key = id_key(id);
        let Some(bytes) = r.get(self.ks.spans.inner(), &key)? else { return Ok(None) };
        Ok(Some(summary(id.clone(), codec::decode(&bytes, "span")?)))
    }

    /// Puts everything the store holds into `builder`, read from one snapshot in key order
    /// (span profiles by ID, whole-process buckets by series), stacks translated by ID. The
    /// layered store builds a sealed generation's block with it.
    pub fn build_block(&self, builder: &mut super::block::BlockBuilder) -> Result<()> {
        let r = self.read();
        let k = &*self.ks;
        let mut source = SnapshotStacks { snap: &r, k };
        let mut map = super::block::IdMap::default();
        for row in r.iter(k.spans.inner()) {
            let (id, bytes) = row.into_inner()?;
            let rec: SpanRecord = codec::decode(&bytes, "span")?;
            builder.add_span_record(&id, rec, &mut map, &mut source)?;
        }
        // Buckets are keyed by (series, bucket): one series' labels serve a run of rows.
        let mut series: Option<(u64, Labels)> = None;
        for row in r.iter(k.process.inner()) {
            let (key, bytes) = row.into_inner()?;
            let (sid, bucket) = (u64_at_end(&key, 1)?, u64_at_end(&key, 0)?);
            if series.as_ref().is_none_or(|(s, _)| *s != sid) {
                let bytes = r
                    .get(k.series.inner(), sid.to_be_bytes())?
                    .ok_or_else(|| Error::Corrupt(format!("series {sid} missing")))?;
                let rec: SeriesRecord = codec::decode(&bytes, "series")?;
                series = Some((sid, rec.labels.into_iter().map(|l| (l.name, l.value)).collect()));
            }
            let rec: StacksRecord = codec::decode(&bytes, "process bucket")?;
            if let Some((_, labels)) = &series {
                builder.add_process_record(labels, bucket, &rec, &mut map, &mut source)?;
            }
        }
        Ok(())
    }

    /// Span profiles and record bytes (span profiles and whole-process buckets) stored, from
    /// counters: cheap.
    pub fn fill(&self) -> Result<(u64, u64)> {
        let r = self.read();
        Ok((counter(&r, &self.ks, SPAN_COUNT)?, counter(&r, &self.ks, RECORD_BYTES)?))
    }
}

impl ProfileStore for EmbeddedStore {
    fn health(&self) -> std::result::Result<(), super::Trouble> {
        super::writer_health(&self.writer)?;
        match self.failed.lock().map(|f| f.clone()) {
            Ok(Some(e)) => Err(super::Trouble {
                message: format!("the store refuses writes after a failed write ({e}); free disk space"),
                // fjall refuses every write once poisoned; a plain full disk passes when space returns.
                restart_helps: e.contains("Poisoned"),
            }),
            _ => super::reserve_health(&self.reserve),
        }
    }

    fn insert(&self, batches: Vec<SeriesBatch>) -> Result<InsertStats> {
        if batches.is_empty() {
            return Ok(InsertStats::default());
        }
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.send(Command::Insert(batches, reply_tx))?;
        reply_rx.recv().map_err(|_| Error::Unavailable)?
    }

    fn span_profile(&self, id: ProfileId) -> Result<Option<SpanProfile>> {
        let r = self.read();
        load_span(&mut Resolver::new(&r, &self.ks), &id_key(&id))
    }

    fn search_spans(&self, q: &SpanQuery) -> Result<Page> {
        let r = self.read();
        let k = &*self.ks;
        let limit = q.limit.clamp(1, 1000);
        let mut page = Page::default();
        let from = q.from_ms.unwrap_or(0);
        // Upper bound of the scan, exclusive of the cursor position.
        let hi = q.after.as_ref().map(|c| (c.last_seen_ms, id_key(&c.profile_id)));
        let accept = |id: &[u8], last_seen: u64, page: &mut Page| -> Result<bool> {
            let Some(v) = r.get(k.spans.inner(), id)? else { return Ok(false) };
            let meta: SpanRecord = codec::decode(&v, "span")?;
            let ok = meta.samples >= q.min_samples
                && q.span_name.as_deref().is_none_or(|n| meta.span_name == n)
                && q.service.as_deref().is_none_or(|s| meta.service_name == s)
                && q.until_ms.is_none_or(|u| meta.first_seen_ms <= u)
                && last_seen >= from;
            if ok {
                page.profiles.push(summary(id_from_key(id)?, meta));
            }
            Ok(page.profiles.len() >= limit)
        };
        let mut examined = 0usize;
        let mut last = None;
        if let Some(trace) = q.trace_id {
            // A trace has few spans: collect, sort newest first, then page.
            let mut rows = Vec::new();
            for row in r.prefix(k.spans_by_trace.inner(), trace.0.to_be_bytes()) {
                let id = row.key()?[16..].to_vec();
                if let Some(v) = r.get(k.spans.inner(), &id)? {
                    let m: SpanRecord = codec::decode(&v, "span")?;
                    rows.push((m.last_seen_ms, id));
                }
            }
            rows.sort_unstable_by(|a, b| b.cmp(a));
            for (t, id) in rows.into_iter().filter(|row| hi.as_ref().is_none_or(|hi| row < hi)) {
                let full = accept(&id, t, &mut page)?;
                last = Some((t, id));
                if full {
                    break;
                }
            }
        } else if let Some(service) = q.service.as_deref() {
            let lo = Bound::Included(svc_key(service, &[from]));
            let hi = match &hi {
                Some((t, id)) => Bound::Excluded(svc_time_key(service, *t, id)),
                // Past every key of the service: its prefix with the largest time and ID.
                None => Bound::Included(svc_time_key(service, u64::MAX, &[0xFF; 1 + MAX_ID_KEY_BYTES])),
            };
            for row in r.range(k.spans_by_service.inner(), (lo, hi)).rev() {
                let key = row.key()?;
                let (t, id) = time_and_id(&key, svc_prefix_len(&key)?)?;
                examined += 1;
                let full = accept(&id, t, &mut page)?;
                last = Some((t, id));
                if full || examined >= SCAN_BUDGET {
                    break;
                }
            }
        } else {
            let lo = Bound::Included(time_key(from, &[]));
            let hi = match &hi {
                Some((t, id)) => Bound::Excluded(time_key(*t, id)),
                None => Bound::Unbounded,
            };
            for row in r.range(k.spans_by_time.inner(), (lo, hi)).rev() {
                let (t, id) = time_and_id(&row.key()?, 0)?;
                examined += 1;
                let full = accept(&id, t, &mut page)?;
                last = Some((t, id));
                if full || examined >= SCAN_BUDGET {
                    break;
                }
            }
        }
        let full = page.profiles.len() >= limit || examined >= SCAN_BUDGET;
        if full && let Some((t, id)) = last {
            page.next = Some(Cursor { last_seen_ms: t, profile_id: id_from_key(&id)? });
        }
        Ok(page)
    }

    fn trace(&self, trace_id: TraceId) -> Result<Vec<SpanProfile>> {
        let r = self.read();
        let k = &*self.ks;
        let mut resolver = Resolver::new(&r, k);
        let mut out = Vec::new();
        for row in r.prefix(k.spans_by_trace.inner(), trace_id.0.to_be_bytes()) {
            let key = row.key()?;
            if let Some(p) = load_span(&mut resolver, &key[16..])? {
                out.push(p);
            }
        }
        out.sort_by(|a, b| {
            (a.summary.first_seen_ms, &a.summary.profile_id).cmp(&(b.summary.first_seen_ms, &b.summary.profile_id))
        });
        Ok(out)
    }

    fn services(&self) -> Result<Vec<String>> {
        let r = self.read();
        let k = &*self.ks;
        let mut out = BTreeSet::new();
        for row in r.iter(k.series_by_service.inner()) {
            out.insert(svc_of(&row.key()?)?);
        }
        // Services that only ever sent span profiles have no whole-process series. Skip from
        // one service to the next rather than walking every span's index entry.
        let mut next: Option<String> = None;
        loop {
            let first = match &next {
                None => r.iter(k.spans_by_service.inner()).next(),
                Some(s) => {
                    let past: (Bound<Vec<u8>>, Bound<Vec<u8>>) =
                        (Bound::Excluded(svc_key(s, &[u64::MAX, u64::MAX])), Bound::Unbounded);
                    r.range(k.spans_by_service.inner(), past).next()
                }
            };
            let Some(row) = first else { break };
            let s = svc_of(&row.key()?)?;
            out.insert(s.clone());
            next = Some(s);
        }
        Ok(out.into_iter().collect())
    }

    fn series(&self) -> Result<Vec<Labels>> {
        let r = self.read();
        let mut out = Vec::new();
        for row in r.iter(self.ks.series.inner()) {
            let rec: SeriesRecord = codec::decode(&row.value()?, "series")?;
            out.push(rec.labels.into_iter().map(|l| (l.name, l.value)).collect());
        }
        Ok(out)
    }

    fn process_profile(&self, q: &ProcessQuery) -> Result<Option<ProcessProfile>> {
        let r = self.read();
        let k = &*self.ks;
        let mut total: Counts = Vec::new();
        let mut period = 0;
        let mut any = false;
        for (sid, _) in selected_series(&r, k, &q.selector)? {
            for row in r.range(k.process.inner(), k2(sid, q.first_bucket())..=k2(sid, q.until_ms)) {
                let rec: StacksRecord = codec::decode(&row.value()?, "process bucket")?;
                if period == 0 {
                    period = rec.period_ns;
                }
                total = codec::merge_counts(&total, &rescaled(rec.to_counts()?, rec.period_ns, period));
                any = true;
            }
        }
        if !any {
            return Ok(None);
        }
        let mut resolver = Resolver::new(&r, k);
        Ok(Some(ProcessProfile { period_ns: period, stacks: resolver.resolve(&total)? }))
    }

    fn process_series(&self, q: &ProcessQuery) -> Result<Vec<SeriesPoints>> {
        let r = self.read();
        let k = &*self.ks;
        let mut out = Vec::new();
        for (sid, labels) in selected_series(&r, k, &q.selector)? {
            let mut points = Vec::new();
            for row in r.range(k.process.inner(), k2(sid, q.first_bucket())..=k2(sid, q.until_ms)) {
                let (key, value) = row.into_inner()?;
                let rec: StacksRecord = codec::decode(&value, "process bucket")?;
                points.push((u64_at_end(&key, 0)?, rec.counts.iter().sum(), rec.period_ns));
            }
            if !points.is_empty() {
                out.push(SeriesPoints { labels, points });
            }
        }
        Ok(out)
    }

    fn span_stats(&self, q: &ProcessQuery) -> Result<Vec<SpanStat>> {
        let r = self.read();
        let k = &*self.ks;
        let until = bucket_of(q.until_ms).saturating_add(BUCKET_MS);
        let mut out = Vec::new();
        for (sid, labels) in selected_series(&r, k, &q.selector)? {
            let Some(span_name) = labels.get(crate::selector::SPAN_NAME_LABEL) else { continue };
            for row in r.range(k.span_index.inner(), k2(sid, q.first_bucket())..k2(sid, until)) {
                let (key, value) = row.into_inner()?;
                let (_, minute, _) = span_index::decode_chunk_key(&key)?;
                span_index::visit_chunk(minute, &value, |id, samples, period_ns, last_seen_ms| {
                    out.push(SpanStat {
                        profile_id: id_from_key(id)?,
                        span_name: span_name.clone(),
                        samples,
                        period_ns,
                        last_seen_ms,
                    });
                    Ok(())
                })?;
            }
        }
        Ok(out)
    }

    fn enforce_retention(&self, policy: &Retention, now_ms: u64) -> Result<RetentionStats> {
        let mut total = RetentionStats::default();
        if policy.max_age.is_none() && policy.max_bytes.is_none() {
            return Ok(total);
        }
        loop {
            let (reply_tx, reply_rx) = mpsc::sync_channel(1);
            self.send(Command::Retention(*policy, now_ms, reply_tx))?;
            let step = reply_rx.recv().map_err(|_| Error::Unavailable)??;
            total.span_profiles_deleted += step.span_profiles_deleted;
            total.process_buckets_deleted += step.process_buckets_deleted;
            if step.span_profiles_deleted + step.process_buckets_deleted < RETENTION_STEP_ROWS as u64 {
                return Ok(total);
            }
        }
    }

    fn collect_garbage(&self) -> Result<GcStats> {
        super::shared::collect(
            || {
                let (reply_tx, reply_rx) = mpsc::sync_channel(1);
                self.send(Command::GcBegin(reply_tx))?;
                reply_rx.recv().map_err(|_| Error::Unavailable)
            },
            |bounds| self.mark(bounds),
            || {
                let _ = self.send(Command::GcAbort);
            },
            |candidates| {
                let (reply_tx, reply_rx) = mpsc::sync_channel(1);
                self.send_waiting(Command::GcSweep(candidates, reply_tx))?;
                reply_rx.recv().map_err(|_| Error::Unavailable)?
            },
        )
    }

    fn stats(&self) -> Result<StoreStats> {
        let r = self.read();
        Ok(StoreStats {
            file_bytes: allocated_bytes(&self.path),
            record_bytes: counter(&r, &self.ks, RECORD_BYTES)?,
            interned_bytes: self.interned_bytes.load(Ordering::Relaxed),
            span_profiles: counter(&r, &self.ks, SPAN_COUNT)?,
        })
    }

    fn close(&self) {
        EmbeddedStore::close(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_reads_its_own_writes_and_readers_see_them_only_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keyspaces::open(dir.path(), 1 << 20).unwrap();
        let mut first = Writes::new(&k);
        first.insert(&k.spans, *b"a", *b"1");
        first.insert(&k.spans, *b"b", *b"2");
        first.commit().unwrap();

        let mut w = Writes::new(&k);
        w.insert(&k.spans, *b"a", *b"3");
        w.remove(&k.spans, *b"b");
        w.insert(&k.meta, *b"c", *b"4");
        assert_eq!(w.get(&k.spans, b"a").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(w.get(&k.spans, b"b").unwrap(), None, "removed in this step");
        assert_eq!(w.get(&k.meta, b"c").unwrap().as_deref(), Some(&b"4"[..]));
        // A scan would not see the step's writes: refused rather than wrong.
        assert!(w.committed_prefix(&k.spans, b"").is_err());
        assert_eq!(w.committed_prefix(&k.stacks, b"").unwrap().count(), 0);

        let before = k.db.read_tx();
        assert_eq!(before.get(k.spans.inner(), b"a").unwrap().as_deref(), Some(&b"1"[..]), "nothing before commit");
        w.commit().unwrap();
        let after = k.db.read_tx();
        assert_eq!(after.get(k.spans.inner(), b"a").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(after.get(k.spans.inner(), b"b").unwrap(), None);
        assert_eq!(after.get(k.meta.inner(), b"c").unwrap().as_deref(), Some(&b"4"[..]));
        assert_eq!(before.get(k.spans.inner(), b"b").unwrap().as_deref(), Some(&b"2"[..]), "a snapshot stays put");
    }
}
