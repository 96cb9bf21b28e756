//! Ingest: turns Pyroscope's protocols (legacy `/ingest` and the Connect push API) into
//! [`SeriesBatch`](crate::model::SeriesBatch)es for the store. Everything here is pure: bytes and
//! query strings in, batches or a [`Rejected`](crate::error::Error::Rejected) error out.

use spanprof_proto::labels as wire;
pub mod decode;
pub mod legacy;
pub mod pprof;
pub mod push;

/// Limits applied to every request, as Pyroscope's distributor applies its own: what is over
/// them is refused with a 4xx naming the limit, before anything is stored.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest body accepted on the wire, bytes.
    pub max_body_bytes: usize,
    /// Largest size any payload may decompress to, bytes (gzip bomb guard).
    pub max_decompressed_bytes: usize,
    /// Series (label sets) in one request.
    pub max_series_per_request: usize,
    /// Labels of one series, `service_name` and `__name__` included.
    pub max_labels_per_series: usize,
    /// Bytes of a label name.
    pub max_label_name_bytes: usize,
    /// Bytes of a label value (`service_name` included) and of a span name.
    pub max_label_value_bytes: usize,
    /// Span profiles one request may add to.
    pub max_spans_per_request: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_series_per_request: 1_000,
            max_labels_per_series: 30,
            max_label_name_bytes: 1_024,
            max_label_value_bytes: 2_048,
            max_spans_per_request: 100_000,
        }
    }
}

/// Checks what one request would store against `limits`.
pub fn check_limits(batches: &[crate::model::SeriesBatch], limits: &Limits) -> crate::error::Result<()> {
    use crate::error::{Error, Reject};
    let too_large = |m: String| Err(Error::rejected(Reject::TooLarge, m));
    let distinct: std::collections::HashSet<&crate::model::Labels> = batches.iter().map(|b| &b.labels).collect();
    if distinct.len() > limits.max_series_per_request {
        return too_large(format!(
            "{} series in one request; the limit is {} (--max-series-per-request)",
            distinct.len(),
            limits.max_series_per_request
        ));
    }
    let spans: usize = batches.iter().map(|b| b.spans.len()).sum();
    if spans > limits.max_spans_per_request {
        return too_large(format!(
            "{spans} span profiles in one request; the limit is {}",
            limits.max_spans_per_request
        ));
    }
    for labels in distinct {
        if labels.len() > limits.max_labels_per_series {
            return Err(Error::rejected(
                Reject::BadLabel,
                format!("a series has {} labels; the limit is {}", labels.len(), limits.max_labels_per_series),
            ));
        }
        for (name, value) in labels {
            if name.len() > limits.max_label_name_bytes {
                return Err(Error::rejected(
                    Reject::BadLabel,
                    format!("label name of {} bytes; the limit is {}", name.len(), limits.max_label_name_bytes),
                ));
            }
            if value.len() > limits.max_label_value_bytes {
                return Err(Error::rejected(
                    Reject::BadLabel,
                    format!(
                        "label {name} has a value of {} bytes; the limit is {}",
                        value.len(),
                        limits.max_label_value_bytes
                    ),
                ));
            }
        }
    }
    for span in batches.iter().flat_map(|b| &b.spans) {
        if let Some(name) = span.span_name.as_deref().filter(|n| n.len() > limits.max_label_value_bytes) {
            return Err(Error::rejected(
                Reject::BadLabel,
                format!("span_name of {} bytes; the limit is {}", name.len(), limits.max_label_value_bytes),
            ));
        }
    }
    Ok(())
}

/// The profile type (`__name__`) whose samples make span profiles: CPU. Samples of other types
/// (allocations, wall clock, …) with span labels stay in their series' whole-process profile,
/// so a span's CPU flame graph never mixes in bytes or objects.
pub const SPAN_PROFILE_TYPE: &str = wire::PROCESS_CPU;

/// Moves span samples of non-CPU series into the whole-process profile (see [`SPAN_PROFILE_TYPE`]).
pub fn keep_spans_for_cpu_only(batch: &mut crate::model::SeriesBatch) {
    if batch.labels.get(wire::NAME).is_none_or(|n| n == SPAN_PROFILE_TYPE) {
        return;
    }
    for span in std::mem::take(&mut batch.spans) {
        batch.process.merge(span.stacks);
    }
}
