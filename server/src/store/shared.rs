//! Pieces of the store apart from its engine: frame/stack interning, the merge of one span
//! contribution into its stored record, profile ID keys, series identity and tuning constants.

use spanprof_proto::labels as wire;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ahash::AHashMap as HashMap;
use prost::Message;

use super::SpanSummary;
use super::codec::{self, Counts, SpanRecord, StackRecord};
use crate::error::{Error, Result};
use crate::model::{Frames, Labels, ProfileId, SeriesBatch, SpanContribution, StackCounts, TraceId, rescale_count};
use crate::proto::push::LabelPair;

/// Whole-process profiles are kept in buckets of this many milliseconds.
pub const BUCKET_MS: u64 = 60_000;
/// Most rows one retention step deletes before letting queued inserts through.
pub(crate) const RETENTION_STEP_ROWS: usize = 2_000;
/// Most frame or stack rows one garbage-collection transaction deletes.
pub(crate) const GC_SWEEP_ROWS: usize = 10_000;
/// Index entries one listing call examines at most before returning a partial page.
pub(crate) const SCAN_BUDGET: usize = 100_000;

/// Labels of one series.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SeriesRecord {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
}

impl SeriesRecord {
    pub fn from_labels(labels: &Labels) -> Self {
        SeriesRecord { labels: labels.iter().map(|(k, v)| LabelPair { name: k.clone(), value: v.clone() }).collect() }
    }
}

fn series_key(labels: &Labels) -> String {
    let mut s = String::new();
    for (k, v) in labels {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('\u{0}');
    }
    s
}

/// First candidate series ID of a label set: a hash of the canonical label set; engines probe
/// upwards from it on collision (checked against the stored labels).
pub(crate) fn series_id_seed(labels: &Labels) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    series_key(labels).hash(&mut h);
    h.finish()
}

/// A fixed-seed hash of a stack's frame IDs: the interner is rebuilt from the stack table at
/// start-up, so the function only has to agree with itself within one process.
fn stack_hash(frames: &[u32]) -> u64 {
    const STATE: ahash::RandomState = ahash::RandomState::with_seeds(0x5eed, 0x5a4f, 0x9e37_79b9, 0x7f4a_7c15);
    STATE.hash_one(frames)
}

/// The writer's in-memory view of the frame and stack tables, so interning is a hash lookup.
/// Only committed entries live here; a transaction's new entries join after its commit.
#[derive(Default)]
pub(crate) struct Interner {
    frames: HashMap<Arc<str>, u32>,
    /// Hash of a stack's frame IDs → stack ID (the stack table has the frames).
    stacks: HashMap<u64, u32>,
    next_frame: u32,
    next_stack: u32,
    /// Bytes of the frame and stack tables (keys and values), counted towards retention's
    /// size limit: interned names are a large share of the store when frames rarely repeat.
    bytes: u64,
    /// While a garbage collection marks: the frames and stacks used since it began.
    marking: Option<Marking>,
}

/// Frames and stacks interned or reused since a collection took its snapshot: the snapshot does
/// not show them referenced, yet they are.
#[derive(Debug, Default)]
pub(crate) struct Marking {
    frames: std::collections::HashSet<u32>,
    stacks: std::collections::HashSet<u32>,
}

/// Retention's running estimate of the store's size while it deletes: records and interned
/// frames and stacks. A deleted record's frames and stacks are only freed by the next
/// collection, so each deletion is credited with the interned bytes in proportion to its size;
/// where records share frames this credits too much and retention deletes too little, which
/// the next pass, after a collection, makes up — it never deletes far more than needed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SizeEstimate {
    records: u64,
    interned: u64,
    total: u64,
}

impl SizeEstimate {
    pub fn new(records: u64, interned: u64) -> Self {
        SizeEstimate { records, interned, total: records.saturating_add(interned) }
    }

    pub fn over(&self, max_bytes: Option<u64>) -> bool {
        max_bytes.is_some_and(|m| self.total > m)
    }

    /// A record of `bytes` was deleted.
    pub fn deleted(&mut self, bytes: u64) {
        let share = if self.records == 0 {
            0
        } else {
            (u128::from(bytes) * u128::from(self.interned) / u128::from(self.records)) as u64
        };
        self.total = self.total.saturating_sub(bytes.saturating_add(share));
    }
}

/// Bytes one frame or stack row takes: its 4-byte key and its value.
fn row_bytes(value_len: usize) -> u64 {
    4 + value_len as u64
}

impl Interner {
    /// Registers a stored frame (start-up load).
    pub fn load_frame(&mut self, id: u32, name: &str) {
        self.frames.insert(Arc::from(name), id);
        self.next_frame = self.next_frame.max(id + 1);
        self.bytes += row_bytes(name.len());
    }

    /// Registers a stored stack record (start-up load).
    pub fn load_stack(&mut self, id: u32, bytes: &[u8]) -> Result<()> {
        let rec: StackRecord = codec::decode(bytes, "stack")?;
        self.stacks.insert(stack_hash(&rec.frame_ids), id);
        self.next_stack = self.next_stack.max(id + 1);
        self.bytes += row_bytes(bytes.len());
        Ok(())
    }

    /// Bytes of the frame and stack tables.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Starts a collection: from now on every frame and stack used is remembered, and the
    /// returned bounds say which IDs existed when it began (the only ones it may remove).
    pub fn begin_marking(&mut self) -> GcBounds {
        self.marking = Some(Marking::default());
        GcBounds { frames: self.next_frame, stacks: self.next_stack }
    }

    /// Ends a collection without sweeping (its mark failed).
    pub fn abort_marking(&mut self) {
        self.marking = None;
    }

    /// Of the candidates a mark found unreferenced, those not used since it began: the rows to
    /// delete. Ends the collection.
    pub fn end_marking(&mut self, candidates: GcCandidates) -> GcCandidates {
        let marking = self.marking.take().unwrap_or_default();
        GcCandidates {
            frames: candidates.frames.into_iter().filter(|id| !marking.frames.contains(id)).collect(),
            stacks: candidates.stacks.into_iter().filter(|id| !marking.stacks.contains(id)).collect(),
        }
    }

    /// Forgets a stack row that was deleted (`record` its stored bytes).
    pub fn forget_stack(&mut self, id: u32, record: &[u8]) -> Result<()> {
        let rec: StackRecord = codec::decode(record, "stack")?;
        let h = stack_hash(&rec.frame_ids);
        if self.stacks.get(&h) == Some(&id) {
            self.stacks.remove(&h);
        }
        self.bytes = self.bytes.saturating_sub(row_bytes(record.len()));
        Ok(())
    }

    /// Forgets a frame row that was deleted.
    pub fn forget_frame(&mut self, id: u32, name: &str) {
        if self.frames.get(name) == Some(&id) {
            self.frames.remove(name);
        }
        self.bytes = self.bytes.saturating_sub(row_bytes(name.len()));
    }
}

/// The IDs that existed when a collection began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GcBounds {
    pub frames: u32,
    pub stacks: u32,
}

/// Frames and stacks a collection may delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GcCandidates {
    pub frames: Vec<u32>,
    pub stacks: Vec<u32>,
}

/// The mark phase of a collection over one snapshot: which stacks the records reference, then
/// which frames those stacks reference. Feed it every record's counts and every stack row below
/// the bounds; what is left unreferenced is a candidate.
pub(crate) struct Mark {
    bounds: GcBounds,
    stacks: IdSet,
    frames: IdSet,
    unreferenced_stacks: Vec<u32>,
}

impl Mark {
    pub fn new(bounds: GcBounds) -> Self {
        Mark {
            bounds,
            stacks: IdSet::new(bounds.stacks),
            frames: IdSet::new(bounds.frames),
            unreferenced_stacks: Vec::new(),
        }
    }

    /// A span record's or process bucket's stack counts.
    pub fn record(&mut self, counts: &Counts) {
        for &(stack, _) in counts {
            self.stacks.insert(stack);
        }
    }

    /// A stack row (after every record was seen): marks its frames if it is referenced.
    pub fn stack(&mut self, id: u32, record: &[u8]) -> Result<()> {
        if id >= self.bounds.stacks {
            return Ok(());
        }
        if self.stacks.contains(id) {
            let rec: StackRecord = codec::decode(record, "stack")?;
            for f in rec.frame_ids {
                self.frames.insert(f);
            }
        } else {
            self.unreferenced_stacks.push(id);
        }
        Ok(())
    }

    /// The candidates, given every frame ID stored.
    pub fn finish(self, frame_ids: impl Iterator<Item = u32>) -> GcCandidates {
        let bound = self.bounds.frames;
        let frames = frame_ids.filter(|&f| f < bound && !self.frames.contains(f)).collect();
        GcCandidates { frames, stacks: self.unreferenced_stacks }
    }
}

/// One collection of unreferenced frames and stacks, whatever the engine: `begin` starts marking
/// in the writer, `mark` then reads a snapshot (taken after `begin`: whatever it does not show
/// referenced and no insert used since is garbage), `sweep` deletes in the writer; a failed mark
/// calls `abort` so the writer stops remembering the IDs it uses.
pub(crate) fn collect(
    begin: impl FnOnce() -> Result<GcBounds>,
    mark: impl FnOnce(GcBounds) -> Result<GcCandidates>,
    abort: impl FnOnce(),
    sweep: impl FnOnce(GcCandidates) -> Result<super::GcStats>,
) -> Result<super::GcStats> {
    let bounds = begin()?;
    match mark(bounds) {
        Ok(candidates) => sweep(candidates),
        Err(e) => {
            abort();
            Err(e)
        }
    }
}

/// A set of IDs below a bound, one bit each.
struct IdSet(Vec<u64>);

impl IdSet {
    fn new(bound: u32) -> Self {
        IdSet(vec![0; (bound as usize).div_ceil(64)])
    }

    fn insert(&mut self, id: u32) {
        if let Some(word) = self.0.get_mut(id as usize / 64) {
            *word |= 1 << (id % 64);
        }
    }

    fn contains(&self, id: u32) -> bool {
        self.0.get(id as usize / 64).is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

/// Where new frames and stacks of a transaction are written (the engine's write transaction).
pub(crate) trait InternSink {
    fn put_frame(&mut self, id: u32, name: &str) -> Result<()>;
    /// `record` is an encoded [`StackRecord`].
    fn put_stack(&mut self, id: u32, record: &[u8]) -> Result<()>;
}

/// New frames and stacks of one transaction, merged into the [`Interner`] after commit.
#[derive(Default)]
pub(crate) struct PendingInterns {
    frames: HashMap<Arc<str>, u32>,
    stacks: HashMap<u64, u32>,
    next_frame: u32,
    next_stack: u32,
    bytes: u64,
    /// Committed frames and stacks this transaction reused, while a collection marks.
    reused: Option<Marking>,
}

impl PendingInterns {
    pub fn new(i: &Interner) -> Self {
        PendingInterns {
            next_frame: i.next_frame,
            next_stack: i.next_stack,
            reused: i.marking.as_ref().map(|_| Marking::default()),
            ..Default::default()
        }
    }

    fn frame(&mut self, i: &Interner, w: &mut impl InternSink, name: &str) -> Result<u32> {
        if let Some(&id) = i.frames.get(name) {
            if let Some(r) = &mut self.reused {
                r.frames.insert(id);
            }
            return Ok(id);
        }
        if let Some(&id) = self.frames.get(name) {
            return Ok(id);
        }
        let id = self.next_frame;
        self.next_frame += 1;
        w.put_frame(id, name)?;
        self.bytes += row_bytes(name.len());
        self.frames.insert(Arc::from(name), id);
        Ok(id)
    }

    fn stack(&mut self, i: &Interner, w: &mut impl InternSink, ids: &[u32]) -> Result<u32> {
        let h = stack_hash(ids);
        if let Some(&id) = i.stacks.get(&h) {
            if let Some(r) = &mut self.reused {
                r.stacks.insert(id);
            }
            return Ok(id);
        }
        if let Some(&id) = self.stacks.get(&h) {
            return Ok(id);
        }
        let id = self.next_stack;
        self.next_stack += 1;
        let record = StackRecord { frame_ids: ids.to_vec() }.encode_to_vec();
        w.put_stack(id, &record)?;
        self.bytes += row_bytes(record.len());
        self.stacks.insert(h, id);
        Ok(id)
    }

    /// Interns a batch's stacks: `frame_ids` maps the batch's frame indices to global frame IDs
    /// (filled lazily, so each distinct frame name is looked up once per batch).
    pub fn counts(
        &mut self,
        i: &Interner,
        w: &mut impl InternSink,
        frames: &Frames,
        frame_ids: &mut Vec<Option<u32>>,
        stacks: &StackCounts,
    ) -> Result<Counts> {
        frame_ids.resize(frames.len(), None);
        let mut global = Vec::with_capacity(64);
        let mut out = Vec::with_capacity(stacks.len());
        for (stack, count) in stacks.iter() {
            global.clear();
            for &f in stack {
                let slot = frame_ids.get_mut(f as usize).ok_or_else(|| Error::Corrupt(format!("frame index {f}")))?;
                let id = match *slot {
                    Some(id) => id,
                    None => {
                        let id = self.frame(i, w, frames.name(f))?;
                        *slot = Some(id);
                        id
                    }
                };
                global.push(id);
            }
            out.push((self.stack(i, w, &global)?, count));
        }
        Ok(codec::normalize(out))
    }

    pub fn commit_into(self, i: &mut Interner) {
        i.frames.extend(self.frames);
        i.stacks.extend(self.stacks);
        i.next_frame = self.next_frame;
        i.next_stack = self.next_stack;
        i.bytes += self.bytes;
        if let (Some(m), Some(r)) = (&mut i.marking, self.reused) {
            m.frames.extend(r.frames);
            m.stacks.extend(r.stacks);
        }
    }
}

/// `counts` taken at `from_period`, rescaled onto `to_period` when they differ.
pub(crate) fn rescaled(mut counts: Counts, from_period: u64, to_period: u64) -> Counts {
    if from_period != to_period && to_period != 0 {
        for c in &mut counts {
            c.1 = rescale_count(c.1, from_period, to_period);
        }
    }
    counts
}

/// The series labels a span record keeps (everything but the service and profile type).
pub(crate) fn span_labels(batch: &SeriesBatch) -> Vec<LabelPair> {
    batch
        .labels
        .iter()
        .filter(|(k, _)| k.as_str() != wire::SERVICE_NAME && k.as_str() != wire::NAME)
        .map(|(k, v)| LabelPair { name: k.clone(), value: v.clone() })
        .collect()
}

/// The longest [`id_key`]: a named ID and its two end bytes at most.
pub(crate) const MAX_ID_KEY_BYTES: usize = crate::model::MAX_PROFILE_ID_BYTES + 2;

/// Ends a named profile ID in a key; no byte of UTF-8 text is 0xFF.
const NAMED_ID_END: u8 = 0xFF;

/// A profile ID as the stores key it. A span ID is its 8 big-endian bytes, as the stores have
/// always kept it (so existing stores read on); a named ID is its UTF-8 bytes and a 0xFF, and a
/// second 0xFF when it would otherwise be 8 bytes long: a key is a span ID exactly when it is
/// 8 bytes long. The ID comes last in every index key, so its length is what remains.
pub(crate) fn id_key(id: &ProfileId) -> Vec<u8> {
    match id {
        ProfileId::Span(v) => v.to_be_bytes().to_vec(),
        ProfileId::Named(s) => {
            let mut k = Vec::with_capacity(s.len() + 2);
            k.extend_from_slice(s.as_bytes());
            k.push(NAMED_ID_END);
            if k.len() == 8 {
                k.push(NAMED_ID_END);
            }
            k
        }
    }
}

/// The profile ID of an [`id_key`].
pub(crate) fn id_from_key(key: &[u8]) -> Result<ProfileId> {
    let corrupt = || Error::Corrupt(format!("profile ID key {key:02x?}"));
    if let Ok(b) = <[u8; 8]>::try_from(key) {
        return Ok(ProfileId::Span(u64::from_be_bytes(b)));
    }
    let text = key.strip_suffix(&[NAMED_ID_END]).ok_or_else(corrupt)?;
    let text = text.strip_suffix(&[NAMED_ID_END]).unwrap_or(text);
    let text = std::str::from_utf8(text).map_err(|_| corrupt())?;
    Ok(ProfileId::Named(Arc::from(text)))
}

/// A span record after merging one contribution, and the index changes that requires.
pub(crate) struct MergedSpan {
    pub rec: SpanRecord,
    /// `last_seen_ms` of the stored record, when there was one: its time and service index
    /// entries must go (the service never changes on merge).
    pub old_last_seen: Option<u64>,
    /// A trace ID the record gained: add a trace index entry.
    pub new_trace: Option<TraceId>,
    /// The stored record had no span name and this part gave it one.
    pub gained_name: bool,
    /// The stack counts before and after, when a stored record was merged into.
    pub counts: Option<MergeCounts>,
}

/// Stack counts of a stored span record before and after a merge, decoded once: a merge that
/// moves the profile to another rollup bucket takes the ones before out of the old bucket and
/// adds the ones after to the new.
pub(crate) struct MergeCounts {
    pub before: Counts,
    /// The stored record's period.
    pub before_period_ns: u64,
    pub after: Counts,
}

/// One more part of a span profile, to merge into its record.
pub(crate) struct SpanPart<'a> {
    /// Stack counts (of the record's stack IDs) at `period_ns`.
    pub counts: &'a Counts,
    pub period_ns: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub trace_id: Option<TraceId>,
    pub span_name: Option<&'a str>,
    pub labels: &'a [LabelPair],
    pub service_name: &'a str,
}

impl SpanPart<'_> {
    /// A new record of this part alone.
    pub fn into_record(self) -> SpanRecord {
        let mut rec = SpanRecord {
            trace_id: codec::trace_to_bytes(self.trace_id),
            service_name: self.service_name.to_owned(),
            span_name: self.span_name.unwrap_or_default().to_owned(),
            samples: self.counts.iter().map(|c| c.1).sum(),
            period_ns: self.period_ns,
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
            labels: self.labels.to_vec(),
            ..Default::default()
        };
        rec.set_stack_counts(self.counts);
        rec
    }

    /// Merges this part into `rec` as merge upon insert does: counts rescaled onto the record's
    /// period and added, first/last seen widened, a trace ID, span name or label the record
    /// lacks taken. Returns the trace ID the record gained, if any.
    pub fn merge_into(self, rec: &mut SpanRecord) -> Result<Option<TraceId>> {
        let stored = rec.stack_counts()?;
        Ok(self.merge_onto(rec, &stored).0)
    }

    /// [`SpanPart::merge_into`] of a record whose stack counts are `stored`; also returns the
    /// merged counts.
    fn merge_onto(self, rec: &mut SpanRecord, stored: &Counts) -> (Option<TraceId>, Counts) {
        let owned;
        let incoming = if self.period_ns == rec.period_ns || rec.period_ns == 0 {
            self.counts
        } else {
            owned = rescaled(self.counts.clone(), self.period_ns, rec.period_ns);
            &owned
        };
        rec.samples = rec.samples.saturating_add(incoming.iter().map(|c| c.1).sum());
        rec.first_seen_ms = rec.first_seen_ms.min(self.first_seen_ms);
        rec.last_seen_ms = rec.last_seen_ms.max(self.last_seen_ms);
        let mut new_trace = None;
        if rec.trace_id.is_empty() && self.trace_id.is_some() {
            rec.trace_id = codec::trace_to_bytes(self.trace_id);
            new_trace = self.trace_id;
        }
        if rec.span_name.is_empty() {
            rec.span_name = self.span_name.unwrap_or_default().to_owned();
        }
        for l in self.labels {
            if !rec.labels.iter().any(|m| m.name == l.name) {
                rec.labels.push(l.clone());
            }
        }
        let merged = codec::merge_counts(stored, incoming);
        rec.set_stack_counts(&merged);
        (new_trace, merged)
    }
}

/// Merges `span` (its stacks already interned into `counts`) into the stored record `old`, or
/// builds a new record.
pub(crate) fn merge_span(
    old: Option<&[u8]>,
    batch: &SeriesBatch,
    span: &SpanContribution,
    span_labels: &[LabelPair],
    counts: &Counts,
) -> Result<MergedSpan> {
    let part = SpanPart {
        counts,
        period_ns: batch.period_ns,
        first_seen_ms: batch.from_ms,
        last_seen_ms: batch.until_ms,
        trace_id: span.trace_id,
        span_name: span.span_name.as_deref(),
        labels: span_labels,
        service_name: batch.service_name(),
    };
    match old {
        Some(old_bytes) => {
            let mut rec: SpanRecord = codec::decode(old_bytes, "span")?;
            let old_last_seen = Some(rec.last_seen_ms);
            let unnamed = rec.span_name.is_empty();
            let (before, before_period_ns) = (rec.stack_counts()?, rec.period_ns);
            let (new_trace, after) = part.merge_onto(&mut rec, &before);
            Ok(MergedSpan {
                gained_name: unnamed && !rec.span_name.is_empty(),
                rec,
                old_last_seen,
                new_trace,
                counts: Some(MergeCounts { before, before_period_ns, after }),
            })
        }
        None => Ok(MergedSpan {
            rec: part.into_record(),
            old_last_seen: None,
            new_trace: span.trace_id,
            gained_name: false,
            counts: None,
        }),
    }
}

/// The API's view of a stored span record.
pub(crate) fn summary(id: ProfileId, meta: SpanRecord) -> SpanSummary {
    SpanSummary {
        profile_id: id,
        trace_id: codec::trace_from_bytes(&meta.trace_id),
        service_name: meta.service_name,
        span_name: meta.span_name,
        samples: meta.samples,
        period_ns: meta.period_ns,
        first_seen_ms: meta.first_seen_ms,
        last_seen_ms: meta.last_seen_ms,
        labels: meta.labels.into_iter().map(|l| (l.name, l.value)).collect(),
    }
}

#[cfg(test)]
mod id_key_tests {
    use super::*;

    #[test]
    fn every_profile_id_round_trips_and_only_span_ids_take_8_bytes() {
        let ids = ["00f067aa0ba902b7", "ffffffffffffffff", "1234567", "12345678", "123456", "x", "checkout-42", "€uro"];
        for s in ids {
            let id = ProfileId::parse(s).unwrap();
            let key = id_key(&id);
            assert_eq!(key.len() == 8, id.is_span(), "{s}");
            assert_eq!(id_from_key(&key).unwrap(), id, "{s}");
        }
        assert!(id_from_key(b"no end").is_err());
        assert!(id_from_key(&[0xC3, 0xFF]).is_err(), "not UTF-8");
    }
}

#[cfg(test)]
mod gc_tests {
    use super::*;

    struct NoSink;

    impl InternSink for NoSink {
        fn put_frame(&mut self, _: u32, _: &str) -> Result<()> {
            Ok(())
        }

        fn put_stack(&mut self, _: u32, _: &[u8]) -> Result<()> {
            Ok(())
        }
    }

    /// Interns one stack of `names` and commits it, as an insert does.
    fn intern(i: &mut Interner, names: &[&str]) -> u32 {
        let mut frames = Frames::default();
        let ids: Vec<u32> = names.iter().map(|n| frames.intern(n)).collect();
        let mut stacks = StackCounts::new();
        stacks.add(&ids, 1);
        let mut pending = PendingInterns::new(i);
        let counts = pending.counts(i, &mut NoSink, &frames, &mut Vec::new(), &stacks).unwrap();
        pending.commit_into(i);
        counts[0].0
    }

    fn stack_row(frames: &[u32]) -> Vec<u8> {
        StackRecord { frame_ids: frames.to_vec() }.encode_to_vec()
    }

    #[test]
    fn what_no_record_references_is_a_candidate() {
        let mut i = Interner::default();
        let kept = intern(&mut i, &["main", "a"]);
        let dropped = intern(&mut i, &["main", "b"]);
        let bytes = i.bytes();
        let mut mark = Mark::new(i.begin_marking());
        mark.record(&vec![(kept, 3)]);
        mark.stack(kept, &stack_row(&[0, 1])).unwrap();
        mark.stack(dropped, &stack_row(&[0, 2])).unwrap();
        let doomed = i.end_marking(mark.finish([0, 1, 2].into_iter()));
        assert_eq!(doomed, GcCandidates { frames: vec![2], stacks: vec![dropped] });
        i.forget_stack(dropped, &stack_row(&[0, 2])).unwrap();
        i.forget_frame(2, "b");
        assert!(i.bytes() < bytes);
        // Forgotten: the same stack interns anew, under a fresh ID.
        assert!(intern(&mut i, &["main", "b"]) > dropped);
    }

    #[test]
    fn what_an_insert_uses_while_marking_is_not_swept() {
        let mut i = Interner::default();
        let stack = intern(&mut i, &["main", "a"]);
        let bounds = i.begin_marking();
        // The snapshot shows nothing referencing the stack (its record was deleted), but an
        // insert after marking began reuses it.
        assert_eq!(intern(&mut i, &["main", "a"]), stack);
        let mut mark = Mark::new(bounds);
        mark.stack(stack, &stack_row(&[0, 1])).unwrap();
        let candidates = mark.finish([0, 1].into_iter());
        assert_eq!(candidates, GcCandidates { frames: vec![0, 1], stacks: vec![stack] });
        assert_eq!(i.end_marking(candidates), GcCandidates::default());
    }

    #[test]
    fn ids_created_after_marking_began_are_never_candidates() {
        let mut i = Interner::default();
        let bounds = i.begin_marking();
        let late = intern(&mut i, &["late"]);
        let mut mark = Mark::new(bounds);
        mark.stack(late, &stack_row(&[0])).unwrap();
        assert_eq!(mark.finish([0].into_iter()), GcCandidates::default());
    }

    #[test]
    fn the_size_estimate_credits_interned_bytes_in_proportion() {
        let mut s = SizeEstimate::new(1_000, 3_000);
        assert!(s.over(Some(3_999)) && !s.over(Some(4_000)) && !s.over(None));
        s.deleted(500);
        assert!(!s.over(Some(2_000)) && s.over(Some(1_999)));
    }
}
