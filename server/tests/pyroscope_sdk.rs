//! A real third-party client: Grafana's Python SDK (pyroscope-io, which embeds pyroscope-rs, with
//! pyroscope-otel for span profiles) pushes to spanprof-server with the Connect push API: span
//! profiles, and work labelled with a profile ID of its own (tag_wrapper) merged over several
//! uploads.
//! `scripts/test` installs the client into `target/test-venv` from `tests/clients/requirements.txt`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

#[tokio::test]
async fn pyroscope_python_sdk_span_profiles_land_and_merge() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join("target/test-venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/test (it installs the Pyroscope client)", python.display());
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;

    let base = srv.base.clone();
    let script = root.join("tests/clients/pyroscope_otel_app.py");
    // The SDK uploads every 10 s and once more on shutdown.
    let out = tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(base).arg("12").output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    let spans: Vec<(&str, &str)> =
        stdout.lines().filter(|l| !l.starts_with("profile ")).filter_map(|l| l.split_once(' ')).collect();
    assert!(spans.len() > 20, "the client ran too few spans: {stdout}");

    let (_, services) = get_json(&srv.url("/api/v1/services")).await;
    assert_eq!(services["services"], serde_json::json!(["pyride"]));

    // Spans of ~100 ms of CPU each: nearly all have samples, with the hot function in them.
    let mut found = 0;
    let mut hot = 0;
    let mut samples = 0;
    let mut with_trace = 0;
    for (span_id, trace_id) in &spans {
        let (status, body) = get_json(&srv.url(&format!("/api/v1/profiles/{span_id}"))).await;
        if status != 200 {
            continue;
        }
        found += 1;
        samples += body["profile"]["samples"].as_u64().unwrap();
        // pyroscope-otel tags a thread with span_id, then span_name, then trace_id, one call
        // after another: a sample taken in between has the span ID alone, and a span whose few
        // samples all fell there has no trace or name. Where there is one, it is the span's.
        if !body["profile"]["trace_id"].is_null() {
            assert_eq!(body["profile"]["trace_id"], *trace_id);
            with_trace += 1;
        }
        assert!(["OrderVehicle", ""].contains(&body["profile"]["span_name"].as_str().unwrap()), "{body}");
        assert_eq!(body["profile"]["labels"]["region"], "eu");
        // A span's few samples may all fall into the SDK's own span bookkeeping on a busy machine.
        hot += usize::from(find(&body["flamegraph"], "find_nearest_vehicle").is_some());
    }
    assert!(found * 10 >= spans.len() * 7, "only {found} of {} spans have a profile", spans.len());
    assert!(with_trace * 10 >= found * 9, "only {with_trace} of {found} span profiles have their trace ID");
    assert!(hot * 10 >= found * 8, "only {hot} of {found} span profiles show find_nearest_vehicle");
    // The app spends nearly all its CPU inside spans: most samples must be span samples.
    let (status, body) = get_json(&srv.url("/api/v1/services/pyride/profile?spans=outside")).await;
    assert_eq!(status, 200, "{body}");
    let outside = body["samples"].as_u64().unwrap();
    assert!(samples >= 2 * outside, "{samples} samples in span profiles, {outside} outside spans");
    let (_, inside) = get_json(&srv.url("/api/v1/services/pyride/profile?spans=inside")).await;
    // The span rollups hold every span sample (these spans' and the batch profile's below).
    assert!(inside["samples"].as_u64().unwrap() >= samples, "{samples} in the spans listed: {inside}");

    // Work labelled with a profile ID of the app's choosing, over several uploads: one profile,
    // merged upon insert, holding about the CPU time the app measured for it.
    let batch = stdout.lines().find_map(|l| l.strip_prefix("profile ")).expect("the client printed its batch profile");
    let (id, cpu_ms) = batch.split_once(' ').unwrap();
    let cpu_ms: f64 = cpu_ms.parse().unwrap();
    let (status, body) = get_json(&srv.url(&format!("/api/v1/profiles/{id}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["profile"]["profile_id"], "nightly batch/42");
    let stored_ms = body["profile"]["cpu_ns"].as_f64().unwrap() / 1e6;
    assert!(
        (stored_ms - cpu_ms).abs() <= cpu_ms * 0.35 + 50.0,
        "stored {stored_ms} ms of CPU, the app measured {cpu_ms} ms"
    );
    assert!(find(&body["flamegraph"], "find_nearest_vehicle").is_some(), "{}", body["flamegraph"]);
    srv.stop().await;
}
