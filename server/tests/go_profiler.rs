//! A real profiler's profiles, captured by the test itself: Go's `runtime/pprof` CPU profile of
//! a program that labels its work with `pprof.Do` (as Go services label requests: a span ID, a
//! string profile ID, an unusable ID) and its heap profile, ingested as Pyroscope's Go clients
//! send them. Totals are checked against the profiles' own sample values.
//! `scripts/test` installs Debian's golang-go.

mod common;

use std::process::Command;

use common::*;

const PROGRAM: &str = r#"
package main

import (
	"context"
	"os"
	"runtime"
	"runtime/pprof"
	"time"
)

var sink int
var kept [][]byte

//go:noinline
func burn(d time.Duration) {
	end := time.Now().Add(d)
	x := 0
	for time.Now().Before(end) {
		for i := 0; i < 10000; i++ {
			x += i * i
		}
	}
	sink += x
}

//go:noinline
func checkoutWork() { burn(700 * time.Millisecond) }

//go:noinline
func batchWork() { burn(400 * time.Millisecond) }

//go:noinline
func backgroundWork() { burn(300 * time.Millisecond) }

//go:noinline
func unlabelledWork() { burn(200 * time.Millisecond) }

//go:noinline
func allocate() {
	for i := 0; i < 2000; i++ {
		kept = append(kept, make([]byte, 4096))
	}
}

func main() {
	f, err := os.Create(os.Args[1])
	if err != nil {
		panic(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		panic(err)
	}
	runtime.MemProfileRate = 4096
	ctx := context.Background()
	pprof.Do(ctx, pprof.Labels("span_id", "00f067aa0ba902b7", "span_name", "Checkout"), func(context.Context) { checkoutWork() })
	// A profile ID of the user's choosing, as Pyroscope lets Go services set them.
	pprof.Do(ctx, pprof.Labels("profile_id", "checkout-42", "span_name", "Batch"), func(context.Context) { batchWork() })
	// A span_id label that is no ID (the all-zero span ID): its samples stay whole-process.
	pprof.Do(ctx, pprof.Labels("span_id", "0000000000000000"), func(context.Context) { unlabelledWork() })
	backgroundWork()
	allocate()
	pprof.StopCPUProfile()
	f.Close()
	h, err := os.Create(os.Args[2])
	if err != nil {
		panic(err)
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(h); err != nil {
		panic(err)
	}
	h.Close()
}
"#;

#[tokio::test]
async fn go_cpu_and_heap_profiles_with_pprof_labels_are_split_by_profile_id_with_exact_totals() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("main.go");
    std::fs::write(&src, PROGRAM).unwrap();
    let (cpu_out, heap_out) = (dir.path().join("cpu.pb.gz"), dir.path().join("heap.pb.gz"));
    // The build cache outlives the test: the first run compiles runtime/pprof (tens of seconds).
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-build-cache");
    let run = Command::new("go")
        .arg("run")
        .arg(&src)
        .arg(&cpu_out)
        .arg(&heap_out)
        .env("HOME", dir.path())
        .env("GOCACHE", &cache)
        .output()
        .expect("`go` is not installed: run scripts/test (it installs Debian's golang-go)");
    assert!(run.status.success(), "go run failed: {}", String::from_utf8_lossy(&run.stderr));
    let cpu = std::fs::read(&cpu_out).unwrap();
    let heap = std::fs::read(&heap_out).unwrap();

    // What the profile itself says: samples per label group (value 0 is samples/count).
    let p = gunzip_pprof(&cpu);
    assert_eq!(p.string_table[p.sample_type[0].r#type as usize], "samples");
    let (mut in_span, mut named, mut bad_label_entries, mut outside) = (0u64, 0u64, 0u64, 0u64);
    for s in &p.sample {
        let n = s.value[0] as u64;
        match (sample_label(&p, s, "span_id"), sample_label(&p, s, "profile_id")) {
            (Some("00f067aa0ba902b7"), _) => in_span += n,
            (_, Some("checkout-42")) => named += n,
            (Some("0000000000000000"), _) => {
                bad_label_entries += 1;
                outside += n;
            }
            _ => outside += n,
        }
    }
    assert!(in_span > 10 && named > 10, "the labelled work was sampled: {in_span} and {named} samples");
    assert!(bad_label_entries > 0, "the work labelled with the all-zero span ID was sampled");

    // The same profile pushed twice: profiles with the same ID merge upon insert.
    let srv = TestServer::start(config(dir.path().join("data").as_path())).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let r = client
            .post(srv.url("/ingest?name=gosvc.cpu&format=pprof&spyName=gospy"))
            .body(cpu.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["spanprof-dropped-labels"], format!("span_id={bad_label_entries}, trace_id=0").as_str());
    }

    let (status, span) = get_json(&srv.url("/api/v1/profiles/00f067aa0ba902b7")).await;
    assert_eq!(status, 200, "{span}");
    assert_eq!(span["profile"]["samples"], 2 * in_span);
    assert_eq!(span["profile"]["span_name"], "Checkout");
    assert_eq!(span["profile"]["service_name"], "gosvc");
    assert!(find(&span["flamegraph"], "main.checkoutWork").is_some(), "{}", span["flamegraph"]);
    assert!(find(&span["flamegraph"], "main.batchWork").is_none());

    let (status, by_name) = get_json(&srv.url("/api/v1/profiles/checkout-42")).await;
    assert_eq!(status, 200, "{by_name}");
    assert_eq!(by_name["profile"]["profile_id"], "checkout-42");
    assert_eq!(by_name["profile"]["samples"], 2 * named);
    assert_eq!(by_name["profile"]["span_name"], "Batch");
    assert!(find(&by_name["flamegraph"], "main.batchWork").is_some());
    assert!(find(&by_name["flamegraph"], "main.checkoutWork").is_none());
    let (_, listed) = get_json(&srv.url("/api/v1/profiles?service=gosvc")).await;
    let ids: Vec<&str> =
        listed["profiles"].as_array().unwrap().iter().map(|p| p["profile_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{listed}");
    assert!(ids.contains(&"checkout-42") && ids.contains(&"00f067aa0ba902b7"), "{listed}");

    let (status, whole) = get_json(&srv.url("/api/v1/services/gosvc/profile?from=now-1h&spans=outside")).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["samples"], 2 * outside, "the samples with the all-zero span ID and the unlabelled ones");
    let (_, all) = get_json(&srv.url("/api/v1/services/gosvc/profile?from=now-1h")).await;
    assert_eq!(all["samples"], 2 * (in_span + named + outside), "all of the service's CPU, inside spans and out");
    assert!(find(&whole["flamegraph"], "main.unlabelledWork").is_some());

    // The heap profile: a whole-process memory profile, its default sample type's values exact.
    let h = gunzip_pprof(&heap);
    let types: Vec<&str> = h.sample_type.iter().map(|t| h.string_table[t.r#type as usize].as_str()).collect();
    let default = &h.string_table[h.default_sample_type as usize];
    let index = types.iter().position(|t| t == default).unwrap_or(0);
    let expected: i64 = h.sample.iter().map(|s| s.value[index]).filter(|&v| v > 0).sum();
    assert!(expected > 0, "the heap profile has {types:?} values");
    let r = client
        .post(srv.url("/ingest?name=gosvc.alloc_space&format=pprof&spyName=gospy"))
        .body(heap)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, mem) = get_json(&srv.url("/api/v1/services/gosvc/profile?from=now-1h&type=memory")).await;
    assert_eq!(status, 200, "{mem}");
    assert_eq!(mem["samples"], expected as u64, "{types:?}, default {default:?}");
    assert!(find(&mem["flamegraph"], "main.allocate").is_some(), "{}", mem["flamegraph"]);
    srv.stop().await;
}
