//! Large profiles over real HTTP: the JSON answer is a bounded flame graph with exact totals,
//! `max_nodes` is validated, exports carry every stack, and a crowd of heavy queries neither
//! breaks them nor keeps ingest from answering.

mod common;

use std::time::Duration;

use common::*;

/// `stacks` distinct stacks of 10–40 frames over 2,000 functions, as folded text (one sample
/// count per line), and the total sample count.
fn large_folded(stacks: usize, seed: u64) -> (String, u64) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = String::new();
    let mut total = 0;
    for i in 0..stacks {
        let depth = 10 + (next() % 31) as usize;
        // A shared trunk (a few entry points) and branching below, as real services have.
        for d in 0..depth {
            let f = if d < 3 { next() % 4 } else { next() % 2000 };
            out.push_str(&format!("fn_{d}_{f};"));
        }
        // A unique leaf per stack keeps every stack distinct.
        let count = 1 + next() % 20;
        total += count;
        out.push_str(&format!("leaf_{i} {count}\n"));
    }
    (out, total)
}

async fn ingest_large(srv: &TestServer, span: &str, stacks: usize, seed: u64) -> u64 {
    let (body, total) = large_folded(stacks, seed);
    let url = srv.url(&format!("/ingest?name=big.cpu%7Bspan_id%3D{span}%7D&format=folded"));
    let r = reqwest::Client::new().post(url).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    total
}

fn large_config(dir: &std::path::Path) -> spanprof_server::Config {
    let mut c = config(dir);
    c.limits.max_body_bytes = 16 << 20;
    c.limits.max_decompressed_bytes = 64 << 20;
    c
}

#[tokio::test]
async fn a_large_profile_comes_back_bounded_with_exact_totals_and_whole_in_exports() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(large_config(dir.path())).await;
    let total = ingest_large(&srv, SPAN_A, 5_000, 7).await;

    let url = srv.url(&format!("/api/v1/profiles/{SPAN_A}"));
    let (status, body) = get_json(&url).await;
    assert_eq!(status, 200, "{body}");
    let g = &body["flamegraph"];
    assert_eq!(g["max_nodes"], 8192);
    assert!(g["nodes"].as_u64().unwrap() <= 8192, "{}", g["nodes"]);
    assert!(g["total_nodes"].as_u64().unwrap() > 50_000, "{}", g["total_nodes"]);
    assert_eq!(
        g["dropped_nodes"].as_u64().unwrap(),
        g["total_nodes"].as_u64().unwrap()
            - (g["nodes"].as_u64().unwrap() - bars(g).iter().filter(|b| b["name"] == "other").count() as u64)
    );
    let all = bars(g);
    assert_eq!(all.len() as u64, g["nodes"].as_u64().unwrap());
    assert_eq!(g["total"], total);
    assert_eq!(all[0]["total"], total, "the root holds every sample");
    assert_eq!(body["profile"]["samples"], total);
    // Every bar's total is its self plus its children's, `other` bars included: nothing is lost.
    for p in &all {
        let (d, x, t) = (p["depth"].as_u64().unwrap(), p["x"].as_u64().unwrap(), p["total"].as_u64().unwrap());
        let children: u64 = all
            .iter()
            .filter(|c| c["depth"] == d + 1 && c["x"].as_u64().unwrap() >= x && c["x"].as_u64().unwrap() < x + t)
            .map(|c| c["total"].as_u64().unwrap())
            .sum();
        assert_eq!(p["self"].as_u64().unwrap() + children, t, "{p}");
    }
    assert!(all.iter().any(|b| b["name"] == "other"));
    // The top table still counts every leaf (it comes from the whole tree, not the bounded one).
    assert_eq!(body["top"].as_array().unwrap().len(), 200);

    // Deterministic: the same answer twice.
    let again = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&again).unwrap(), body);

    // max_nodes: smaller, all, and garbage.
    let (_, small) = get_json(&format!("{url}?max_nodes=50")).await;
    assert!(small["flamegraph"]["nodes"].as_u64().unwrap() <= 50);
    assert_eq!(small["flamegraph"]["total"], total);
    let (status, full) = get_json(&format!("{url}?max_nodes=0")).await;
    assert_eq!(status, 200);
    assert_eq!(full["flamegraph"]["nodes"], full["flamegraph"]["total_nodes"]);
    assert_eq!(full["flamegraph"]["dropped_nodes"], 0);
    for bad in ["-1", "lots", "1", "1e3", "99999999999999999999999"] {
        let (status, err) = get_json(&format!("{url}?max_nodes={bad}")).await;
        assert_eq!(status, 400, "max_nodes={bad}: {err}");
        assert!(err["error"].as_str().unwrap().contains("max_nodes"), "{err}");
    }

    // Exports are whole: every stack, every sample.
    let folded = reqwest::get(format!("{url}?format=folded")).await.unwrap().text().await.unwrap();
    assert_eq!(folded.lines().count(), 5_000);
    let sum: u64 = folded.lines().map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap()).sum();
    assert_eq!(sum, total);
    let svg = reqwest::get(format!("{url}?format=svg")).await.unwrap().text().await.unwrap();
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"), "a whole SVG");
    let speedscope: serde_json::Value =
        reqwest::get(format!("{url}?format=speedscope")).await.unwrap().json().await.unwrap();
    assert_eq!(speedscope["profiles"][0]["samples"].as_array().unwrap().len(), 5_000);
    let pprof = reqwest::get(format!("{url}?format=pprof")).await.unwrap().bytes().await.unwrap();
    assert_eq!(&pprof[..2], &[0x1f, 0x8b], "gzip");
    srv.stop().await;
}

#[tokio::test]
async fn heavy_queries_beyond_the_bound_are_turned_away_while_ingest_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = large_config(dir.path());
    c.queries = spanprof_server::gate::QueryLimits { max_running: 1, max_queued: 2, max_wait: Duration::from_secs(60) };
    let srv = TestServer::start(c).await;
    ingest_large(&srv, SPAN_A, 3_000, 11).await;

    let client = reqwest::Client::new();
    let queries: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            // Half JSON with every node, half full-size SVG: the heaviest answers there are.
            let url = if i % 2 == 0 {
                srv.url(&format!("/api/v1/profiles/{SPAN_A}?max_nodes=0"))
            } else {
                srv.url(&format!("/api/v1/profiles/{SPAN_A}?format=svg"))
            };
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").is_some();
                let body = r.bytes().await.unwrap();
                (status, retry_after, body.len())
            })
        })
        .collect();
    // Ingest meanwhile: small pushes of new span profiles, one after another.
    let mut ingested = 0;
    for i in 0..20u64 {
        let span = format!("{:016x}", 0xabc0_0000 + i);
        let url = srv.url(&format!("/ingest?name=small.cpu%7Bspan_id%3D{span}%7D"));
        let r = client.post(url).body("main;work 3").send().await.unwrap();
        assert_eq!(r.status(), 200, "ingest answered {} while heavy queries ran", r.status());
        ingested += 1;
    }
    let (mut ok, mut busy) = (0, 0);
    for q in queries {
        let (status, retry_after, len) = q.await.unwrap();
        match status {
            200 => {
                assert!(len > 10_000, "a whole answer");
                ok += 1;
            }
            503 => {
                assert!(retry_after, "a 503 says when to retry");
                busy += 1;
            }
            other => panic!("a heavy query answered {other}"),
        }
    }
    assert_eq!(ingested, 20);
    assert!(ok >= 1, "some queries ran ({ok} ok, {busy} busy)");
    assert_eq!(ok + busy, 10);
    let metrics = reqwest::get(srv.url("/metrics")).await.unwrap().text().await.unwrap();
    if busy > 0 {
        assert!(metrics.contains("reason=\"busy\""), "turned-away queries are counted");
    }
    srv.stop().await;
}
