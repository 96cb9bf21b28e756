//! Prometheus metrics of the sidecar, served on `/metrics` (OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttributionLabel {
    /// `span`, `no_span`, `unknown` (channel could not tell), `no_channel` (process has none).
    pub attribution: String,
}

/// Every metric the sidecar exports (prefix `spanprof_sidecar_`).
pub struct Metrics {
    registry: Registry,
    pub samples: Family<AttributionLabel, Counter>,
    /// The `samples` counters of the usual attributions.
    by_attribution: [(&'static str, Counter); 4],
    pub unattributed: Counter,
    pub lost_records: Counter,
    pub throttled: Counter,
    pub unwind_failures: Counter,
    pub unwind_truncated: Counter,
    pub malformed_records: Counter,
    pub uploads: Counter,
    pub push_errors: Counter,
    pub dropped_bytes: Counter,
    pub dropped_uploads: Counter,
    pub buffered_bytes: Gauge,
    pub attached_threads: Gauge,
    pub attached_processes: Gauge,
    pub attached_cgroups: Gauge,
    pub attach_errors: Counter,
    pub kernel_excluded: Gauge,
    pub sampling_permitted: Gauge,
    pub symbols_cached: Gauge,
    /// The metrics address could not be bound (the sidecar samples on without it).
    pub metrics_listen_failures: Counter,
    /// When the sampling loop last went round: milliseconds since [`Metrics::started`] (0: it
    /// has not started, e.g. while perf events are not permitted yet).
    heartbeat_ms: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("spanprof_sidecar");
        let samples: Family<AttributionLabel, Counter> = Family::default();
        let by_attribution = ["span", "no_span", "unknown", "no_channel"].map(|a| {
            let label = AttributionLabel { attribution: a.to_owned() };
            (a, samples.get_or_create(&label).clone())
        });
        let m = Metrics {
            samples,
            by_attribution,
            unattributed: Counter::default(),
            lost_records: Counter::default(),
            throttled: Counter::default(),
            unwind_failures: Counter::default(),
            unwind_truncated: Counter::default(),
            malformed_records: Counter::default(),
            uploads: Counter::default(),
            metrics_listen_failures: Counter::default(),
            heartbeat_ms: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
            push_errors: Counter::default(),
            dropped_bytes: Counter::default(),
            dropped_uploads: Counter::default(),
            buffered_bytes: Gauge::default(),
            attached_threads: Gauge::default(),
            attached_processes: Gauge::default(),
            attached_cgroups: Gauge::default(),
            attach_errors: Counter::default(),
            kernel_excluded: Gauge::default(),
            sampling_permitted: Gauge::default(),
            symbols_cached: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("samples", "Samples taken, by attribution", m.samples.clone());
        registry.register(
            "unattributed_samples",
            "Samples the channel could not attribute (unknown or no channel): whole-process only",
            m.unattributed.clone(),
        );
        registry.register(
            "metrics_listen_failures",
            "The metrics address could not be bound; sampling went on without /metrics",
            m.metrics_listen_failures.clone(),
        );
        registry.register(
            "lost_records",
            "Records the kernel dropped because a ring buffer was full",
            m.lost_records.clone(),
        );
        registry.register("throttled", "Throttle records (the kernel lowered the sampling rate)", m.throttled.clone());
        registry.register(
            "unwind_failures",
            "Samples whose stack could not be unwound beyond the leaf",
            m.unwind_failures.clone(),
        );
        registry.register(
            "unwind_truncated",
            "Samples whose unwind stopped before the stack's end (stack copy too small, no unwind info)",
            m.unwind_truncated.clone(),
        );
        registry.register(
            "malformed_records",
            "Ring-buffer runs that could not be parsed",
            m.malformed_records.clone(),
        );
        registry.register("uploads", "Uploads accepted by the server", m.uploads.clone());
        registry.register("push_errors", "Failed upload attempts (retried while buffered)", m.push_errors.clone());
        registry.register(
            "dropped_bytes",
            "Upload bytes dropped (oldest first) to stay within the buffer limit, or rejected",
            m.dropped_bytes.clone(),
        );
        registry.register(
            "dropped_uploads",
            "Uploads dropped (buffer full, rejected by the server, or pipeline full)",
            m.dropped_uploads.clone(),
        );
        registry.register("buffered_bytes", "Upload bytes waiting to be pushed", m.buffered_bytes.clone());
        registry.register(
            "attached_threads",
            "Threads sampled through events of their own (per-thread scope)",
            m.attached_threads.clone(),
        );
        registry.register(
            "attached_cgroups",
            "Cgroups (containers) sampled as a whole, with one event per CPU",
            m.attached_cgroups.clone(),
        );
        registry.register("attached_processes", "Processes sampled", m.attached_processes.clone());
        registry.register("attach_errors", "perf_event_open failures on a target thread", m.attach_errors.clone());
        registry.register("sampling_permitted", "1 once perf events could be opened; 0 while they are not permitted (the sidecar stays up and retries every minute)", m.sampling_permitted.clone());
        registry.register(
            "kernel_samples_excluded",
            "1 when kernel-mode samples are excluded (no CAP_PERFMON): time in the kernel is not sampled",
            m.kernel_excluded.clone(),
        );
        registry.register("symbols_cached", "Symbolized addresses in the cache", m.symbols_cached.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a sample under its attribution (`span`, `no_span`, `unknown`, `no_channel`).
    pub fn sample(&self, attribution: &'static str) {
        // One sample at a time from the sampling thread: remember the four counters rather than
        // building a label and hashing it into the family for every sample.
        let cached = self.by_attribution.iter().find(|(a, _)| *a == attribution);
        match cached {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                self.samples.get_or_create(&AttributionLabel { attribution: attribution.to_owned() }).inc();
            }
        }
    }

    /// The sampling loop is alive (called once per round, at least every second).
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        self.heartbeat_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago the sampling loop last went round; `None` before it started.
    pub fn since_beat(&self) -> Option<std::time::Duration> {
        let ms = self.heartbeat_ms.load(std::sync::atomic::Ordering::Relaxed);
        (ms > 0).then(|| self.started.elapsed().saturating_sub(std::time::Duration::from_millis(ms)))
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_counters() {
        let m = super::Metrics::default();
        m.sample("span");
        m.lost_records.inc_by(3);
        let text = m.render();
        assert!(text.contains("spanprof_sidecar_samples_total{attribution=\"span\"} 1"), "{text}");
        assert!(text.contains("spanprof_sidecar_lost_records_total 3"));
        assert!(text.contains("spanprof_sidecar_attached_threads 0"));
    }
}
