//! Exports opened by the real tools of the field: `go tool pprof` reads the pprof export
//! (`scripts/test` installs Debian's golang-go for it).

mod common;

use std::process::Command;

use common::*;

fn go_pprof(args: &[&str], file: &std::path::Path, home: &std::path::Path) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .env("HOME", home)
        .env("PPROF_TMPDIR", home)
        .output()
        .expect("`go` is not installed: run scripts/test (it installs Debian's golang-go)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "go tool pprof failed: {stderr}");
    assert!(!stderr.contains("binary"), "pprof looked for a binary: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn pprof_exports_open_in_go_tool_pprof() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let span = &[("span_id", SPAN_A), ("trace_id", TRACE), ("span_name", "OrderVehicle")][..];
    let p = pprof(&[
        (&["main", "handle", "find_nearest_vehicle"], 40, span),
        (&["main", "handle", "check_driver_availability"], 3, span),
        (&["main", "idle"], 2, &[]),
    ]);
    assert_eq!(push(&srv.base, &push_request("ride", &p)).await.0, 200);

    for (path, expect_ms) in [
        (format!("/api/v1/profiles/{SPAN_A}?format=pprof"), "430ms"),
        (format!("/api/v1/traces/{TRACE}?format=pprof"), "430ms"),
        ("/api/v1/services/ride/profile?format=pprof&spans=outside".to_owned(), "20ms"),
        ("/api/v1/services/ride/profile?format=pprof".to_owned(), "450ms"),
    ] {
        let bytes = reqwest::get(srv.url(&path)).await.unwrap().bytes().await.unwrap();
        let file = dir.path().join("export.pb.gz");
        std::fs::write(&file, &bytes).unwrap();
        let top = go_pprof(&["-top"], &file, dir.path());
        assert!(top.contains(&format!("of {expect_ms} total")), "{path}:\n{top}");
        if expect_ms == "430ms" {
            let line = top.lines().find(|l| l.contains("find_nearest_vehicle")).unwrap_or_default();
            assert!(line.trim_start().starts_with("400ms"), "{path}: flat time of find_nearest_vehicle:\n{top}");
        }
    }
    let bytes =
        reqwest::get(srv.url(&format!("/api/v1/profiles/{SPAN_A}?format=pprof"))).await.unwrap().bytes().await.unwrap();
    let file = dir.path().join("span.pb.gz");
    std::fs::write(&file, &bytes).unwrap();
    let tags = go_pprof(&["-tags"], &file, dir.path());
    assert!(tags.contains(SPAN_A) && tags.contains(TRACE) && tags.contains("OrderVehicle"), "{tags}");
    srv.stop().await;
}
