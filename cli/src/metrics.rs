//! A binary's metrics registry: every metric is created and registered in one call under the
//! binary's prefix (`spanprof_<component>_…`), and rendered as OpenMetrics text for `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Metric;

/// The metrics of one component (`server`, `operator`, `sidecar`).
#[derive(Debug)]
pub struct Registry(prometheus_client::registry::Registry);

impl Registry {
    /// An empty registry whose metrics are named `spanprof_<component>_<name>`.
    pub fn new(component: &str) -> Registry {
        Registry(prometheus_client::registry::Registry::with_prefix(format!("spanprof_{component}")))
    }

    /// Registers `metric` (a clone shares its value) and hands it back.
    pub fn add<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }

    /// A new counter (rendered with the `_total` suffix).
    pub fn counter(&mut self, name: &str, help: &str) -> Counter {
        self.add(name, help, Counter::default())
    }

    pub fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        self.add(name, help, Gauge::default())
    }

    /// A new family of counters, one per label set.
    pub fn counters<L>(&mut self, name: &str, help: &str) -> Family<L, Counter>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        self.add(name, help, Family::default())
    }

    /// The OpenMetrics text exposition ([`crate::OPENMETRICS`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail: a failure would be a half-written exposition.
        if prometheus_client::encoding::text::encode(&mut out, &self.0).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Kind {
        kind: String,
    }

    #[test]
    fn metrics_carry_the_component_prefix_and_share_their_values() {
        let mut r = Registry::new("test");
        let c = r.counter("requests", "Requests");
        let g = r.gauge("queued_bytes", "Bytes queued");
        let f = r.counters::<Kind>("errors", "Errors by kind");
        c.inc_by(3);
        g.set(7);
        f.get_or_create(&Kind { kind: "io".into() }).inc();
        let text = r.render();
        assert!(text.contains("# HELP spanprof_test_requests Requests."), "{text}");
        assert!(text.contains("spanprof_test_requests_total 3"), "{text}");
        assert!(text.contains("spanprof_test_queued_bytes 7"), "{text}");
        assert!(text.contains("spanprof_test_errors_total{kind=\"io\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
