//! The webhook's input: an AdmissionReview body, decided against a SpanProfiling whose spec is
//! also fuzzed (the CRD spec → injection path). The first line is the spec's JSON.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use spanprof_operator::crd::SpanProfiling;
use spanprof_operator::inject::Defaults;
use spanprof_operator::pod_security::Level;
use spanprof_operator::webhook;

fuzz_target!(|data: &[u8]| {
    let (spec, review) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"{}"[..], data),
    };
    let defaults = Defaults {
        server_url: "http://spanprof-server.spanprof.svc:4040".into(),
        sidecar_image: "ghcr.io/spanprof/spanprof-sidecar:0.1.0".into(),
        operator_namespace: "spanprof".into(),
        pod_security_default: Level::Privileged,
    };
    let mut profilings = Vec::new();
    if let Ok(spec) = serde_json::from_slice(spec) {
        let mut sp = SpanProfiling::new("default", spec);
        sp.metadata.namespace = Some("default".into());
        profilings.push(Arc::new(sp));
    }
    let _ = webhook::review(review, Some(&profilings), |_| Level::Baseline, &defaults);
});
