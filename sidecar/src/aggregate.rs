//! Aggregation per upload interval (pure): samples counted per series, span and stack; the
//! `encode` module turns an interval into what is pushed.

use std::collections::BTreeMap;

// Keys here are hashed once per sample (whole stacks) or per frame: SipHash's DoS resistance buys
// nothing for our own data and costs several times more.
use ahash::AHashMap as HashMap;
use std::sync::Arc;

use crate::join::SpanLabels;
use crate::unwind::FrameKey;

/// A stack (leaf first) and the span it ran for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackKey {
    pub span: Option<SpanLabels>,
    pub frames: Box<[FrameKey]>,
}

impl std::hash::Hash for StackKey {
    /// The frames folded into one word before the table's hasher sees them: a derived hash
    /// feeds it two fields per frame, ~60 writes per sample for the demo's stacks.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.span.hash(state);
        let folded = self.frames.iter().fold(self.frames.len() as u64, |h, f| {
            (h.rotate_left(5) ^ f.addr ^ (u64::from(f.module) << 48)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
        });
        state.write_u64(folded);
    }
}

/// The labels that tell one process's profiles apart from another's in the same pod: its service
/// and, when it says so, its container. The sidecar adds the pod-wide labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Series {
    pub service: Arc<str>,
    pub container: Option<Arc<str>>,
}

impl Series {
    pub fn service(service: &str) -> Series {
        Series { service: Arc::from(service), container: None }
    }
}

/// Sample counts of one interval, per series.
#[derive(Debug, Default)]
pub struct Aggregate {
    pub series: BTreeMap<Arc<Series>, HashMap<StackKey, u64>>,
    samples: u64,
    /// Stacks a series' table is made for: the most one had the interval before. Keys are
    /// nearly unique per span, so a table that starts empty rehashes every key several times.
    expected_stacks: usize,
}

impl Aggregate {
    /// An empty aggregate for the interval after `previous`, sized as it was.
    pub fn next_after(previous: &Aggregate) -> Aggregate {
        let expected_stacks = previous.series.values().map(|stacks| stacks.len()).max().unwrap_or(0);
        Aggregate { expected_stacks, ..Aggregate::default() }
    }

    pub fn add(&mut self, series: &Arc<Series>, span: Option<SpanLabels>, frames: &[FrameKey]) {
        // Looked up before inserting: cloning the `Arc` for every sample costs two atomic ops.
        let stacks = match self.series.get_mut(series) {
            Some(stacks) => stacks,
            None => {
                self.series.entry(Arc::clone(series)).or_insert_with(|| HashMap::with_capacity(self.expected_stacks))
            }
        };
        *stacks.entry(StackKey { span, frames: frames.into() }).or_default() += 1;
        self.samples += 1;
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// Every frame, for the symbolizer.
    pub fn frames(&self) -> impl Iterator<Item = &FrameKey> {
        self.series.values().flat_map(|s| s.keys()).flat_map(|k| k.frames.iter())
    }
}
