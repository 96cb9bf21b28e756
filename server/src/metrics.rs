//! Prometheus metrics of the server, rendered on `/metrics` in the OpenMetrics text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use spanprof_cli::metrics::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelLabel {
    pub label: String,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub ingest_requests: Family<ProtocolLabel, Counter>,
    pub ingested_samples: Counter,
    pub span_profiles: Family<ResultLabel, Counter>,
    pub rejected_requests: Family<ReasonLabel, Counter>,
    /// Samples kept without a label ingest could not use, by label.
    pub ingest_dropped_labels: Family<LabelLabel, Counter>,
    pub query_duration: Family<EndpointLabel, Histogram>,
    pub retention_deleted: Family<KindLabel, Counter>,
    pub store_file_bytes: Gauge,
    pub store_record_bytes: Gauge,
    pub store_interned_bytes: Gauge,
    pub store_span_profiles: Gauge,
    /// Inserts the store failed (full disk, I/O errors): nothing of them was stored.
    pub store_write_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::new("server");
        let query_duration: Family<EndpointLabel, Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14)));
        Metrics {
            ingest_requests: r.counters("ingest_requests", "Ingest requests accepted, by protocol"),
            ingested_samples: r.counter("ingested_samples", "Samples stored"),
            store_write_failures: r.counter(
                "store_write_failures",
                "Inserts the store failed (full disk, I/O errors); nothing of them was stored",
            ),
            span_profiles: r.counters(
                "ingested_span_profiles",
                "Span profile writes, by result (created or merged into an existing profile)",
            ),
            rejected_requests: r.counters("rejected_requests", "Requests rejected, by reason"),
            ingest_dropped_labels: r.counters(
                "ingest_dropped_labels",
                "Samples stored without a label that was not usable (span_id: stored as whole-process; trace_id: in the span profile without the trace), by label",
            ),
            query_duration: r.add("query_duration_seconds", "Query API latency, by endpoint", query_duration),
            retention_deleted: r.counters(
                "retention_deleted",
                "Rows deleted by retention, by kind (span_profile, process_bucket; frame and stack: no longer referenced)",
            ),
            store_file_bytes: r
                .gauge("store_file_bytes", "Bytes the store's files occupy on disk (allocated blocks)"),
            store_record_bytes: r.gauge("store_record_bytes", "Bytes of stored profile records"),
            store_interned_bytes: r.gauge(
                "store_interned_bytes",
                "Bytes of interned frame names and stacks (counted by --retention-bytes with the records)",
            ),
            store_span_profiles: r.gauge("store_span_profiles", "Span profiles stored"),
            registry: r,
        }
    }
}

impl Metrics {
    /// Adds the object store's metrics (they count in `status`).
    pub fn register_bucket(&mut self, status: &crate::store::layered::BucketStatus) {
        let r = &mut self.registry;
        r.add(
            "bucket_degraded",
            "1 while the object store fails (uploads wait on local disk, queries may miss blocks)",
            status.degraded.clone(),
        );
        r.add("blocks_uploaded", "Blocks cut from the local store and uploaded", status.blocks_uploaded.clone());
        r.add("block_upload_failures", "Block uploads that failed (retried)", status.upload_failures.clone());
        r.add("blocks_compacted", "Blocks merged into larger ones by compaction", status.blocks_compacted.clone());
        r.add(
            "blocks_deleted",
            "Replaced blocks compaction deleted after their grace period",
            status.blocks_deleted.clone(),
        );
        r.add(
            "bucket_blocks",
            "Blocks in the object store that queries read, as last listed",
            status.bucket_blocks.clone(),
        );
        r.add(
            "bucket_block_bytes",
            "Data bytes of the blocks in the object store that queries read, as last listed",
            status.bucket_block_bytes.clone(),
        );
        r.add(
            "local_generations_sealed",
            "Local generations sealed and waiting to be uploaded as blocks (more than one: uploads fall behind or fail)",
            status.sealed_generations.clone(),
        );
        r.add(
            "peer_errors",
            "Calls to peers that failed (the answer missed their local data)",
            status.peer_errors.clone(),
        );
        r.add(
            "block_read_errors",
            "Blocks left out of an answer because they could not be read or failed a checksum",
            status.block_read_errors.clone(),
        );
    }

    pub fn reject(&self, reason: &str) {
        self.rejected_requests.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc();
    }

    pub fn observe_query(&self, endpoint: &str, seconds: f64) {
        self.query_duration.get_or_create(&EndpointLabel { endpoint: endpoint.to_owned() }).observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}
