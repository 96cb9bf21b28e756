//! Prometheus metrics of the operator, rendered on `/metrics` in the OpenMetrics text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
        let mut registry = Registry::with_prefix("spanprof_operator");
        let m = Metrics {
            reconciles: Counter::default(),
            reconcile_failures: Counter::default(),
            admission_requests: Family::default(),
            certificate_rotations: Counter::default(),
            certificate_expiry: Gauge::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "SpanProfiling reconciliations", m.reconciles.clone());
        registry.register("reconcile_failures", "Failed SpanProfiling reconciliations", m.reconcile_failures.clone());
        registry.register("admission_requests", "Admission requests by outcome", m.admission_requests.clone());
        registry.register("certificate_rotations", "Webhook certificates generated", m.certificate_rotations.clone());
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry of the webhook serving certificate",
            m.certificate_expiry.clone(),
        );
        registry.register("leader", "1 while this replica is the leader", m.leader.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one admission request.
    pub fn admission(&self, outcome: &str) {
        self.admission_requests.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
