//! The real binary: what was answered 2xx survives `kill -9` and a restart; SIGTERM shuts down
//! cleanly; retention deletes old profiles in the background.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn acknowledged_pushes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = ServerProcess::spawn(dir.path(), &[], &[]).await;
    let mut acked = 0u64;
    for i in 0..40i64 {
        let p = pprof(&[
            (&["main", "handle", "find_nearest_vehicle"], 1 + i % 3, &[("span_id", SPAN_A), ("trace_id", TRACE)]),
            (&["main", "bg"], 1, &[]),
        ]);
        let (status, _) = push(&srv.base, &push_request("ride", &p)).await;
        assert_eq!(status, 200);
        acked += (1 + i % 3) as u64;
    }
    srv.child.kill().unwrap(); // SIGKILL: no shutdown path runs
    srv.child.wait().unwrap();
    assert!(dir.path().join("spanprof.fjall").is_dir(), "the store is in the data directory");

    let mut srv = ServerProcess::spawn(dir.path(), &[], &[]).await;
    let (status, body) = get_json(&format!("{}/api/v1/profiles/{SPAN_A}", srv.base)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["profile"]["samples"], acked);
    let (_, body) = get_json(&format!("{}/api/v1/services/ride/profile?from=now-1h&spans=outside", srv.base)).await;
    assert_eq!(body["samples"], 40);
    let (_, body) = get_json(&format!("{}/api/v1/services/ride/profile?from=now-1h", srv.base)).await;
    assert_eq!(body["samples"], 40 + acked, "the service's CPU inside spans and out");

    // Merging continues on the recovered store.
    let p = pprof(&[(&["main", "handle", "find_nearest_vehicle"], 5, &[("span_id", SPAN_A)])]);
    assert_eq!(push(&srv.base, &push_request("ride", &p)).await.0, 200);
    let (_, body) = get_json(&format!("{}/api/v1/profiles/{SPAN_A}", srv.base)).await;
    assert_eq!(body["profile"]["samples"], acked + 5);

    // SIGTERM: graceful shutdown, exit status 0.
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exited with {status}");
}

#[tokio::test]
async fn retention_deletes_profiles_older_than_the_age_limit() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--retention-age", "1h", "--retention-interval", "1s"];
    let mut srv = ServerProcess::spawn(dir.path(), &args, &[]).await;
    let client = reqwest::Client::new();
    // One profile from two days ago, one from now.
    let old_s = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 2 * 86_400)
        .to_string();
    let url = format!("{}/ingest?name=ride.cpu%7Bspan_id%3D{SPAN_A}%7D&from={old_s}&until={old_s}", srv.base);
    assert_eq!(client.post(url).body("main;old 3\n").send().await.unwrap().status(), 200);
    let url = format!("{}/ingest?name=ride.cpu&from={old_s}&until={old_s}", srv.base);
    assert_eq!(client.post(url).body("main;old_process 3\n").send().await.unwrap().status(), 200);
    let url = format!("{}/ingest?name=ride.cpu%7Bspan_id%3D{SPAN_B}%7D", srv.base);
    assert_eq!(client.post(url).body("main;new 3\n").send().await.unwrap().status(), 200);

    let mut deleted = false;
    for _ in 0..100 {
        let (status, _) = get_json(&format!("{}/api/v1/profiles/{SPAN_A}", srv.base)).await;
        if status == 404 {
            deleted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(deleted, "the two-day-old profile was not deleted");
    let (status, _) = get_json(&format!("{}/api/v1/profiles/{SPAN_B}", srv.base)).await;
    assert_eq!(status, 200, "a fresh profile was deleted");
    // The old whole-process bucket and the old span's rollup bucket: a retention pass may run
    // between the pushes above, so the second can go one pass later.
    let want_buckets = "spanprof_server_retention_deleted_total{kind=\"process_bucket\"} 2";
    let mut m = String::new();
    for _ in 0..100 {
        m = reqwest::get(format!("{}/metrics", srv.base)).await.unwrap().text().await.unwrap();
        if m.contains(want_buckets) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(m.contains("spanprof_server_retention_deleted_total{kind=\"span_profile\"} 1"), "{m}");
    assert!(m.contains(want_buckets), "{m}");
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
}

/// A small tmpfs for a data directory, unmounted when dropped (needs root, as CI has).
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs failed: this test runs as root (scripts/test in CI is)");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_writes_resume_when_space_returns() {
    let disk = SmallDisk::new("8m");
    // Space another tenant of the volume holds, freed later.
    let filler = disk.0.path().join("filler");
    std::fs::write(&filler, vec![7u8; 2 << 20]).unwrap();
    let data = disk.0.path().join("data");
    let srv = TestServer::start(config(&data)).await;
    // Distinct, large frame names fill the disk quickly.
    let mut last = (200, String::new());
    let mut stored = 0;
    for round in 0..400 {
        let names: Vec<String> = (0..64).map(|i| format!("f{round}_{i}_{}", "x".repeat(2000))).collect();
        let frames: Vec<&str> = names.iter().map(String::as_str).collect();
        let span = format!("{:016x}", round + 1);
        let profile = pprof(&[(&frames, 1, &[("span_id", span.as_str())])]);
        last = push(&srv.url(""), &push_request("ride", &profile)).await;
        if last.0 != 200 {
            break;
        }
        stored += 1;
    }
    let (status, body) = last;
    assert_ne!(status, 200, "8 MiB never filled");
    assert!(stored > 0, "the first pushes fit: {body}");
    assert_eq!(status, 507, "a full disk is 507 Insufficient Storage: {body}");
    assert!(body.contains("disk is full"), "the message says what happened: {body}");
    let r = reqwest::get(srv.url("/readyz")).await.unwrap();
    let (code, text) = (r.status().as_u16(), r.text().await.unwrap());
    assert_eq!(code, 503, "writes fail, so not ready: {text}");
    assert!(text.contains("disk is full"), "{text}");
    // Not a reason to restart (that would only take reads down too), and reads still work.
    assert_eq!(reqwest::get(srv.url("/healthz")).await.unwrap().status().as_u16(), 200);
    for round in 0..stored {
        let (code, _) = get_json(&srv.url(&format!("/api/v1/profiles/{:016x}", round + 1))).await;
        assert_eq!(code, 200, "acknowledged profile {} is readable", round + 1);
    }
    let metrics = reqwest::get(srv.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("spanprof_server_store_write_failures_total"), "counted");

    // Space returns: ready again and writes go through, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let r = reqwest::get(srv.url("/readyz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "ready once space is back: {}", r.text().await.unwrap());
    let profile = pprof(&[(&["main", "work"], 3, &[("span_id", "00000000000fffff")])]);
    let (code, body) = push(&srv.url(""), &push_request("ride", &profile)).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = get_json(&srv.url("/api/v1/profiles/00000000000fffff")).await;
    assert_eq!(code, 200);
}
