//! Ingest: turns Pyroscope's protocols (legacy `/ingest` and the Connect push API) into
//! [`SeriesBatch`](crate::model::SeriesBatch)es for the store. Everything here is pure: bytes and
//! query strings in, batches or a [`Rejected`](crate::error::Error::Rejected) error out.

pub mod decode;
pub mod legacy;
pub mod pprof;
pub mod push;

/// Limits applied to every request body.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest body accepted on the wire, bytes.
    pub max_body_bytes: usize,
    /// Largest size any payload may decompress to, bytes (gzip bomb guard).
    pub max_decompressed_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 16 << 20, max_decompressed_bytes: 64 << 20 }
    }
}

/// The profile type (`__name__`) whose samples make span profiles: CPU. Samples of other types
/// (allocations, wall clock, …) with span labels stay in their series' whole-process profile,
/// so a span's CPU flame graph never mixes in bytes or objects.
pub const SPAN_PROFILE_TYPE: &str = "process_cpu";

/// Moves span samples of non-CPU series into the whole-process profile (see [`SPAN_PROFILE_TYPE`]).
pub fn keep_spans_for_cpu_only(batch: &mut crate::model::SeriesBatch) {
    if batch.labels.get("__name__").is_none_or(|n| n == SPAN_PROFILE_TYPE) {
        return;
    }
    for span in std::mem::take(&mut batch.spans) {
        batch.process.merge(span.stacks);
    }
}
