//! Real Node.js profiles, captured by the test itself: `tests/clients/node/profile.js` runs
//! `@datadog/pprof` (the profiler Grafana's Pyroscope Node.js client wraps) on work labelled the
//! way that client labels spans, and the profiles are uploaded as that client uploads them
//! (multipart `/ingest`, the application name without a profile type). Totals are checked
//! against the profiles' own sample values. `scripts/test` installs the package (npm ci).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// Samples a CPU-time value makes at the profile's period: rounded, a positive value at least one.
fn samples_of(cpu_ns: i64, period_ns: i64) -> u64 {
    if cpu_ns <= 0 {
        return 0;
    }
    (((cpu_ns + period_ns / 2) / period_ns) as u64).max(1)
}

#[tokio::test]
async fn node_wall_cpu_and_heap_profiles_are_typed_and_split_by_profile_id_with_exact_totals() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let client = root.join("tests/clients/node");
    assert!(
        client.join("node_modules/@datadog/pprof").exists(),
        "{} has no node_modules: run scripts/test (it runs npm ci there)",
        client.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new("node").arg(client.join("profile.js")).arg(dir.path()).output().expect("running node");
    assert!(run.status.success(), "profile.js failed: {}", String::from_utf8_lossy(&run.stderr));
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let (cpu, wall, heap) = (read("cpu.pb.gz"), read("wall.pb.gz"), read("heap.pb.gz"));

    // What the CPU profile itself says, per label group, in samples of its period.
    let p = gunzip_pprof(&cpu);
    let cpu_index = sample_type_index(&p, "cpu", "nanoseconds").expect("a profile with CPU time");
    let (mut in_span, mut named, mut outside) = (0u64, 0u64, 0u64);
    for s in &p.sample {
        let n = samples_of(s.value[cpu_index], p.period);
        match (sample_label(&p, s, "span_id"), sample_label(&p, s, "profile_id")) {
            (Some("00f067aa0ba902b7"), _) => in_span += n,
            (_, Some("checkout-42")) => named += n,
            _ => outside += n,
        }
    }
    assert!(in_span > 10 && named > 10 && outside > 0, "the work was sampled: {in_span}, {named}, {outside}");

    let srv = TestServer::start(config(dir.path().join("data").as_path())).await;
    let query = "name=nodesvc&spyName=nodespy&sampleRate=100";
    for profile in [&cpu, &wall, &heap] {
        let r = ingest_multipart(&srv.base, query, profile).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    // The CPU time of each span, from the wall profile's CPU values.
    let (status, span) = get_json(&srv.url("/api/v1/profiles/00f067aa0ba902b7")).await;
    assert_eq!(status, 200, "{span}");
    assert_eq!(
        (span["profile"]["samples"].as_u64(), span["profile"]["span_name"].as_str()),
        (Some(in_span), Some("Checkout"))
    );
    assert!(find(&span["flamegraph"], "checkoutWork").is_some(), "{}", span["flamegraph"]);
    let (status, by_name) = get_json(&srv.url("/api/v1/profiles/checkout-42")).await;
    assert_eq!(status, 200, "{by_name}");
    assert_eq!(by_name["profile"]["samples"], named);
    assert!(find(&by_name["flamegraph"], "batchWork").is_some());
    let (_, listed) = get_json(&srv.url("/api/v1/profiles?service=nodesvc")).await;
    assert_eq!(listed["profiles"].as_array().unwrap().len(), 2, "only the CPU profile makes span profiles: {listed}");
    let (_, whole) = get_json(&srv.url("/api/v1/services/nodesvc/profile?from=now-1h&spans=outside")).await;
    assert_eq!(whole["samples"], outside, "{whole}");
    let (_, all) = get_json(&srv.url("/api/v1/services/nodesvc/profile?from=now-1h")).await;
    assert_eq!(all["samples"], in_span + named + outside, "all of the service's CPU, inside spans and out");

    // The wall-only profile is a wall profile, not CPU; the heap profile is memory.
    let w = gunzip_pprof(&wall);
    assert!(sample_type_index(&w, "cpu", "nanoseconds").is_none());
    // V8 says `sample`, the Pyroscope client renames it `samples`: both are taken.
    let wall_index = sample_type_index(&w, "sample", "count").expect("wall samples");
    let wall_samples: i64 = w.sample.iter().map(|s| s.value[wall_index]).filter(|&v| v > 0).sum();
    let (status, wall_json) = get_json(&srv.url("/api/v1/services/nodesvc/profile?from=now-1h&type=wall")).await;
    assert_eq!(status, 200, "{wall_json}");
    assert_eq!(wall_json["samples"], wall_samples);
    let h = gunzip_pprof(&heap);
    let objects_index = sample_type_index(&h, "inuse_objects", "count").expect("V8 heap objects");
    let default = &h.string_table[h.default_sample_type as usize];
    let index = if default.is_empty() {
        0
    } else {
        h.sample_type.iter().position(|t| &h.string_table[t.r#type as usize] == default).unwrap()
    };
    assert_eq!(index, objects_index, "the value spanprof stores");
    let objects: i64 = h.sample.iter().map(|s| s.value[index]).filter(|&v| v > 0).sum();
    let (status, mem) = get_json(&srv.url("/api/v1/services/nodesvc/profile?from=now-1h&type=memory")).await;
    assert_eq!(status, 200, "{mem}");
    assert_eq!(mem["samples"], objects);
    assert!(find(&mem["flamegraph"], "allocate").is_some(), "{}", mem["flamegraph"]);
    srv.stop().await;
}
