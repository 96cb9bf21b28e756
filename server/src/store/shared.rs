//! Engine-independent pieces of the embedded stores (redb and fjall): frame/stack interning, the
//! merge of one span contribution into its stored record, series identity and tuning constants,
//! so both engines store and merge exactly the same way.

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
}

impl Interner {
    /// Registers a stored frame (start-up load).
    pub fn load_frame(&mut self, id: u32, name: &str) {
        self.frames.insert(Arc::from(name), id);
        self.next_frame = self.next_frame.max(id + 1);
    }

    /// Registers a stored stack record (start-up load).
    pub fn load_stack(&mut self, id: u32, bytes: &[u8]) -> Result<()> {
        let rec: StackRecord = codec::decode(bytes, "stack")?;
        self.stacks.insert(stack_hash(&rec.frame_ids), id);
        self.next_stack = self.next_stack.max(id + 1);
        Ok(())
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
}

impl PendingInterns {
    pub fn new(i: &Interner) -> Self {
        PendingInterns { next_frame: i.next_frame, next_stack: i.next_stack, ..Default::default() }
    }

    fn frame(&mut self, i: &Interner, w: &mut impl InternSink, name: &str) -> Result<u32> {
        if let Some(&id) = i.frames.get(name).or_else(|| self.frames.get(name)) {
            return Ok(id);
        }
        let id = self.next_frame;
        self.next_frame += 1;
        w.put_frame(id, name)?;
        self.frames.insert(Arc::from(name), id);
        Ok(id)
    }

    fn stack(&mut self, i: &Interner, w: &mut impl InternSink, ids: &[u32]) -> Result<u32> {
        let h = stack_hash(ids);
        if let Some(&id) = i.stacks.get(&h).or_else(|| self.stacks.get(&h)) {
            return Ok(id);
        }
        let id = self.next_stack;
        self.next_stack += 1;
        w.put_stack(id, StackRecord { frame_ids: ids.to_vec() }.encode_to_vec().as_slice())?;
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
        .filter(|(k, _)| k.as_str() != "service_name" && k.as_str() != "__name__")
        .map(|(k, v)| LabelPair { name: k.clone(), value: v.clone() })
        .collect()
}

/// A span record after merging one contribution, and the index changes that requires.
pub(crate) struct MergedSpan {
    pub rec: SpanRecord,
    /// `last_seen_ms` of the stored record, when there was one: its time and service index
    /// entries must go (the service never changes on merge).
    pub old_last_seen: Option<u64>,
    /// A trace ID the record gained: add a trace index entry.
    pub new_trace: Option<TraceId>,
}

/// Merges `span` (its stacks already interned into `counts`) into the stored record `old`, or
/// builds a new record.
pub(crate) fn merge_span(
    old: Option<&[u8]>,
    batch: &SeriesBatch,
    span: &SpanContribution,
    span_labels: &[LabelPair],
    counts: Counts,
) -> Result<MergedSpan> {
    match old {
        Some(old_bytes) => {
            let mut rec: SpanRecord = codec::decode(old_bytes, "span")?;
            let incoming = rescaled(counts, batch.period_ns, rec.period_ns);
            let old_last_seen = Some(rec.last_seen_ms);
            let mut new_trace = None;
            rec.samples = rec.samples.saturating_add(incoming.iter().map(|c| c.1).sum());
            rec.first_seen_ms = rec.first_seen_ms.min(batch.from_ms);
            rec.last_seen_ms = rec.last_seen_ms.max(batch.until_ms);
            if rec.trace_id.is_empty() && span.trace_id.is_some() {
                rec.trace_id = codec::trace_to_bytes(span.trace_id);
                new_trace = span.trace_id;
            }
            if rec.span_name.is_empty() {
                rec.span_name = span.span_name.clone().unwrap_or_default();
            }
            for l in span_labels {
                if !rec.labels.iter().any(|m| m.name == l.name) {
                    rec.labels.push(l.clone());
                }
            }
            let merged = codec::merge_counts(&rec.stack_counts()?, &incoming);
            rec.set_stack_counts(&merged);
            Ok(MergedSpan { rec, old_last_seen, new_trace })
        }
        None => {
            let mut rec = SpanRecord {
                trace_id: codec::trace_to_bytes(span.trace_id),
                service_name: batch.service_name().to_owned(),
                span_name: span.span_name.clone().unwrap_or_default(),
                samples: span.stacks.total(),
                period_ns: batch.period_ns,
                first_seen_ms: batch.from_ms,
                last_seen_ms: batch.until_ms,
                labels: span_labels.to_vec(),
                ..Default::default()
            };
            rec.set_stack_counts(&counts);
            Ok(MergedSpan { rec, old_last_seen: None, new_trace: span.trace_id })
        }
    }
}

/// The API's view of a stored span record.
pub(crate) fn summary(id: u64, meta: SpanRecord) -> SpanSummary {
    SpanSummary {
        profile_id: ProfileId(id),
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
