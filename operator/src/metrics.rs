//! Prometheus metrics of the operator, rendered on `/metrics` in the OpenMetrics text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use spanprof_cli::metrics::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    /// Reconciliations of SpanProfilings.
    pub reconciles: Counter,
    /// Reconciliations that failed (and were requeued with backoff).
    pub reconcile_failures: Counter,
    /// Admission requests by outcome: `injected`, a skip reason (`not_requested`, …), `malformed`.
    pub admission_requests: Family<OutcomeLabel, Counter>,
    /// Webhook certificates this replica generated (first issue and rotations).
    pub certificate_rotations: Counter,
    /// Unix time at which the serving certificate in use expires.
    pub certificate_expiry: Gauge,
    /// 1 while this replica is the leader (reports status and publishes Events).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::new("operator");
        Metrics {
            reconciles: r.counter("reconciles", "SpanProfiling reconciliations"),
            reconcile_failures: r.counter("reconcile_failures", "Failed SpanProfiling reconciliations"),
            admission_requests: r.counters("admission_requests", "Admission requests by outcome"),
            certificate_rotations: r.counter("certificate_rotations", "Webhook certificates generated"),
            certificate_expiry: r
                .gauge("certificate_expiry_timestamp_seconds", "Expiry of the webhook serving certificate"),
            leader: r.gauge("leader", "1 while this replica is the leader"),
            registry: r,
        }
    }
}

impl Metrics {
    /// Counts one admission request.
    pub fn admission(&self, outcome: &str) {
        self.admission_requests.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

/// `CamelCase` → `camel_case`, for metric label values from Event reasons.
pub fn snake(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len() + 4);
    let mut prev_lower = false;
    for c in reason.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}
