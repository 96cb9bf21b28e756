//! A real profiler's profile, captured by the test itself: Go's `runtime/pprof` CPU profile of a
//! program that labels its work with `pprof.Do` (as Go services label requests), ingested as
//! Pyroscope's Go clients send it. Totals are checked against the profile's own sample values.
//! `scripts/test` installs Debian's golang-go.

mod common;

use std::io::Read;
use std::process::Command;

use common::*;
use prost::Message;
use spanprof_server::proto::pprof::Profile;

const PROGRAM: &str = r#"
package main

import (
	"context"
	"os"
	"runtime/pprof"
	"time"
)

var sink int

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

func main() {
	f, err := os.Create(os.Args[1])
	if err != nil {
		panic(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		panic(err)
	}
	ctx := context.Background()
	pprof.Do(ctx, pprof.Labels("span_id", "00f067aa0ba902b7", "span_name", "Checkout"), func(context.Context) { checkoutWork() })
	// A label value that is no span ID, as Go services set them.
	pprof.Do(ctx, pprof.Labels("span_id", "239"), func(context.Context) { batchWork() })
	backgroundWork()
	pprof.StopCPUProfile()
	f.Close()
}
"#;

/// The string value of a sample's label `key`, if any.
fn label<'a>(p: &'a Profile, sample: &spanprof_server::proto::pprof::Sample, key: &str) -> Option<&'a str> {
    sample
        .label
        .iter()
        .find(|l| p.string_table.get(l.key as usize).is_some_and(|k| k == key))
        .and_then(|l| p.string_table.get(l.str as usize))
        .map(String::as_str)
}

#[tokio::test]
async fn a_go_cpu_profile_with_pprof_labels_is_split_by_span_with_exact_totals() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("main.go");
    std::fs::write(&src, PROGRAM).unwrap();
    let out = dir.path().join("cpu.pb.gz");
    // The build cache outlives the test: the first run compiles runtime/pprof (tens of seconds).
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-build-cache");
    let run = Command::new("go")
        .arg("run")
        .arg(&src)
        .arg(&out)
        .env("HOME", dir.path())
        .env("GOCACHE", &cache)
        .output()
        .expect("`go` is not installed: run scripts/test (it installs Debian's golang-go)");
    assert!(run.status.success(), "go run failed: {}", String::from_utf8_lossy(&run.stderr));
    let gz = std::fs::read(&out).unwrap();

    // What the profile itself says: samples per label group (value 0 is samples/count).
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut raw).unwrap();
    let p = Profile::decode(raw.as_slice()).unwrap();
    assert_eq!(p.string_table[p.sample_type[0].r#type as usize], "samples");
    let (mut in_span, mut bad_label_entries, mut outside) = (0u64, 0u64, 0u64);
    for s in &p.sample {
        let n = s.value[0] as u64;
        match label(&p, s, "span_id") {
            Some("00f067aa0ba902b7") => in_span += n,
            Some("239") => {
                bad_label_entries += 1;
                outside += n;
            }
            _ => outside += n,
        }
    }
    assert!(in_span > 10, "the labelled work was sampled: {in_span} samples");
    assert!(bad_label_entries > 0, "the work labelled span_id=239 was sampled");

    let srv = TestServer::start(config(dir.path().join("data").as_path())).await;
    let r = reqwest::Client::new()
        .post(srv.url("/ingest?name=gosvc.cpu&format=pprof&spyName=gospy"))
        .body(gz)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["spanprof-dropped-labels"], format!("span_id={bad_label_entries}, trace_id=0").as_str());

    let (status, span) = get_json(&srv.url("/api/v1/profiles/00f067aa0ba902b7")).await;
    assert_eq!(status, 200, "{span}");
    assert_eq!(span["profile"]["samples"], in_span);
    assert_eq!(span["profile"]["span_name"], "Checkout");
    assert_eq!(span["profile"]["service_name"], "gosvc");
    assert!(find(&span["flamegraph"], "main.checkoutWork").is_some(), "{}", span["flamegraph"]);
    assert!(find(&span["flamegraph"], "main.batchWork").is_none());

    let (status, whole) = get_json(&srv.url("/api/v1/services/gosvc/profile?from=now-1h")).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["samples"], outside, "the samples with span_id=239 and the unlabelled ones");
    assert!(find(&whole["flamegraph"], "main.batchWork").is_some());
    srv.stop().await;
}
