//! Replicas sharing an object store (`--object-store`, here `file://`; SeaweedFS's S3 in
//! `s3_blocks.rs`): each interval's data becomes a block, any replica answers from its local data
//! and every block with profiles of one ID merged, a graceful stop uploads the rest, and a
//! corrupt block is left out of answers (counted) instead of failing them; compaction merges
//! blocks into one and deletes them after a grace period, answers unchanged; retention deletes
//! whole blocks.

mod common;

use std::time::Duration;

use common::*;
use spanprof_server::BlockConfig;

/// A replica's config; `grace`: how old a block must be before compaction merges it, and how long
/// replaced blocks stay. Its local data becomes a block every [`INTERVAL`]: the pushes a test
/// makes right after the start all go into its first block.
fn replica(dir: &std::path::Path, bucket: &std::path::Path, name: &str, grace: Duration) -> spanprof_server::Config {
    replica_every(dir, bucket, name, grace, INTERVAL)
}

const INTERVAL: Duration = Duration::from_secs(2);

fn replica_every(
    dir: &std::path::Path,
    bucket: &std::path::Path,
    name: &str,
    grace: Duration,
    interval: Duration,
) -> spanprof_server::Config {
    let mut c = config(&dir.join(name));
    c.blocks = Some(BlockConfig {
        object_store: format!("file://{}", bucket.display()),
        interval,
        replica: name.into(),
        cache_bytes: 8 << 20,
        peers: None,
        compaction_grace: grace,
    });
    c
}

/// Blocks this young are not compacted: this test's blocks stay as uploaded.
const NO_COMPACTION: Duration = Duration::from_secs(3600);

/// `/ingest` of folded stacks into `span` (or whole-process when `None`), at Unix seconds `at`.
async fn ingest(srv: &TestServer, span: Option<&str>, at: u64, body: &str) {
    let name = match span {
        Some(s) => format!("ride.cpu%7Bspan_id%3D{s}%2Ctrace_id%3D{TRACE}%2Cspan_name%3DOrder%7D"),
        None => "ride.cpu".into(),
    };
    let url = srv.url(&format!("/ingest?name={name}&from={at}&until={at}"));
    let r = reqwest::Client::new().post(url).body(body.to_owned()).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn metric(srv: &TestServer, name: &str) -> u64 {
    let text = reqwest::get(srv.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
}

async fn wait_for_blocks(srv: &TestServer, n: u64) {
    for _ in 0..200 {
        if metric(srv, "spanprof_server_blocks_uploaded_total").await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} did not upload {n} blocks", srv.base);
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_answer_from_every_block_with_one_id_merged() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    // a keeps its data local until it stops; b uploads a block after its first interval.
    let a = TestServer::start(replica_every(dir.path(), &bucket, "a", NO_COMPACTION, Duration::from_secs(3600))).await;
    let b = TestServer::start(replica(dir.path(), &bucket, "b", NO_COMPACTION)).await;
    let old = now_s() - 600;
    // One span ID pushed to both replicas; whole-process samples on both; another span on a.
    ingest(&a, Some(SPAN_A), old, "main;handle;find_nearest_vehicle 3\n").await;
    ingest(&b, Some(SPAN_A), old + 1, "main;handle;find_nearest_vehicle 2\nmain;handle;lock 1\n").await;
    ingest(&a, None, old, "main;idle 5\n").await;
    ingest(&b, None, old, "main;idle 4\nmain;gc 1\n").await;
    ingest(&a, Some(SPAN_B), now_s(), "main;recent 4\n").await;
    wait_for_blocks(&b, 1).await;
    assert_eq!(metric(&a, "spanprof_server_blocks_uploaded_total").await, 0);

    // a answers from its local data and b's block (once a's listing of the bucket, cached for
    // a few seconds, has it): the two pushes are one profile.
    let mut p = serde_json::Value::Null;
    for _ in 0..150 {
        p = get_json(&a.url(&format!("/api/v1/profiles/{SPAN_A}"))).await.1;
        if p["profile"]["samples"] == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p["profile"]["samples"], 6, "{p}");
    let (_, whole) =
        get_json(&a.url(&format!("/api/v1/services/ride/profile?from={}&until={}&spans=outside", old - 60, old + 60)))
            .await;
    assert_eq!(whole["samples"], 10, "{whole}");
    let (_, all) =
        get_json(&a.url(&format!("/api/v1/services/ride/profile?from={}&until={}", old - 60, old + 60))).await;
    assert_eq!(all["samples"], 16, "{all}");
    // b, without peers, sees only what is in the bucket: its own part.
    assert_eq!(get_json(&b.url(&format!("/api/v1/profiles/{SPAN_A}"))).await.1["profile"]["samples"], 3);
    assert_eq!(get_json(&b.url(&format!("/api/v1/profiles/{SPAN_B}"))).await.0, 404);

    // A graceful stop uploads a's data: every replica answers the same.
    a.stop().await;
    assert!(bucket.join("blocks").read_dir().unwrap().count() >= 2, "each replica wrote a block");
    let a = TestServer::start(replica(dir.path(), &bucket, "a", NO_COMPACTION)).await;
    // b's listing of the bucket is cached for a few seconds.
    if get_json(&b.url(&format!("/api/v1/profiles/{SPAN_B}"))).await.0 != 200 {
        tokio::time::sleep(Duration::from_secs(11)).await;
    }
    for srv in [&a, &b] {
        let (status, p) = get_json(&srv.url(&format!("/api/v1/profiles/{SPAN_A}"))).await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["profile"]["samples"], 6, "{p}");
        assert_eq!(p["profile"]["trace_id"], TRACE);
        assert_eq!(find(&p["flamegraph"], "find_nearest_vehicle").unwrap()["total"], 5);
        let (_, trace) = get_json(&srv.url(&format!("/api/v1/traces/{TRACE}"))).await;
        assert_eq!(trace["samples"], 10, "{trace}");
        let (_, whole) =
            get_json(&srv.url(&format!("/api/v1/services/ride/profile?from={}&until={}", old - 60, old + 60))).await;
        assert_eq!(whole["samples"], 16, "span samples (6) and the rest (10): {whole}");
        let (_, outside) = get_json(&srv.url(&format!(
            "/api/v1/services/ride/profile?from={}&until={}&spans=outside",
            old - 60,
            old + 60
        )))
        .await;
        assert_eq!(outside["samples"], 10, "{outside}");
        let (_, list) = get_json(&srv.url("/api/v1/profiles?service=ride")).await;
        let listed: Vec<&serde_json::Value> =
            list["profiles"].as_array().unwrap().iter().filter(|p| p["profile_id"] == SPAN_A).collect();
        assert_eq!(listed.len(), 1, "listed once: {list}");
        assert_eq!(listed[0]["samples"], 6);
        let (_, services) = get_json(&srv.url("/api/v1/services")).await;
        assert_eq!(services["services"], serde_json::json!(["ride"]));
        let (_, p) = get_json(&srv.url(&format!("/api/v1/profiles/{SPAN_B}"))).await;
        assert_eq!(p["profile"]["samples"], 4, "{p}");
        // The span name's aggregate from the blocks' listings: a profile in two blocks is one span.
        let (status, agg) = get_json(&srv.url(&format!(
            "/api/v1/aggregate?service=ride&span_name=Order&from={}&until={}",
            old - 60,
            now_s() + 60
        )))
        .await;
        assert_eq!(status, 200, "{agg}");
        assert_eq!((agg["spans"].as_u64(), agg["samples"].as_u64()), (Some(2), Some(10)), "{agg}");
        assert_eq!(agg["distribution"]["max_ns"], 60_000_000, "{agg}");
        assert_eq!(agg["heaviest"][0]["profile_id"], SPAN_A, "{agg}");
        assert_eq!(find(&agg["flamegraph"], "find_nearest_vehicle").unwrap()["total"], 5, "{agg}");
    }
    a.stop().await;

    // A block whose bytes went bad is left out and counted; the others still answer.
    let blocks: Vec<_> = bucket.join("blocks").read_dir().unwrap().map(|e| e.unwrap().path()).collect();
    let b_block = blocks.iter().find(|p| p.file_name().unwrap().to_string_lossy().contains("-b-")).unwrap();
    let data = b_block.join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    for byte in bytes.iter_mut().take(64) {
        *byte ^= 0x5a;
    }
    std::fs::write(&data, bytes).unwrap();
    let c = TestServer::start(replica(dir.path(), &bucket, "c", NO_COMPACTION)).await;
    let (status, p) = get_json(&c.url(&format!("/api/v1/profiles/{SPAN_A}"))).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["profile"]["samples"], 3, "a's part only: {p}");
    assert_eq!(p["partial"], true, "the answer says it misses a block: {p}");
    assert!(metric(&c, "spanprof_server_block_read_errors_total").await >= 1);
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_blocks_physically_and_deletes_them_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let a = TestServer::start(replica(dir.path(), &bucket, "a", Duration::from_secs(1))).await;
    let b = TestServer::start(replica(dir.path(), &bucket, "b", Duration::from_secs(1))).await;
    let old = now_s() - 600;
    ingest(&a, Some(SPAN_A), old, "main;handle;find_nearest_vehicle 3\n").await;
    ingest(&b, Some(SPAN_A), old + 1, "main;handle;find_nearest_vehicle 2\nmain;handle;lock 1\n").await;
    ingest(&a, None, old, "main;idle 5\n").await;
    ingest(&b, None, old, "main;idle 4\nmain;gc 1\n").await;
    wait_for_blocks(&a, 1).await;
    wait_for_blocks(&b, 1).await;

    // One of the two holds the lease and merges both blocks into one; the replaced ones go a
    // grace period later.
    for _ in 0..200 {
        let deleted = metric(&a, "spanprof_server_blocks_deleted_total").await
            + metric(&b, "spanprof_server_blocks_deleted_total").await;
        if deleted >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let compacted = metric(&a, "spanprof_server_blocks_compacted_total").await
        + metric(&b, "spanprof_server_blocks_compacted_total").await;
    assert_eq!(compacted, 2, "exactly one compactor merged the two blocks");
    // (Local files leave the emptied directories of deleted blocks behind.)
    let blocks: Vec<_> = bucket
        .join("blocks")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("meta.json").exists())
        .collect();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let data_objects =
        bucket.join("blocks").read_dir().unwrap().filter(|e| e.as_ref().unwrap().path().join("data").exists()).count();
    assert_eq!(data_objects, 1, "the replaced blocks' data is deleted too");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(blocks[0].join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["replaces"].as_array().unwrap().len(), 2, "{meta}");
    assert_eq!(meta["span_profiles"], 1, "the two parts of one ID are one record: {meta}");
    assert_eq!(meta["samples"], 16, "{meta}");

    // Answers are the same as before.
    tokio::time::sleep(Duration::from_secs(11)).await; // past the replicas' cached listings
    for srv in [&a, &b] {
        let (status, p) = get_json(&srv.url(&format!("/api/v1/profiles/{SPAN_A}"))).await;
        assert_eq!((status, &p["profile"]["samples"]), (200, &serde_json::json!(6)), "{p}");
        let (_, whole) =
            get_json(&srv.url(&format!("/api/v1/services/ride/profile?from={}&until={}", old - 60, old + 60))).await;
        assert_eq!(whole["samples"], 16, "span samples (6) and the rest (10): {whole}");
        let (_, outside) = get_json(&srv.url(&format!(
            "/api/v1/services/ride/profile?from={}&until={}&spans=outside",
            old - 60,
            old + 60
        )))
        .await;
        assert_eq!(outside["samples"], 10, "{outside}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_deletes_whole_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let a = TestServer::start(replica(dir.path(), &bucket, "a", NO_COMPACTION)).await;
    let two_days_ago = now_s() - 2 * 86_400;
    ingest(&a, Some(SPAN_A), two_days_ago, "main;old 3\n").await;
    wait_for_blocks(&a, 1).await;
    a.stop().await;
    let metas = || {
        bucket
            .join("blocks")
            .read_dir()
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().join("meta.json").exists())
            .count()
    };
    assert_eq!(metas(), 1);

    // Another replica keeping a day: the block, all of it older, goes.
    let mut config = replica(dir.path(), &bucket, "b", NO_COMPACTION);
    config.retention.max_age = Some(Duration::from_secs(86_400));
    config.retention_interval = Duration::from_millis(200);
    let b = TestServer::start(config).await;
    for _ in 0..100 {
        if metas() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metas(), 0, "the expired block is deleted");
    // b deleted it, so b's own listing of the bucket is fresh.
    assert_eq!(get_json(&b.url(&format!("/api/v1/profiles/{SPAN_A}"))).await.0, 404);
    b.stop().await;
}
