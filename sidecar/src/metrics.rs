//! Prometheus metrics of the sidecar, served on `/metrics` (OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use spanprof_cli::metrics::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    /// `cgroup_v2`, `cgroup_v1` or `thread`.
    pub scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttributionLabel {
    /// `span`, `no_span`, `unknown` (channel could not tell), `late` (the thread's span history
    /// was overwritten before the sample was joined), `no_channel` (process has none).
    pub attribution: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleCacheLabel {
    /// `hit`, `miss_stale` (the modules were reloaded since) or `miss` (new address or slot taken).
    pub result: String,
}

/// Every metric the sidecar exports (prefix `spanprof_sidecar_`).
pub struct Metrics {
    registry: Registry,
    pub samples: Family<AttributionLabel, Counter>,
    /// The `samples` counters of the usual attributions.
    by_attribution: [(&'static str, Counter); 5],
    pub unattributed: Counter,
    pub lost_records: Counter,
    pub throttled: Counter,
    pub unwind_failures: Counter,
    pub unwind_truncated: Counter,
    pub malformed_records: Counter,
    /// Unwind-rule cache lookups: `[hit, miss_stale, miss]`.
    pub rule_cache: [Counter; 3],
    /// A process's mappings read again (they changed, or an address fell outside every module).
    pub module_reloads: Counter,
    pub uploads: Counter,
    pub push_errors: Counter,
    pub dropped_bytes: Counter,
    pub dropped_uploads: Counter,
    pub buffered_bytes: Gauge,
    pub attached_threads: Gauge,
    pub attached_processes: Gauge,
    pub attached_cgroups: Gauge,
    /// Processes sampled, by how: per cgroup (v2 or v1 hierarchy) or per thread.
    pub scope_processes: Family<ScopeLabel, Gauge>,
    pub attach_errors: Counter,
    pub kernel_excluded: Gauge,
    /// Bytes of perf ring buffer mapped, all CPUs together.
    pub ring_bytes: Gauge,
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
        let mut r = Registry::new("sidecar");
        let samples: Family<AttributionLabel, Counter> = r.counters("samples", "Samples taken, by attribution");
        let by_attribution = ["span", "no_span", "unknown", "late", "no_channel"].map(|a| {
            let label = AttributionLabel { attribution: a.to_owned() };
            (a, samples.get_or_create(&label).clone())
        });
        let rule_cache: Family<RuleCacheLabel, Counter> = r.counters(
            "unwind_rule_cache_lookups",
            "Unwind-rule cache lookups per frame: hit, miss (DWARF CFI evaluated for a new address or a taken slot), miss_stale (the process's modules were reloaded since)",
        );
        let rule_cache = ["hit", "miss_stale", "miss"]
            .map(|r| rule_cache.get_or_create(&RuleCacheLabel { result: r.to_owned() }).clone());
        Metrics {
            samples,
            rule_cache,
            module_reloads: r.counter(
                "module_reloads",
                "Times a process's mappings were read again (they changed, or an address fell outside every known module)",
            ),
            by_attribution,
            unattributed: r.counter(
                "unattributed_samples",
                "Samples the channel could not attribute (unknown, late or no channel): whole-process only",
            ),
            metrics_listen_failures: r.counter(
                "metrics_listen_failures",
                "The metrics address could not be bound; sampling went on without /metrics",
            ),
            lost_records: r.counter("lost_records", "Records the kernel dropped because a ring buffer was full"),
            throttled: r.counter("throttled", "Throttle records (the kernel lowered the sampling rate)"),
            unwind_failures: r.counter("unwind_failures", "Samples whose stack could not be unwound beyond the leaf"),
            unwind_truncated: r.counter(
                "unwind_truncated",
                "Samples whose unwind stopped before the stack's end (stack copy too small, no unwind info)",
            ),
            malformed_records: r.counter("malformed_records", "Ring-buffer runs that could not be parsed"),
            uploads: r.counter("uploads", "Uploads accepted by the server"),
            push_errors: r.counter("push_errors", "Failed upload attempts (retried while buffered)"),
            dropped_bytes: r.counter(
                "dropped_bytes",
                "Upload bytes dropped (oldest first) to stay within the buffer limit, or rejected",
            ),
            dropped_uploads: r.counter(
                "dropped_uploads",
                "Uploads dropped (buffer full, rejected by the server, or pipeline full)",
            ),
            buffered_bytes: r.gauge("buffered_bytes", "Upload bytes waiting to be pushed"),
            attached_threads: r
                .gauge("attached_threads", "Threads sampled through events of their own (per-thread scope)"),
            attached_cgroups: r
                .gauge("attached_cgroups", "Cgroups (containers) sampled as a whole, with one event per CPU"),
            attached_processes: r.gauge("attached_processes", "Processes sampled"),
            scope_processes: r.add(
                "sampling_scope_processes",
                "Processes sampled, by scope: their cgroup as a whole through the v2 or the v1 perf_event hierarchy (cgroup_v2, cgroup_v1), or events on each thread (thread)",
                Family::default(),
            ),
            attach_errors: r.counter("attach_errors", "perf_event_open failures on a target thread"),
            sampling_permitted: r.gauge(
                "sampling_permitted",
                "1 once perf events could be opened; 0 while they are not permitted (the sidecar stays up and retries every minute)",
            ),
            kernel_excluded: r.gauge(
                "kernel_samples_excluded",
                "1 when kernel-mode samples are excluded (no CAP_PERFMON): time in the kernel is not sampled",
            ),
            symbols_cached: r.gauge("symbols_cached", "Return addresses and functions the symbolizer has named (its name cache)"),
            ring_bytes: r.gauge(
                "ring_bytes",
                "Bytes of perf ring buffer mapped for all CPUs together (locked kernel memory, not counted in RSS)",
            ),
            heartbeat_ms: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
            registry: r,
        }
    }
}

impl Metrics {
    /// Counts a sample under its attribution (`span`, `no_span`, `unknown`, `late`, `no_channel`).
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

    /// Sets how many processes are sampled with `scope` (`cgroup_v2`, `cgroup_v1`, `thread`).
    pub fn set_scope_processes(&self, scope: &str, n: i64) {
        self.scope_processes.get_or_create(&ScopeLabel { scope: scope.to_owned() }).set(n);
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

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
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
