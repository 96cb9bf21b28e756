//! Feature `opentelemetry`: the OpenTelemetry side of a span, as `tracing-opentelemetry` keeps it.
//!
//! `tracing-opentelemetry` (0.34) keeps its per-span data private and only hands out a span's
//! OpenTelemetry context through a `Dispatch` ([`tracing_opentelemetry::get_otel_context`]).
//! Asking for it *starts* the OpenTelemetry span if it was not started yet, which fixes its span
//! and trace IDs (and its parent: `set_parent` has no effect afterwards). That is why the layer
//! only asks when it must know a span's root: at its first enter, when a child of it is created,
//! or in [`crate::root_of`] — the same moments at which `tracing-opentelemetry` (with its default
//! context activation) starts spans itself.

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use tracing_core::Dispatch;
use tracing_core::span::Id;

/// Span attribute holding the profile ID, as Grafana's traces-to-profiles link expects.
pub const PROFILE_ID_ATTRIBUTE: &str = "pyroscope.profile.id";
/// Span attribute holding the profile's URL in the spanprof UI (`SPANPROF_PROFILE_URL`).
pub const PROFILE_URL_ATTRIBUTE: &str = "spanprof.profile.url";

/// A started OpenTelemetry span with valid IDs.
pub(crate) struct OtelSpan {
    cx: opentelemetry::Context,
    pub(crate) span_id: u64,
    pub(crate) trace_id: u128,
}

/// The OpenTelemetry span of tracing span `id`, started if it was not yet. `None` when
/// `tracing-opentelemetry` is not part of `dispatch`, does not see this span (per-layer filter),
/// or its tracer hands out invalid contexts (the no-op tracer).
///
/// `dispatch` must be the dispatch `id` belongs to; the caller must hold no lock on the span's
/// extensions (`tracing-opentelemetry` takes them).
pub(crate) fn span_of(dispatch: &Dispatch, id: &Id) -> Option<OtelSpan> {
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    Some(OtelSpan {
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        cx,
    })
}

/// Marks a local root span for the traces-to-profiles link: `pyroscope.profile.id`, and
/// `spanprof.profile.url` when a URL template is configured.
pub(crate) fn mark_root(span: &OtelSpan, profile_url: Option<&str>) {
    let root = crate::RootSpan { profile_id: span.span_id, trace_id: span.trace_id };
    let otel = span.cx.span();
    if let Some(template) = profile_url {
        otel.set_attribute(KeyValue::new(PROFILE_URL_ATTRIBUTE, root.profile_url(template)));
    }
    otel.set_attribute(KeyValue::new(PROFILE_ID_ATTRIBUTE, root.profile_id_hex()));
}
