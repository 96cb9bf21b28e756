//! The server's vocabulary: profile and trace IDs, stacks with counts, and what one ingest adds.

use spanprof_proto::labels as wire;
use std::collections::BTreeMap;

use ahash::AHashMap as HashMap;
use std::fmt;
use std::sync::Arc;

/// The default sampling period: 100 Hz.
pub const DEFAULT_PERIOD_NS: u64 = 10_000_000;

/// Longest profile ID that is not a span ID, in bytes.
pub const MAX_PROFILE_ID_BYTES: usize = 128;

/// A span profile's ID. What the sampler and SDKs send is the local root span's 64-bit span ID
/// (16 hex digits); any other `profile_id`/`span_id` label value a profiler sets (Pyroscope
/// lets users pick arbitrary strings, e.g. `pprof.Labels("profile_id", "checkout-42")`) is a
/// profile ID of its own, merged with the profiles of exactly the same string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProfileId {
    /// A span ID, kept as its value: 16 hex digits in either case name the same span and are
    /// shown in lowercase.
    Span(u64),
    /// Any other ID: 1 to [`MAX_PROFILE_ID_BYTES`] bytes of UTF-8 without control characters.
    Named(Arc<str>),
}

impl ProfileId {
    /// Parses a profile ID: 16 hex digits are a span ID (the all-zero one is invalid, as in
    /// OpenTelemetry); anything else within the rules of [`ProfileId::Named`] names a profile.
    /// `Err` says which rule `s` breaks.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return SpanId::parse(s).map(|id| ProfileId::Span(id.0)).ok_or("the all-zero span ID is invalid");
        }
        if s.is_empty() {
            Err("a profile ID is not empty")
        } else if s.len() > MAX_PROFILE_ID_BYTES {
            Err("a profile ID is at most 128 bytes")
        } else if s.chars().any(char::is_control) {
            Err("a profile ID holds no control characters")
        } else {
            Ok(ProfileId::Named(Arc::from(s)))
        }
    }

    /// Whether this is a span ID (what the sampler and SDKs send), not a named profile.
    pub fn is_span(&self) -> bool {
        matches!(self, ProfileId::Span(_))
    }

    /// The label a pprof export names the ID with: `span_id` for a span ID, `profile_id` otherwise.
    pub fn label_key(&self) -> &'static str {
        match self {
            ProfileId::Span(_) => wire::SPAN_ID,
            ProfileId::Named(_) => wire::PROFILE_ID,
        }
    }
}

impl fmt::Display for ProfileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileId::Span(v) => SpanId(*v).fmt(f),
            ProfileId::Named(s) => f.write_str(s),
        }
    }
}

/// In JSON (peers' answers): the ID's text.
impl serde::Serialize for ProfileId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ProfileId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ProfileId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Trace IDs as every part of spanprof writes them (`spanprof-proto`).
pub use spanprof_proto::ids::{SpanId, TraceId};

/// Frame names of one batch, each stored once; stacks refer to them by index, so ingest hashes
/// and copies small integers instead of strings.
#[derive(Clone, Debug, Default)]
pub struct Frames {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
}

impl Frames {
    /// The index of `name`, adding it when new. Names longer than [`MAX_FRAME_NAME_BYTES`] are
    /// cut (on a character boundary) and marked with `…`: no real function name is that long,
    /// and the store keys on names.
    pub fn intern(&mut self, name: &str) -> u32 {
        let cut;
        let name = if name.len() > MAX_FRAME_NAME_BYTES {
            let mut end = MAX_FRAME_NAME_BYTES - '…'.len_utf8();
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            cut = format!("{}…", &name[..end]);
            cut.as_str()
        } else {
            name
        };
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.index.insert(name, i);
        i
    }

    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    pub fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("[unknown]", |n| n)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl PartialEq for Frames {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl Eq for Frames {}

/// The longest frame name kept, bytes (see [`Frames::intern`]).
pub const MAX_FRAME_NAME_BYTES: usize = 8 << 10;

/// The deepest stack kept, in frames. Deeper stacks (runaway recursion, or hostile input) keep
/// their leaf-most frames — where the CPU time is — under a [`TRUNCATED_FRAME`] root, as
/// profilers that cap stack depth do; every later walk over stacks and trees then stays bounded.
pub const MAX_STACK_DEPTH: usize = 1024;
/// The frame that stands for the outer frames of a truncated stack.
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// Bounds `stack` (root first) to [`MAX_STACK_DEPTH`] frames: the leaf-most ones under
/// [`TRUNCATED_FRAME`] (interned in `frames` only when needed). Returns whether it cut.
pub fn bound_depth(stack: &mut Vec<u32>, frames: &mut Frames) -> bool {
    if stack.len() <= MAX_STACK_DEPTH {
        return false;
    }
    let cut = stack.len() - (MAX_STACK_DEPTH - 1);
    stack.drain(..cut);
    stack.insert(0, frames.intern(TRUNCATED_FRAME));
    true
}

/// Stacks (root first, as indices into a batch's [`Frames`]) with sample counts; identical
/// stacks add up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackCounts {
    counts: HashMap<Box<[u32]>, u64>,
}

impl StackCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `count` samples of `stack`. Zero counts and empty stacks are ignored.
    pub fn add(&mut self, stack: &[u32], count: u64) {
        if count == 0 || stack.is_empty() {
            return;
        }
        match self.counts.get_mut(stack) {
            Some(c) => *c = c.saturating_add(count),
            None => {
                self.counts.insert(stack.into(), count);
            }
        }
    }

    /// Adds every stack of `other` (same frame table).
    pub fn merge(&mut self, other: StackCounts) {
        for (stack, count) in other.counts {
            match self.counts.get_mut(&stack) {
                Some(c) => *c = c.saturating_add(count),
                None => {
                    self.counts.insert(stack, count);
                }
            }
        }
    }

    /// Adds every stack of `other` (same frame table), leaving it as it is.
    pub fn merge_from(&mut self, other: &StackCounts) {
        for (stack, count) in other.iter() {
            self.add(stack, count);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Number of distinct stacks.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Total samples over all stacks.
    pub fn total(&self) -> u64 {
        self.counts.values().fold(0, |a, c| a.saturating_add(*c))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u32], u64)> {
        self.counts.iter().map(|(s, c)| (&**s, *c))
    }
}

/// Scales a count taken at one sampling period onto another (`num / den`, rounded); a non-zero
/// count never rounds down to zero.
pub fn rescale_count(count: u64, num: u64, den: u64) -> u64 {
    if num == den || den == 0 || count == 0 {
        return count;
    }
    let scaled = (u128::from(count) * u128::from(num) + u128::from(den / 2)) / u128::from(den);
    u64::try_from(scaled).unwrap_or(u64::MAX).max(1)
}

/// The `span_name` of the rollup of spans that have no name.
pub const UNNAMED_SPAN: &str = "[unnamed]";

/// The `span_name` of the span rollup a profile named `span_name` is counted in: a span's
/// samples are kept beside the whole-process profile, under the series' labels plus
/// `span_name`, so the CPU of a service inside spans, or of one span name, is read from a few
/// minute buckets instead of from every span profile.
pub fn rollup_span_name(span_name: &str) -> &str {
    if span_name.is_empty() { UNNAMED_SPAN } else { span_name }
}

/// Series labels (`service_name`, `namespace`, `pod`, …), sorted by name.
pub type Labels = BTreeMap<String, String>;

/// The samples one ingest request adds to one span profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContribution {
    pub profile_id: ProfileId,
    pub trace_id: Option<TraceId>,
    pub span_name: Option<String>,
    pub stacks: StackCounts,
}

/// Sample labels ingest could not use, counted in samples: the samples were kept without them
/// (as Pyroscope keeps a sample whose label it cannot use), never the whole request refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DroppedLabels {
    /// `span_id`/`profile_id` values that are no span ID: those samples count as whole-process.
    pub span_id: u64,
    /// `trace_id` values that are no trace ID: those samples stay in their span profile.
    pub trace_id: u64,
}

impl DroppedLabels {
    pub fn is_empty(&self) -> bool {
        self.span_id == 0 && self.trace_id == 0
    }

    pub fn add(&mut self, other: DroppedLabels) {
        self.span_id = self.span_id.saturating_add(other.span_id);
        self.trace_id = self.trace_id.saturating_add(other.trace_id);
    }
}

/// Everything one series of one ingest request adds: span profiles and the whole-process rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesBatch {
    /// Series labels; always holds `service_name`.
    pub labels: Labels,
    /// Sampling period of the counts, in nanoseconds.
    pub period_ns: u64,
    /// Start and end of the profiled interval, Unix milliseconds.
    pub from_ms: u64,
    pub until_ms: u64,
    /// Frame names the stacks of `spans` and `process` refer to.
    pub frames: Frames,
    pub spans: Vec<SpanContribution>,
    /// Samples outside any span: the series' whole-process profile.
    pub process: StackCounts,
    /// Labels of this series' samples that could not be used (not stored; reported).
    pub dropped_labels: DroppedLabels,
}

impl SeriesBatch {
    pub fn service_name(&self) -> &str {
        self.labels.get(wire::SERVICE_NAME).map(String::as_str).unwrap_or("unknown")
    }

    /// Samples in spans plus samples outside them.
    pub fn total_samples(&self) -> u64 {
        self.process.total() + self.spans.iter().map(|s| s.stacks.total()).sum::<u64>()
    }

    /// `stacks` with frame names, sorted (for tests and debugging).
    pub fn named(&self, stacks: &StackCounts) -> Vec<(Vec<&str>, u64)> {
        let mut out: Vec<(Vec<&str>, u64)> =
            stacks.iter().map(|(s, c)| (s.iter().map(|&f| self.frames.name(f)).collect(), c)).collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print_as_lowercase_hex() {
        let id = ProfileId::parse("00F067AA0BA902B7").unwrap();
        assert_eq!(id, ProfileId::Span(0x00f0_67aa_0ba9_02b7));
        assert_eq!(id.to_string(), "00f067aa0ba902b7");
        assert!(ProfileId::parse("0000000000000000").is_err(), "the all-zero span ID");
        // Anything else within the rules names a profile by its exact string.
        for named in ["00f067aa0ba902b", "+0f067aa0ba902b7", "checkout-42", "239", "a/b?c d", "€uro", &"x".repeat(128)]
        {
            let id = ProfileId::parse(named).unwrap();
            assert_eq!(id, ProfileId::Named(named.into()));
            assert_eq!(id.to_string(), named);
        }
        for bad in ["", "a\nb", "tab\there", &"x".repeat(129)] {
            assert!(ProfileId::parse(bad).is_err(), "{bad:?}");
        }
        let t = TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceId::parse("4bf92f3577b34da6a3ce929d0e0e473").is_none());
    }

    #[test]
    fn identical_stacks_add_up_and_rescale_keeps_nonzero() {
        let mut frames = Frames::default();
        let (a, b) = (frames.intern("a"), frames.intern("b"));
        assert_eq!(frames.intern("a"), a);
        let mut s = StackCounts::new();
        s.add(&[a, b], 2);
        s.add(&[a, b], 3);
        s.add(&[a], 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.total(), 5);
        assert_eq!(rescale_count(5, 1, 10), 1);
        assert_eq!(rescale_count(1, 1, 10), 1);
        assert_eq!(rescale_count(7, 20, 10), 14);
    }

    #[test]
    fn deep_stacks_keep_their_leaf_most_frames_under_a_marker() {
        let mut frames = Frames::default();
        let mut stack: Vec<u32> = (0..5000).map(|i| frames.intern(&format!("f{i}"))).collect();
        assert!(bound_depth(&mut stack, &mut frames));
        assert_eq!(stack.len(), MAX_STACK_DEPTH);
        assert_eq!(frames.name(stack[0]), TRUNCATED_FRAME);
        assert_eq!(frames.name(stack[1]), format!("f{}", 5000 - (MAX_STACK_DEPTH - 1)));
        assert_eq!(frames.name(*stack.last().unwrap()), "f4999");
        let mut ok: Vec<u32> = stack[1..].to_vec();
        assert!(!bound_depth(&mut ok, &mut frames), "a stack within the bound is left alone");
    }

    #[test]
    fn huge_frame_names_are_cut_on_a_character_boundary() {
        let mut frames = Frames::default();
        let long = "é".repeat(MAX_FRAME_NAME_BYTES);
        let i = frames.intern(&long);
        let name = frames.name(i);
        assert!(name.len() <= MAX_FRAME_NAME_BYTES && name.ends_with('…'), "{}", name.len());
        assert_eq!(frames.intern(&long), i, "the same long name interns to the same frame");
    }
}
