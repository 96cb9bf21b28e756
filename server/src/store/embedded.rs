//! The embedded store: one redb file in the data directory, written by one writer thread that
//! group-commits concurrent inserts (one fsync for many requests) and read by any thread through
//! MVCC snapshots, so queries never wait for ingest.
//!
//! Tables: span metadata and stacks by span ID, with indexes by last-seen time, service and trace;
//! whole-process stacks by (series, minute bucket) with a time index; frames and stacks interned
//! once (records hold stack IDs). See the README's "Storage" section for why redb; the fjall
//! engine ([`super::fjall_store`]) stores the same records in an LSM tree.

use std::collections::BTreeSet;

use ahash::AHashMap as HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use prost::Message;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};

use super::disk::{DiskReserve, allocated_bytes};
use super::codec::{self, Counts, SpanRecord, StackRecord, StacksRecord};
pub use super::shared::BUCKET_MS;
use super::shared::{
    GC_SWEEP_ROWS, GcBounds, GcCandidates, InternSink, Interner, MAX_ID_KEY_BYTES, Mark, MergedSpan, PendingInterns,
    RETENTION_STEP_ROWS, SCAN_BUDGET, SeriesRecord, SizeEstimate, id_from_key, id_key, merge_span, rescaled, series_id_seed,
    span_labels, summary,
};
use super::{
    Cursor, Engine, GcStats, InsertStats, Page, ProcessProfile, ProfileStore, Retention, RetentionStats, SpanProfile,
    SpanQuery, Stacks, StoreStats,
};
use crate::error::{Error, Result};
use crate::model::{Labels, ProfileId, SeriesBatch, TraceId};

/// profile ID ([`id_key`]) → `SpanRecord` (metadata and stack counts)
const SPANS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("span_profiles");
/// (last_seen_ms, profile ID)
const SPANS_BY_TIME: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("span_profiles_by_time");
/// (service, last_seen_ms, profile ID)
const SPANS_BY_SERVICE: TableDefinition<(&str, u64, &[u8]), ()> = TableDefinition::new("span_profiles_by_service");
/// (trace id, profile ID)
const SPANS_BY_TRACE: TableDefinition<(u128, &[u8]), ()> = TableDefinition::new("span_profiles_by_trace");
/// The span tables before profile IDs were strings (keyed by the span ID's value); a store
/// that has them is migrated when opened ([`migrate_span_id_tables`]).
const OLD_SPANS: TableDefinition<u64, &[u8]> = TableDefinition::new("spans");
const OLD_SPANS_BY_TIME: TableDefinition<(u64, u64), ()> = TableDefinition::new("spans_by_time");
const OLD_SPANS_BY_SERVICE: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("spans_by_service");
const OLD_SPANS_BY_TRACE: TableDefinition<(u128, u64), ()> = TableDefinition::new("spans_by_trace");
const FRAMES: TableDefinition<u32, &str> = TableDefinition::new("frames");
const STACKS: TableDefinition<u32, &[u8]> = TableDefinition::new("stacks");
/// series id → labels (a `SeriesRecord`)
const SERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("series");
/// (service, series id)
const SERIES_BY_SERVICE: TableDefinition<(&str, u64), ()> = TableDefinition::new("series_by_service");
/// (series id, bucket start ms) → stacks
const PROCESS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("process");
/// (bucket start ms, series id)
const PROCESS_BY_TIME: TableDefinition<(u64, u64), ()> = TableDefinition::new("process_by_time");
/// Counters: `record_bytes`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const RECORD_BYTES: &str = "record_bytes";
const SPAN_COUNT: &str = "span_profiles";

/// Tuning of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Inserts waiting for the writer at most; more are refused (HTTP 503) rather than queued.
    pub queue_depth: usize,
    /// Most inserts committed together in one transaction.
    pub max_group: usize,
    /// Page cache (redb) or block cache (fjall), bytes.
    pub cache_bytes: usize,
    /// Which engine stores the data.
    pub engine: Engine,
    /// Free space kept on the data directory's filesystem: inserts are refused (507) below it.
    /// `None`: 5 % of the filesystem, at most 1 GiB ([`super::disk`]).
    pub min_free_bytes: Option<u64>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { queue_depth: 256, max_group: 64, cache_bytes: 256 << 20, engine: Engine::default(), min_free_bytes: None }
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

/// The embedded redb store. Cheap to share: clone the `Arc`.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    tx: Mutex<Option<SyncSender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    reserve: DiskReserve,
    /// Bytes of the frame and stack tables, as the writer's interner counts them.
    interned_bytes: Arc<AtomicU64>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, recovering from an unclean shutdown if needed.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(super::Engine::Redb.file_name());
        let db = Database::builder().set_cache_size(options.cache_bytes).create(&path)?;
        let db = Arc::new(db);
        let mut interner = Interner::default();
        {
            let w = db.begin_write()?;
            for_each_table(&w)?;
            migrate_span_id_tables(&w)?;
            w.commit()?;
            let r = db.begin_read()?;
            load_interner(&mut interner, &r)?;
        }
        let (tx, rx) = mpsc::sync_channel(options.queue_depth);
        let writer_db = db.clone();
        let max_group = options.max_group.max(1);
        let reserve = DiskReserve::new(dir, options.min_free_bytes);
        let writer_reserve = reserve.clone();
        let interned_bytes = Arc::new(AtomicU64::new(interner.bytes()));
        let writer_interned = Arc::clone(&interned_bytes);
        let writer = std::thread::Builder::new().name("spanprof-store-writer".into()).spawn(move || {
            writer_loop(&writer_db, rx, interner, max_group, &writer_reserve, &writer_interned)
        })?;
        Ok(EmbeddedStore {
            db,
            path,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
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

    fn read(&self) -> Result<ReadTransaction> {
        Ok(self.db.begin_read()?)
    }

    /// The mark phase of a collection, on a read transaction, outside the writer.
    fn mark(&self, bounds: GcBounds) -> Result<GcCandidates> {
        let r = self.read()?;
        let mut mark = Mark::new(bounds);
        for row in r.open_table(SPANS)?.iter()? {
            let (_, bytes) = row?;
            let rec: SpanRecord = codec::decode(bytes.value(), "span")?;
            mark.record(&rec.stack_counts()?);
        }
        for row in r.open_table(PROCESS)?.iter()? {
            let (_, bytes) = row?;
            let rec: StacksRecord = codec::decode(bytes.value(), "process bucket")?;
            mark.record(&rec.to_counts()?);
        }
        for row in r.open_table(STACKS)?.iter()? {
            let (id, bytes) = row?;
            mark.stack(id.value(), bytes.value())?;
        }
        let mut frames = Vec::new();
        for row in r.open_table(FRAMES)?.iter()? {
            frames.push(row?.0.value());
        }
        Ok(mark.finish(frames.into_iter()))
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Creates every table, so read transactions never meet a missing one.
fn for_each_table(w: &WriteTransaction) -> Result<()> {
    w.open_table(SPANS)?;
    w.open_table(SPANS_BY_TIME)?;
    w.open_table(SPANS_BY_SERVICE)?;
    w.open_table(SPANS_BY_TRACE)?;
    w.open_table(FRAMES)?;
    w.open_table(STACKS)?;
    w.open_table(SERIES)?;
    w.open_table(SERIES_BY_SERVICE)?;
    w.open_table(PROCESS)?;
    w.open_table(PROCESS_BY_TIME)?;
    w.open_table(META)?;
    Ok(())
}

/// Moves span profiles from the tables keyed by the span ID's value into the ones keyed by
/// [`id_key`], in the transaction that opens the store; the old tables are then deleted.
fn migrate_span_id_tables(w: &WriteTransaction) -> Result<()> {
    if !w.list_tables()?.any(|t| t.name() == OLD_SPANS.name()) {
        return Ok(());
    }
    let key = |id: u64| id_key(&ProfileId::Span(id));
    {
        let mut spans = w.open_table(SPANS)?;
        for row in w.open_table(OLD_SPANS)?.iter()? {
            let (id, rec) = row?;
            spans.insert(key(id.value()).as_slice(), rec.value())?;
        }
        let mut by_time = w.open_table(SPANS_BY_TIME)?;
        for row in w.open_table(OLD_SPANS_BY_TIME)?.iter()? {
            let (t, id) = row?.0.value();
            by_time.insert((t, key(id).as_slice()), ())?;
        }
        let mut by_service = w.open_table(SPANS_BY_SERVICE)?;
        for row in w.open_table(OLD_SPANS_BY_SERVICE)?.iter()? {
            let row = row?;
            let (service, t, id) = row.0.value();
            by_service.insert((service, t, key(id).as_slice()), ())?;
        }
        let mut by_trace = w.open_table(SPANS_BY_TRACE)?;
        for row in w.open_table(OLD_SPANS_BY_TRACE)?.iter()? {
            let (trace, id) = row?.0.value();
            by_trace.insert((trace, key(id).as_slice()), ())?;
        }
    }
    w.delete_table(OLD_SPANS)?;
    w.delete_table(OLD_SPANS_BY_TIME)?;
    w.delete_table(OLD_SPANS_BY_SERVICE)?;
    w.delete_table(OLD_SPANS_BY_TRACE)?;
    Ok(())
}

/// Writes a transaction's new frames and stacks into redb's tables.
struct RedbInterns<'a>(&'a WriteTransaction);

impl InternSink for RedbInterns<'_> {
    fn put_frame(&mut self, id: u32, name: &str) -> Result<()> {
        self.0.open_table(FRAMES)?.insert(id, name)?;
        Ok(())
    }

    fn put_stack(&mut self, id: u32, record: &[u8]) -> Result<()> {
        self.0.open_table(STACKS)?.insert(id, record)?;
        Ok(())
    }
}

/// Fills the interner from the committed frame and stack tables.
fn load_interner(i: &mut Interner, r: &ReadTransaction) -> Result<()> {
    for row in r.open_table(FRAMES)?.iter()? {
        let (id, name) = row?;
        i.load_frame(id.value(), name.value());
    }
    for row in r.open_table(STACKS)?.iter()? {
        let (id, bytes) = row?;
        i.load_stack(id.value(), bytes.value())?;
    }
    Ok(())
}

fn writer_loop(
    db: &Database,
    rx: Receiver<Command>,
    mut interner: Interner,
    max_group: usize,
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
        if let Err(Error::DiskFull { free, reserve }) = reserve.check() {
            for (_, reply) in inserts.drain(..) {
                let _ = reply.send(Err(Error::DiskFull { free, reserve }));
            }
        }
        if !inserts.is_empty() {
            let result = insert_group(db, &mut interner, &inserts);
            match result {
                Ok(stats) => {
                    interned_bytes.store(interner.bytes(), Ordering::Relaxed);
                    for ((_, reply), s) in inserts.into_iter().zip(stats) {
                        let _ = reply.send(Ok(s));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "insert transaction failed; nothing of it was stored");
                    for (_, reply) in inserts {
                        let _ = reply.send(Err(Error::Storage(e.to_string())));
                    }
                }
            }
        }
        for cmd in others {
            match cmd {
                Command::Retention(policy, now_ms, reply) => {
                    let _ = reply.send(retention_step(db, &policy, now_ms, interner.bytes()));
                }
                Command::GcBegin(reply) => {
                    let _ = reply.send(interner.begin_marking());
                }
                Command::GcSweep(candidates, reply) => {
                    let doomed = interner.end_marking(candidates);
                    let swept = sweep(db, &mut interner, doomed);
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
}

/// Deletes unreferenced frame and stack rows, [`GC_SWEEP_ROWS`] per transaction, and forgets
/// each chunk in the interner once it is committed.
fn sweep(db: &Database, interner: &mut Interner, doomed: GcCandidates) -> Result<GcStats> {
    let mut stats = GcStats::default();
    for chunk in doomed.stacks.chunks(GC_SWEEP_ROWS) {
        let mut w = db.begin_write()?;
        w.set_durability(Durability::Immediate)?;
        let mut gone = Vec::with_capacity(chunk.len());
        {
            let mut t = w.open_table(STACKS)?;
            for &id in chunk {
                if let Some(record) = t.remove(id)? {
                    gone.push((id, record.value().to_vec()));
                }
            }
        }
        w.commit()?;
        for (id, record) in gone {
            interner.forget_stack(id, &record)?;
            stats.stacks_deleted += 1;
        }
    }
    for chunk in doomed.frames.chunks(GC_SWEEP_ROWS) {
        let mut w = db.begin_write()?;
        w.set_durability(Durability::Immediate)?;
        let mut gone = Vec::with_capacity(chunk.len());
        {
            let mut t = w.open_table(FRAMES)?;
            for &id in chunk {
                if let Some(name) = t.remove(id)? {
                    gone.push((id, name.value().to_owned()));
                }
            }
        }
        w.commit()?;
        for (id, name) in gone {
            interner.forget_frame(id, &name);
            stats.frames_deleted += 1;
        }
    }
    Ok(stats)
}

/// Applies a group of inserts in one transaction and commits it durably.
fn insert_group(
    db: &Database,
    interner: &mut Interner,
    inserts: &[(Vec<SeriesBatch>, SyncSender<Result<InsertStats>>)],
) -> Result<Vec<InsertStats>> {
    let mut w = db.begin_write()?;
    w.set_durability(Durability::Immediate)?;
    let mut pending = PendingInterns::new(interner);
    let mut stats = Vec::with_capacity(inserts.len());
    let mut bytes_delta: i64 = 0;
    let mut spans_delta: i64 = 0;
    for (batches, _) in inserts {
        let mut s = InsertStats::default();
        for batch in batches {
            s += insert_batch(&w, interner, &mut pending, batch, &mut bytes_delta, &mut spans_delta)?;
        }
        stats.push(s);
    }
    {
        let mut meta = w.open_table(META)?;
        add_counter(&mut meta, RECORD_BYTES, bytes_delta)?;
        add_counter(&mut meta, SPAN_COUNT, spans_delta)?;
    }
    w.commit()?;
    pending.commit_into(interner);
    Ok(stats)
}

fn add_counter(meta: &mut redb::Table<&str, u64>, key: &str, delta: i64) -> Result<()> {
    if delta == 0 {
        return Ok(());
    }
    let cur = meta.get(key)?.map(|v| v.value()).unwrap_or(0);
    meta.insert(key, cur.saturating_add_signed(delta))?;
    Ok(())
}

fn series_id(w: &WriteTransaction, labels: &Labels) -> Result<u64> {
    // A hash of the canonical label set; collisions are checked against the stored labels.
    let mut id = series_id_seed(labels);
    let record = SeriesRecord::from_labels(labels);
    let mut series = w.open_table(SERIES)?;
    loop {
        let existing = series.get(id)?.map(|v| v.value().to_vec());
        match existing {
            None => {
                series.insert(id, record.encode_to_vec().as_slice())?;
                let service = labels.get("service_name").map(String::as_str).unwrap_or("");
                w.open_table(SERIES_BY_SERVICE)?.insert((service, id), ())?;
                return Ok(id);
            }
            Some(bytes) if bytes == record.encode_to_vec() => return Ok(id),
            Some(_) => id = id.wrapping_add(1),
        }
    }
}

fn insert_batch(
    w: &WriteTransaction,
    interner: &Interner,
    pending: &mut PendingInterns,
    batch: &SeriesBatch,
    bytes_delta: &mut i64,
    spans_delta: &mut i64,
) -> Result<InsertStats> {
    let mut stats = InsertStats { samples: batch.total_samples(), ..Default::default() };
    let span_labels = span_labels(batch);
    let mut frame_ids = Vec::new();

    if !batch.process.is_empty() {
        let sid = series_id(w, &batch.labels)?;
        let bucket = batch.from_ms / BUCKET_MS * BUCKET_MS;
        let counts = pending.counts(interner, &mut RedbInterns(w), &batch.frames, &mut frame_ids, &batch.process)?;
        let mut process = w.open_table(PROCESS)?;
        let old = process.get((sid, bucket))?.map(|v| v.value().to_vec());
        let (merged, period) = match &old {
            Some(bytes) => {
                let rec: StacksRecord = codec::decode(bytes, "process bucket")?;
                let incoming = rescaled(counts, batch.period_ns, rec.period_ns);
                (codec::merge_counts(&rec.to_counts()?, &incoming), rec.period_ns)
            }
            None => {
                w.open_table(PROCESS_BY_TIME)?.insert((bucket, sid), ())?;
                (counts, batch.period_ns)
            }
        };
        let encoded = StacksRecord::from_counts(&merged, period).encode_to_vec();
        *bytes_delta += encoded.len() as i64 - old.map_or(0, |o| o.len() as i64);
        process.insert((sid, bucket), encoded.as_slice())?;
        stats.process_buckets += 1;
    }

    let mut spans_t = w.open_table(SPANS)?;
    let mut by_time = w.open_table(SPANS_BY_TIME)?;
    let mut by_service = w.open_table(SPANS_BY_SERVICE)?;
    let mut by_trace = w.open_table(SPANS_BY_TRACE)?;
    for span in &batch.spans {
        let id = id_key(&span.profile_id);
        let id = id.as_slice();
        let counts = pending.counts(interner, &mut RedbInterns(w), &batch.frames, &mut frame_ids, &span.stacks)?;
        let old = spans_t.get(id)?.map(|v| v.value().to_vec());
        let old_len = old.as_ref().map_or(0, Vec::len);
        let MergedSpan { rec, old_last_seen, new_trace } =
            merge_span(old.as_deref(), batch, span, &span_labels, counts)?;
        match old_last_seen {
            Some(t) => {
                by_time.remove((t, id))?;
                by_service.remove((rec.service_name.as_str(), t, id))?;
                stats.span_profiles_merged += 1;
            }
            None => {
                stats.span_profiles_created += 1;
                *spans_delta += 1;
            }
        }
        if let Some(t) = new_trace {
            by_trace.insert((t.0, id), ())?;
        }
        by_time.insert((rec.last_seen_ms, id), ())?;
        by_service.insert((rec.service_name.as_str(), rec.last_seen_ms, id), ())?;
        let bytes = rec.encode_to_vec();
        *bytes_delta += bytes.len() as i64 - old_len as i64;
        spans_t.insert(id, bytes.as_slice())?;
    }
    Ok(stats)
}

/// One bounded retention step: deletes at most [`RETENTION_STEP_ROWS`] expired rows. The size
/// limit counts the records and the `interned` frame and stack bytes.
fn retention_step(db: &Database, policy: &Retention, now_ms: u64, interned: u64) -> Result<RetentionStats> {
    let mut stats = RetentionStats::default();
    let w = db.begin_write()?;
    let mut bytes_delta = 0i64;
    let mut spans_delta = 0i64;
    {
        let cutoff = policy.max_age.map(|a| now_ms.saturating_sub(a.as_millis() as u64));
        let mut size = SizeEstimate::new(w.open_table(META)?.get(RECORD_BYTES)?.map(|v| v.value()).unwrap_or(0), interned);
        let mut by_time = w.open_table(SPANS_BY_TIME)?;
        let mut process_by_time = w.open_table(PROCESS_BY_TIME)?;
        let mut deleted = 0;
        while deleted < RETENTION_STEP_ROWS {
            let over_size = size.over(policy.max_bytes);
            let oldest_span = by_time.first()?.map(|(k, _)| {
                let (t, id) = k.value();
                (t, id.to_vec())
            });
            let oldest_bucket = process_by_time.first()?.map(|(k, _)| k.value());
            // The older of the two oldest entries goes first.
            let span_first = match (&oldest_span, oldest_bucket) {
                (Some((t, _)), Some((b, _))) => *t <= b + BUCKET_MS,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let oldest_time = if span_first { oldest_span.as_ref().map(|k| k.0) } else { oldest_bucket.map(|k| k.0 + BUCKET_MS) };
            let expired = matches!((cutoff, oldest_time), (Some(c), Some(t)) if t < c);
            if !expired && !over_size {
                break;
            }
            let freed = if span_first {
                let Some((last_seen, id)) = oldest_span else { break };
                by_time.remove((last_seen, id.as_slice()))?;
                stats.span_profiles_deleted += 1;
                spans_delta -= 1;
                delete_span(&w, &id, last_seen)?
            } else {
                let Some((bucket, sid)) = oldest_bucket else { break };
                process_by_time.remove((bucket, sid))?;
                stats.process_buckets_deleted += 1;
                let old = w.open_table(PROCESS)?.remove((sid, bucket))?.map(|v| v.value().len());
                old.unwrap_or(0) as u64
            };
            size.deleted(freed);
            bytes_delta -= freed as i64;
            deleted += 1;
        }
    }
    {
        let mut meta = w.open_table(META)?;
        add_counter(&mut meta, RECORD_BYTES, bytes_delta)?;
        add_counter(&mut meta, SPAN_COUNT, spans_delta)?;
    }
    w.commit()?;
    Ok(stats)
}

/// Deletes a span's record and its service and trace index entries; returns the bytes freed.
fn delete_span(w: &WriteTransaction, id: &[u8], last_seen: u64) -> Result<u64> {
    let Some(bytes) = w.open_table(SPANS)?.remove(id)?.map(|v| v.value().to_vec()) else { return Ok(0) };
    let rec: SpanRecord = codec::decode(&bytes, "span")?;
    w.open_table(SPANS_BY_SERVICE)?.remove((rec.service_name.as_str(), last_seen, id))?;
    if let Some(t) = codec::trace_from_bytes(&rec.trace_id) {
        w.open_table(SPANS_BY_TRACE)?.remove((t.0, id))?;
    }
    Ok(bytes.len() as u64)
}

/// Resolves stack IDs to frame names within one read snapshot, caching what it has seen.
struct Resolver<'r> {
    stacks: redb::ReadOnlyTable<u32, &'static [u8]>,
    frames: redb::ReadOnlyTable<u32, &'static str>,
    frame_cache: HashMap<u32, Arc<str>>,
    _r: std::marker::PhantomData<&'r ()>,
}

impl<'r> Resolver<'r> {
    fn new(r: &'r ReadTransaction) -> Result<Self> {
        Ok(Resolver {
            stacks: r.open_table(STACKS)?,
            frames: r.open_table(FRAMES)?,
            frame_cache: HashMap::new(),
            _r: std::marker::PhantomData,
        })
    }

    fn frame(&mut self, id: u32) -> Result<Arc<str>> {
        if let Some(f) = self.frame_cache.get(&id) {
            return Ok(f.clone());
        }
        let name: Arc<str> = match self.frames.get(id)? {
            Some(v) => Arc::from(v.value()),
            None => return Err(Error::Corrupt(format!("frame {id} missing"))),
        };
        self.frame_cache.insert(id, name.clone());
        Ok(name)
    }

    fn resolve(&mut self, counts: &Counts) -> Result<Stacks> {
        let mut out = Vec::with_capacity(counts.len());
        for &(sid, count) in counts {
            let rec: StackRecord = match self.stacks.get(sid)? {
                Some(v) => codec::decode(v.value(), "stack")?,
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

fn load_span(r: &ReadTransaction, resolver: &mut Resolver<'_>, id: &[u8]) -> Result<Option<SpanProfile>> {
    let Some(bytes) = r.open_table(SPANS)?.get(id)?.map(|v| v.value().to_vec()) else { return Ok(None) };
    let rec: SpanRecord = codec::decode(&bytes, "span")?;
    let stacks = resolver.resolve(&rec.stack_counts()?)?;
    Ok(Some(SpanProfile { summary: summary(id_from_key(id)?, rec), stacks }))
}

impl ProfileStore for EmbeddedStore {
    fn health(&self) -> std::result::Result<(), super::Trouble> {
        super::writer_health(&self.writer)?;
        super::reserve_health(&self.reserve)
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
        let r = self.read()?;
        let mut resolver = Resolver::new(&r)?;
        load_span(&r, &mut resolver, &id_key(&id))
    }

    fn search_spans(&self, q: &SpanQuery) -> Result<Page> {
        let r = self.read()?;
        let meta_t = r.open_table(SPANS)?;
        let limit = q.limit.clamp(1, 1000);
        let mut page = Page::default();
        let from = q.from_ms.unwrap_or(0);
        // Upper bound of the scan, exclusive of the cursor position.
        let hi = q.after.as_ref().map(|c| (c.last_seen_ms, id_key(&c.profile_id)));
        let accept = |id: &[u8], last_seen: u64, page: &mut Page| -> Result<bool> {
            let Some(v) = meta_t.get(id)? else { return Ok(false) };
            let meta: SpanRecord = codec::decode(v.value(), "span")?;
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
        let empty: &[u8] = &[];
        if let Some(trace) = q.trace_id {
            // A trace has few spans: collect, sort newest first, then page.
            let by_trace = r.open_table(SPANS_BY_TRACE)?;
            let mut rows = Vec::new();
            for row in by_trace.range((trace.0, empty)..)? {
                let row = row?;
                let (t, id) = row.0.value();
                if t != trace.0 {
                    break;
                }
                if let Some(v) = meta_t.get(id)? {
                    let m: SpanRecord = codec::decode(v.value(), "span")?;
                    rows.push((m.last_seen_ms, id.to_vec()));
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
            let by_service = r.open_table(SPANS_BY_SERVICE)?;
            let top = [0xFF; 1 + MAX_ID_KEY_BYTES];
            let (hi_t, hi_id, hi_bound): (u64, &[u8], _) = match &hi {
                Some((t, id)) => (*t, id.as_slice(), false),
                None => (u64::MAX, &top, true),
            };
            let range = if hi_bound {
                by_service.range((service, from, empty)..=(service, hi_t, hi_id))?
            } else {
                by_service.range((service, from, empty)..(service, hi_t, hi_id))?
            };
            for row in range.rev() {
                let row = row?;
                let (_, t, id) = row.0.value();
                examined += 1;
                let full = accept(id, t, &mut page)?;
                last = Some((t, id.to_vec()));
                if full || examined >= SCAN_BUDGET {
                    break;
                }
            }
        } else {
            let by_time = r.open_table(SPANS_BY_TIME)?;
            let range = match &hi {
                Some((t, id)) => by_time.range((from, empty)..(*t, id.as_slice()))?,
                None => by_time.range((from, empty)..)?,
            };
            for row in range.rev() {
                let row = row?;
                let (t, id) = row.0.value();
                examined += 1;
                let full = accept(id, t, &mut page)?;
                last = Some((t, id.to_vec()));
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
        let r = self.read()?;
        let mut resolver = Resolver::new(&r)?;
        let by_trace = r.open_table(SPANS_BY_TRACE)?;
        let mut out = Vec::new();
        let empty: &[u8] = &[];
        for row in by_trace.range((trace_id.0, empty)..)? {
            let row = row?;
            let (t, id) = row.0.value();
            if t != trace_id.0 {
                break;
            }
            if let Some(p) = load_span(&r, &mut resolver, id)? {
                out.push(p);
            }
        }
        out.sort_by(|a, b| (a.summary.first_seen_ms, &a.summary.profile_id).cmp(&(b.summary.first_seen_ms, &b.summary.profile_id)));
        Ok(out)
    }

    fn services(&self) -> Result<Vec<String>> {
        let r = self.read()?;
        let mut out = BTreeSet::new();
        for row in r.open_table(SERIES_BY_SERVICE)?.iter()? {
            out.insert(row?.0.value().0.to_owned());
        }
        // Services that only ever sent span profiles have no whole-process series.
        let by_service = r.open_table(SPANS_BY_SERVICE)?;
        let mut next: Option<String> = None;
        loop {
            let row = match &next {
                None => by_service.first()?.map(|(k, _)| k.value().0.to_owned()),
                Some(s) => {
                    let top = [0xFF; 1 + MAX_ID_KEY_BYTES];
                    let mut range = by_service.range((s.as_str(), u64::MAX, &top[..])..)?;
                    let mut found = None;
                    for row in range.by_ref() {
                        let key = row?.0;
                        let svc = key.value().0;
                        if svc != s {
                            found = Some(svc.to_owned());
                            break;
                        }
                    }
                    found
                }
            };
            match row {
                Some(s) => {
                    out.insert(s.clone());
                    next = Some(s);
                }
                None => break,
            }
        }
        Ok(out.into_iter().collect())
    }

    fn label_values(&self, name: &str) -> Result<Vec<String>> {
        let r = self.read()?;
        let mut out = BTreeSet::new();
        for row in r.open_table(SERIES)?.iter()? {
            let rec: SeriesRecord = codec::decode(row?.1.value(), "series")?;
            out.extend(rec.labels.into_iter().filter(|l| l.name == name).map(|l| l.value));
        }
        if name == "service_name" {
            out.extend(self.services()?);
        }
        Ok(out.into_iter().collect())
    }

    fn label_names(&self) -> Result<Vec<String>> {
        let r = self.read()?;
        let mut out = BTreeSet::new();
        for row in r.open_table(SERIES)?.iter()? {
            let rec: SeriesRecord = codec::decode(row?.1.value(), "series")?;
            out.extend(rec.labels.into_iter().map(|l| l.name));
        }
        Ok(out.into_iter().collect())
    }

    fn process_profile(
        &self,
        service: &str,
        profile_type: &str,
        from_ms: u64,
        until_ms: u64,
    ) -> Result<Option<ProcessProfile>> {
        let r = self.read()?;
        let series_t = r.open_table(SERIES)?;
        let mut series = Vec::new();
        for row in r.open_table(SERIES_BY_SERVICE)?.range((service, 0)..=(service, u64::MAX))? {
            let sid = row?.0.value().1;
            let Some(v) = series_t.get(sid)? else { continue };
            let rec: SeriesRecord = codec::decode(v.value(), "series")?;
            if rec.labels.iter().any(|l| l.name == "__name__" && l.value == profile_type) {
                series.push(sid);
            }
        }
        let process = r.open_table(PROCESS)?;
        let first_bucket = from_ms / BUCKET_MS * BUCKET_MS;
        let mut total: Counts = Vec::new();
        let mut period = 0;
        let mut any = false;
        for sid in series {
            for row in process.range((sid, first_bucket)..=(sid, until_ms))? {
                let (_, v) = row?;
                let rec: StacksRecord = codec::decode(v.value(), "process bucket")?;
                let mut counts = rec.to_counts()?;
                if period == 0 {
                    period = rec.period_ns;
                } else if rec.period_ns != period && period > 0 {
                    for c in &mut counts {
                        c.1 = (c.1 * rec.period_ns / period).max(1);
                    }
                }
                total = codec::merge_counts(&total, &counts);
                any = true;
            }
        }
        if !any {
            return Ok(None);
        }
        let mut resolver = Resolver::new(&r)?;
        Ok(Some(ProcessProfile { period_ns: period, stacks: resolver.resolve(&total)? }))
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
        let r = self.read()?;
        let meta = r.open_table(META)?;
        let get = |k: &str| -> Result<u64> { Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0)) };
        Ok(StoreStats {
            file_bytes: allocated_bytes(&self.path),
            record_bytes: get(RECORD_BYTES)?,
            interned_bytes: self.interned_bytes.load(Ordering::Relaxed),
            span_profiles: get(SPAN_COUNT)?,
        })
    }

    fn close(&self) {
        EmbeddedStore::close(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written before profile IDs were strings (span tables keyed by the span ID's
    /// value) opens with its profiles found, listed, merged into and expired as before.
    #[test]
    fn a_store_from_before_string_profile_ids_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let trace = TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        {
            let db = Database::create(dir.path().join(Engine::Redb.file_name())).unwrap();
            let w = db.begin_write().unwrap();
            {
                w.open_table(FRAMES).unwrap().insert(0, "main").unwrap();
                let stack = StackRecord { frame_ids: vec![0] }.encode_to_vec();
                w.open_table(STACKS).unwrap().insert(0, stack.as_slice()).unwrap();
                let mut rec = SpanRecord {
                    trace_id: codec::trace_to_bytes(Some(trace)),
                    service_name: "svc".into(),
                    span_name: "S".into(),
                    samples: 3,
                    period_ns: 10_000_000,
                    first_seen_ms: 1_000,
                    last_seen_ms: 2_000,
                    ..Default::default()
                };
                rec.set_stack_counts(&vec![(0, 3)]);
                let bytes = rec.encode_to_vec();
                w.open_table(OLD_SPANS).unwrap().insert(7, bytes.as_slice()).unwrap();
                w.open_table(OLD_SPANS_BY_TIME).unwrap().insert((2_000, 7), ()).unwrap();
                w.open_table(OLD_SPANS_BY_SERVICE).unwrap().insert(("svc", 2_000, 7), ()).unwrap();
                w.open_table(OLD_SPANS_BY_TRACE).unwrap().insert((trace.0, 7), ()).unwrap();
                let mut meta = w.open_table(META).unwrap();
                meta.insert(SPAN_COUNT, 1).unwrap();
                meta.insert(RECORD_BYTES, bytes.len() as u64).unwrap();
            }
            w.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions { engine: Engine::Redb, ..Default::default() }).unwrap();
        let p = store.span_profile(ProfileId::Span(7)).unwrap().unwrap();
        assert_eq!((p.summary.samples, p.summary.trace_id), (3, Some(trace)));
        assert_eq!(p.stacks, vec![(vec![Arc::<str>::from("main")], 3)]);
        for q in [
            SpanQuery { limit: 10, ..Default::default() },
            SpanQuery { limit: 10, service: Some("svc".into()), ..Default::default() },
            SpanQuery { limit: 10, trace_id: Some(trace), ..Default::default() },
        ] {
            let page = store.search_spans(&q).unwrap();
            assert_eq!(page.profiles.iter().map(|s| s.profile_id.clone()).collect::<Vec<_>>(), [ProfileId::Span(7)], "{q:?}");
        }
        assert_eq!(store.trace(trace).unwrap().len(), 1);
        assert_eq!(store.services().unwrap(), ["svc"]);
        {
            let r = store.read().unwrap();
            assert!(!r.list_tables().unwrap().any(|t| t.name() == OLD_SPANS.name()), "the old tables are gone");
        }
        drop(store);

        // Reopened (nothing left to migrate), the profile takes merges and expires.
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions { engine: Engine::Redb, ..Default::default() }).unwrap();
        let mut frames = crate::model::Frames::default();
        let mut stacks = crate::model::StackCounts::new();
        stacks.add(&[frames.intern("main")], 1);
        let batch = SeriesBatch {
            labels: [("service_name".to_string(), "svc".to_string())].into_iter().collect(),
            period_ns: 10_000_000,
            from_ms: 3_000,
            until_ms: 3_000,
            frames,
            spans: vec![crate::model::SpanContribution { profile_id: ProfileId::Span(7), trace_id: None, span_name: None, stacks }],
            process: crate::model::StackCounts::new(),
            dropped_labels: Default::default(),
        };
        let stats = store.insert(vec![batch]).unwrap();
        assert_eq!(stats.span_profiles_merged, 1);
        assert_eq!(store.span_profile(ProfileId::Span(7)).unwrap().unwrap().summary.samples, 4);
        let gone = store.enforce_retention(&Retention { max_age: Some(std::time::Duration::from_millis(1)), max_bytes: None }, 10_000).unwrap();
        assert_eq!(gone.span_profiles_deleted, 1);
        assert_eq!(store.stats().unwrap().span_profiles, 0);
        assert!(store.trace(trace).unwrap().is_empty());
    }
}
