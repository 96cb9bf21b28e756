//! spanprof: a `tracing` layer that tells the spanprof sampler which local root span each thread
//! is running, so that every traced request gets its own CPU profile.
//!
//! The *local root* of a span is the first span of its trace in this process (a span with no
//! parent here). Whenever the root of the innermost span entered on a thread changes — including
//! to "none" — the layer writes `(thread, CLOCK_MONOTONIC time, root span ID, trace ID, name)`
//! into the span-context channel (see the `spanprof-channel` crate), a memory-mapped file in
//! `SPANPROF_CONTEXT_DIR` that the `spanprof-sidecar` reads to label its samples. Each root span
//! gets a span ID — its *profile ID* — and a trace ID: random (non-zero 64 and 128 bits), or the
//! OpenTelemetry IDs with the `opentelemetry` feature (below).
//!
//! Enter and exit never block, allocate or make a system call (the clock is read through the
//! vDSO); async tasks are followed poll by poll, whichever thread polls them.
//!
//! # Adding it to an app
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//! tracing_subscriber::registry()
//!     .with(spanprof::SpanProfLayer::from_env()?)
//!     .with(tracing_subscriber::fmt::layer())
//!     .init();
//! # Ok::<(), spanprof::Error>(())
//! ```
//!
//! | env | meaning |
//! |---|---|
//! | `SPANPROF_CONTEXT_DIR` | directory of the channel file (the injected volume, `/var/run/spanprof`); unset or empty: the layer does nothing |
//! | `SPANPROF_PROFILE_URL` | profile URL template with `{profile_id}`, for [`RootSpan::profile_url`] |
//! | `SPANPROF_SERVICE_NAME` | read by the sidecar, not the SDK |
//!
//! [`root_of`] gives a span's root IDs, e.g. to log the profile URL of a request.
//!
//! # OpenTelemetry (feature `opentelemetry`)
//!
//! With `tracing-opentelemetry` in the same subscriber (either order), the profile ID is the
//! OpenTelemetry span ID of the local root span and the trace ID its OpenTelemetry trace ID; a
//! span whose OpenTelemetry parent is remote (`OpenTelemetrySpanExt::set_parent` with a context
//! extracted from a `traceparent` header) is a local root too; and local root spans get the
//! attributes `pyroscope.profile.id` (the profile ID, for Grafana's traces-to-profiles link) and
//! `spanprof.profile.url` (when `SPANPROF_PROFILE_URL` is set). A span's root is settled when first needed — first enter, a
//! child's creation, [`root_of`] — which starts its OpenTelemetry span: call `set_parent` before.
//! Spans OpenTelemetry does not see keep random IDs.
//!
//! ```no_run
//! # #[cfg(feature = "opentelemetry")]
//! # fn main() -> Result<(), spanprof::Error> {
//! use opentelemetry::trace::TracerProvider as _;
//! use tracing_subscriber::prelude::*;
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
//!     // .with_batch_exporter(…): your exporter, e.g. opentelemetry-otlp's
//!     .build();
//! tracing_subscriber::registry()
//!     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("ride-sharing")))
//!     .with(spanprof::SpanProfLayer::from_env()?)
//!     .init();
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "opentelemetry"))]
//! # fn main() {}
//! ```
#![forbid(unsafe_code)]

mod error;
mod ids;
mod layer;
#[cfg(feature = "opentelemetry")]
mod otel;

pub use error::{Error, Result};
pub use layer::{Builder, CONTEXT_DIR_ENV, PROFILE_URL_ENV, SpanProfLayer};
#[cfg(feature = "opentelemetry")]
pub use otel::{PROFILE_ID_ATTRIBUTE, PROFILE_URL_ATTRIBUTE};

use spanprof_channel::ids::{SpanId, TraceId};
use tracing_subscriber::registry::Registry;

/// The local root a span belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RootSpan {
    /// The root span's ID: the profile ID.
    pub profile_id: u64,
    pub trace_id: u128,
}

impl RootSpan {
    /// The profile ID as 16 lowercase hex digits.
    pub fn profile_id_hex(&self) -> String {
        SpanId(self.profile_id).to_string()
    }

    /// The trace ID as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        TraceId(self.trace_id).to_string()
    }

    /// `template` with every `{profile_id}` replaced by the profile ID.
    pub fn profile_url(&self, template: &str) -> String {
        template.replace("{profile_id}", &self.profile_id_hex())
    }
}

/// The local root of `span`, when an enabled [`SpanProfLayer`] over a
/// `tracing_subscriber::Registry` recorded it. With the `opentelemetry` feature this settles the
/// span's root if it was not yet entered, which starts its OpenTelemetry span: call it after
/// `set_parent`.
pub fn root_of(span: &tracing::Span) -> Option<RootSpan> {
    span.with_subscriber(|(id, dispatch)| {
        let layer = dispatch.downcast_ref::<SpanProfLayer>()?;
        let registry = dispatch.downcast_ref::<Registry>()?;
        let root = layer.root_in(registry, id)?;
        Some(RootSpan { profile_id: root.span_id, trace_id: root.trace_id })
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_format_as_fixed_width_lowercase_hex() {
        let r = RootSpan { profile_id: 0xab, trace_id: 0x1F };
        assert_eq!(r.profile_id_hex(), "00000000000000ab");
        assert_eq!(r.trace_id_hex(), "0000000000000000000000000000001f");
        assert_eq!(
            r.profile_url("http://ui/profiles/{profile_id}?x={profile_id}"),
            "http://ui/profiles/00000000000000ab?x=00000000000000ab"
        );
    }
}
