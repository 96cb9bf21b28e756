//! On-disk record formats of the embedded store (protobuf via prost, so fields can be added
//! compatibly) and the pure merge of stack counts that "merge upon insert" comes down to.

use prost::Message;

use crate::error::{Error, Result};
use crate::proto::push::LabelPair;

/// One span profile (table `spans`): metadata and stack counts in one record, so a merge is one
/// read and one write.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpanRecord {
    /// 16 bytes big-endian, or empty when unknown.
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(string, tag = "2")]
    pub service_name: String,
    #[prost(string, tag = "3")]
    pub span_name: String,
    #[prost(uint64, tag = "4")]
    pub samples: u64,
    #[prost(uint64, tag = "5")]
    pub period_ns: u64,
    #[prost(uint64, tag = "6")]
    pub first_seen_ms: u64,
    #[prost(uint64, tag = "7")]
    pub last_seen_ms: u64,
    #[prost(message, repeated, tag = "8")]
    pub labels: Vec<LabelPair>,
    /// Stack IDs sorted ascending, delta-encoded (see [`StacksRecord`]).
    #[prost(uint32, repeated, tag = "9")]
    pub stack_id_deltas: Vec<u32>,
    #[prost(uint64, repeated, tag = "10")]
    pub counts: Vec<u64>,
    /// In a block: 1 + the ID of the block's series whose labels are this profile's (the labels
    /// above are then empty: each label set is stored once per block). 0: labels inline (the
    /// embedded store).
    #[prost(uint32, tag = "11")]
    pub block_series: u32,
    /// The embedded store's ID of the span-rollup series this profile's samples are counted in
    /// (its first push's labels and its span name), in the minute bucket of its last-seen time.
    /// 0: none (a record of an older version, which counted them per push; or a block's).
    #[prost(uint64, tag = "12")]
    pub rollup_series: u64,
    /// The span index chunk of (`rollup_series`, last-seen minute) its entry is in
    /// ([`super::span_index`]); meaningful only when `rollup_series` is set.
    #[prost(uint32, tag = "13")]
    pub stat_chunk: u32,
}

impl SpanRecord {
    pub fn stack_counts(&self) -> Result<Counts> {
        decode_deltas(&self.stack_id_deltas, &self.counts)
    }

    pub fn set_stack_counts(&mut self, counts: &Counts) {
        (self.stack_id_deltas, self.counts) = encode_deltas(counts);
    }
}

/// Stack counts of one profile (tables `span_stacks` and `process`): stack IDs sorted
/// ascending and delta-encoded, so they pack into small varints.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StacksRecord {
    #[prost(uint32, repeated, tag = "1")]
    pub stack_id_deltas: Vec<u32>,
    #[prost(uint64, repeated, tag = "2")]
    pub counts: Vec<u64>,
    #[prost(uint64, tag = "3")]
    pub period_ns: u64,
}

/// Frame IDs of one stack, root first (table `stacks`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StackRecord {
    #[prost(uint32, repeated, tag = "1")]
    pub frame_ids: Vec<u32>,
}

/// Sorted `(stack id, count)` pairs.
pub type Counts = Vec<(u32, u64)>;

impl StacksRecord {
    pub fn from_counts(counts: &Counts, period_ns: u64) -> Self {
        let (stack_id_deltas, counts) = encode_deltas(counts);
        StacksRecord { stack_id_deltas, counts, period_ns }
    }

    pub fn to_counts(&self) -> Result<Counts> {
        decode_deltas(&self.stack_id_deltas, &self.counts)
    }
}

fn encode_deltas(counts: &Counts) -> (Vec<u32>, Vec<u64>) {
    let mut prev = 0;
    let mut ids = Vec::with_capacity(counts.len());
    let mut values = Vec::with_capacity(counts.len());
    for &(id, c) in counts {
        ids.push(id - prev);
        values.push(c);
        prev = id;
    }
    (ids, values)
}

fn decode_deltas(deltas: &[u32], counts: &[u64]) -> Result<Counts> {
    if deltas.len() != counts.len() {
        return Err(Error::Corrupt("stack ids and counts differ in length".into()));
    }
    let mut id = 0u32;
    let mut out = Vec::with_capacity(counts.len());
    for (d, &c) in deltas.iter().zip(counts) {
        id = id.checked_add(*d).ok_or_else(|| Error::Corrupt("stack id overflow".into()))?;
        out.push((id, c));
    }
    Ok(out)
}

/// Merges two sorted count lists; counts of the same stack add up.
pub fn merge_counts(a: &Counts, b: &Counts) -> Counts {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0, a[i].1.saturating_add(b[j].1)));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Sorts and combines unsorted pairs.
pub fn normalize(mut counts: Counts) -> Counts {
    counts.sort_unstable_by_key(|&(id, _)| id);
    counts.dedup_by(|later, earlier| {
        if later.0 == earlier.0 {
            earlier.1 = earlier.1.saturating_add(later.1);
            true
        } else {
            false
        }
    });
    counts
}

/// Decodes a prost record stored by this crate.
pub fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

pub fn trace_to_bytes(t: Option<crate::model::TraceId>) -> Vec<u8> {
    t.map(|t| t.0.to_be_bytes().to_vec()).unwrap_or_default()
}

pub fn trace_from_bytes(b: &[u8]) -> Option<crate::model::TraceId> {
    <[u8; 16]>::try_from(b).ok().map(|a| crate::model::TraceId(u128::from_be_bytes(a))).filter(|t| t.0 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_identical_stacks() {
        let a = vec![(1, 2), (5, 1), (9, 4)];
        let b = vec![(0, 1), (5, 10), (12, 3)];
        assert_eq!(merge_counts(&a, &b), vec![(0, 1), (1, 2), (5, 11), (9, 4), (12, 3)]);
        assert_eq!(merge_counts(&a, &vec![]), a);
        assert_eq!(normalize(vec![(3, 1), (1, 1), (3, 2)]), vec![(1, 1), (3, 3)]);
    }

    #[test]
    fn stacks_record_round_trip() {
        let c = vec![(3, 7), (1000, 1), (1_000_000, 2)];
        let rec = StacksRecord::from_counts(&c, 10_000_000);
        let back: StacksRecord = decode(&rec.encode_to_vec(), "t").unwrap();
        assert_eq!(back.to_counts().unwrap(), c);
        let bad = StacksRecord { stack_id_deltas: vec![1], counts: vec![], period_ns: 1 };
        assert!(bad.to_counts().is_err());
    }
}
