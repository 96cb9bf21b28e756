//! `GET /api/v1/diff` and Grafana's `Diff` RPC over real HTTP: both sides' totals and a diff
//! flame graph whose nodes carry both sides' values, decoded here from the levels and compared
//! with each side's `folded` export; `GET /api/v1/aggregate`, a span name's spans as one answer,
//! and a diff of its slowest spans against the rest.

mod common;

use std::collections::BTreeMap;

use common::*;

/// Stack → (left, right) from diff levels: 7 values per bar, offsets delta-encoded per side.
fn diff_nodes(names: &[String], levels: &[Vec<i64>]) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    let mut above: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    for (depth, level) in levels.iter().enumerate() {
        assert_eq!(level.len() % 7, 0);
        let mut here = Vec::new();
        let mut end = (0, 0);
        for b in level.chunks(7) {
            let (xl, tl, xr, tr) = (end.0 + b[0], b[1], end.1 + b[3], b[4]);
            end = (xl + tl, xr + tr);
            let name = &names[b[6] as usize];
            let stack = if depth == 0 {
                String::new()
            } else {
                let p = above
                    .iter()
                    .find(|(pl, ptl, pr, ptr, _)| {
                        (tl == 0 || (*pl <= xl && xl + tl <= pl + ptl))
                            && (tr == 0 || (*pr <= xr && xr + tr <= pr + ptr))
                    })
                    .expect("a parent");
                if p.4.is_empty() { name.clone() } else { format!("{};{name}", p.4) }
            };
            if depth > 0 && (b[2] > 0 || b[5] > 0) {
                let e = out.entry(stack.clone()).or_insert((0, 0));
                e.0 += b[2];
                e.1 += b[5];
            }
            here.push((xl, tl, xr, tr, stack));
        }
        above = here;
    }
    out
}

fn graph_nodes(v: &serde_json::Value) -> BTreeMap<String, (i64, i64)> {
    let names: Vec<String> = v["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect();
    let levels: Vec<Vec<i64>> = v["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect())
        .collect();
    diff_nodes(&names, &levels)
}

async fn folded(base: &str, path: &str) -> BTreeMap<String, i64> {
    let r = reqwest::get(format!("{base}{path}&format=folded")).await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap())
        .map(|(s, n)| (s.to_owned(), n.parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn diffs_of_profiles_traces_span_names_and_services() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let order: &[(&str, &str)] = &[("span_id", SPAN_A), ("trace_id", TRACE), ("span_name", "OrderVehicle")];
    let pay: &[(&str, &str)] = &[("span_id", SPAN_B), ("span_name", "Payment")];
    let p = pprof(&[
        (&["main", "handle", "find_nearest_vehicle"], 12, order),
        (&["main", "handle", "check_driver"], 2, order),
        (&["main", "handle", "charge"], 3, pay),
        (&["main", "idle_loop"], 4, &[]),
    ]);
    assert_eq!(push(&srv.base, &push_request("ride", &p)).await.0, 200);

    // A profile against itself: every node the same on both sides.
    let (status, same) =
        get_json(&srv.url(&format!("/api/v1/diff?left.profile={SPAN_A}&right.profile={SPAN_A}"))).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!((same["left"]["samples"].as_u64(), same["right"]["samples"].as_u64()), (Some(14), Some(14)));
    let nodes = graph_nodes(&same["flamegraph"]);
    assert!(!nodes.is_empty() && nodes.values().all(|(l, r)| l == r), "{nodes:?}");

    // A span name's aggregate against the service's CPU outside spans: each side is its export.
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let window = format!("from={}&until={}", now_s - 3600, now_s + 60);
    let url = format!(
        "/api/v1/diff?left.service=ride&left.span_name=OrderVehicle&left.{}&right.service=ride&right.spans=outside&right.{}",
        window.replace('&', "&left."),
        window.replace('&', "&right.")
    );
    let (status, d) = get_json(&srv.url(&url)).await;
    assert_eq!(status, 200, "{d}");
    let nodes = graph_nodes(&d["flamegraph"]);
    let left: BTreeMap<String, i64> = nodes.iter().filter(|(_, v)| v.0 > 0).map(|(k, v)| (k.clone(), v.0)).collect();
    let right: BTreeMap<String, i64> = nodes.iter().filter(|(_, v)| v.1 > 0).map(|(k, v)| (k.clone(), v.1)).collect();
    assert_eq!(
        left,
        folded(
            &srv.base,
            &format!("/api/v1/services/ride/profile?{window}&selector=%7Bspan_name%3D%22OrderVehicle%22%7D")
        )
        .await
    );
    assert_eq!(right, folded(&srv.base, &format!("/api/v1/services/ride/profile?{window}&spans=outside")).await);
    assert_eq!((d["flamegraph"]["left_ticks"].as_u64(), d["flamegraph"]["right_ticks"].as_u64()), (Some(14), Some(4)));

    // Only the spans of a name heavier than 100 ms (14 samples × 10 ms = 140 ms) against a trace.
    let (status, d) =
        get_json(&srv.url(&format!("/api/v1/diff?left.service=ride&left.min_cpu_ms=100&right.trace={TRACE}"))).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!((d["left"]["kind"].as_str(), d["left"]["span_profiles"].as_u64()), (Some("spans"), Some(1)), "{d}");
    assert_eq!(d["right"]["samples"], 14);

    // An empty side is a side with nothing in it.
    let (status, d) =
        get_json(&srv.url(&format!("/api/v1/diff?left.profile={SPAN_A}&right.profile=0123456789abcdef"))).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["right"]["samples"], 0);
    assert!(graph_nodes(&d["flamegraph"]).values().all(|(_, r)| *r == 0));

    for (query, says) in [
        ("left.profile=00f067aa0ba902b7".to_owned(), "right"),
        (format!("left.profile={SPAN_A}&left.trace={TRACE}&right.profile={SPAN_A}"), "exactly one"),
        (format!("left.trace=xyz&right.profile={SPAN_A}"), "32 hex"),
        (format!("left.service=ride&left.selector=%7Ba%3Db%7D&right.profile={SPAN_A}"), "selector"),
        (format!("left.service=ride&left.min_cpu_ms=lots&right.profile={SPAN_A}"), "milliseconds"),
    ] {
        let (status, e) = get_json(&srv.url(&format!("/api/v1/diff?{query}"))).await;
        assert_eq!(status, 400, "{query}: {e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{query}: {e}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_span_names_aggregate_counts_its_spans_and_exports_their_merged_stacks() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    // Five OrderVehicle spans of 1, 2, 2, 3 and 12 samples (the last pushed in two parts, merged),
    // one Payment span, and samples outside spans.
    let ids = ["a000000000000001", "a000000000000002", "a000000000000003", "a000000000000004", "a000000000000005"];
    let order =
        |i: usize| -> Vec<(&'static str, &'static str)> { vec![("span_id", ids[i]), ("span_name", "OrderVehicle")] };
    let (o0, o1, o2, o3, o4) = (order(0), order(1), order(2), order(3), order(4));
    let pay: &[(&str, &str)] = &[("span_id", SPAN_B), ("span_name", "Payment")];
    let p = pprof(&[
        (&["main", "order", "price"], 1, &o0),
        (&["main", "order", "price"], 2, &o1),
        (&["main", "order", "route"], 2, &o2),
        (&["main", "order", "price"], 3, &o3),
        (&["main", "order", "route"], 5, &o4),
        (&["main", "pay", "charge"], 4, pay),
        (&["main", "idle"], 6, &[]),
    ]);
    assert_eq!(push(&srv.base, &push_request("ride", &p)).await.0, 200);
    let more = pprof(&[(&["main", "order", "geo"], 7, &o4)]);
    assert_eq!(push(&srv.base, &push_request("ride", &more)).await.0, 200);

    let (status, a) = get_json(&srv.url("/api/v1/aggregate?service=ride&span_name=OrderVehicle")).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(
        (a["spans"].as_u64(), a["samples"].as_u64(), a["cpu_ns"].as_u64()),
        (Some(5), Some(20), Some(200_000_000)),
        "{a}"
    );
    let d = &a["distribution"];
    assert_eq!(
        (d["p50_ns"].as_u64(), d["max_ns"].as_u64(), d["min_ns"].as_u64()),
        (Some(20_000_000), Some(120_000_000), Some(10_000_000))
    );
    let bins: u64 = d["histogram"].as_array().unwrap().iter().map(|b| b["spans"].as_u64().unwrap()).sum();
    assert_eq!(bins, 5, "every span is in one bin");
    assert_eq!(a["heaviest"][0]["profile_id"], ids[4]);
    assert_eq!(a["heaviest"][0]["cpu_ns"], 120_000_000);
    assert!(a["top"].as_array().is_some_and(|t| !t.is_empty()) && a["flamegraph"]["levels"].is_array(), "{a}");
    // The export is the span profiles added up.
    let stacks = folded(&srv.base, "/api/v1/aggregate?service=ride&span_name=OrderVehicle").await;
    let want: BTreeMap<String, i64> = [("main;order;price", 6), ("main;order;route", 7), ("main;order;geo", 7)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(stacks, want);

    // Without a span name: every span of the service, per name.
    let (status, all) = get_json(&srv.url("/api/v1/aggregate?service=ride&max_nodes=2")).await;
    assert_eq!(status, 200, "{all}");
    let names: Vec<(String, u64)> = all["span_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["span_name"].as_str().unwrap().to_owned(), n["spans"].as_u64().unwrap()))
        .collect();
    assert_eq!(names, [("OrderVehicle".to_owned(), 5), ("Payment".to_owned(), 1)]);

    // A CPU filter: only the spans of 20–30 ms, merged from their profiles.
    let (status, f) =
        get_json(&srv.url("/api/v1/aggregate?service=ride&span_name=OrderVehicle&min_cpu_ms=20&max_cpu_ms=30")).await;
    assert_eq!(status, 200, "{f}");
    assert_eq!(
        (f["spans"].as_u64(), f["spans_in_range"].as_u64(), f["samples"].as_u64()),
        (Some(3), Some(5), Some(7)),
        "{f}"
    );

    // The slowest spans (≥ p90 = 120 ms) against the rest.
    let (status, diff) = get_json(&srv.url(
        "/api/v1/diff?left.service=ride&left.span_name=OrderVehicle&left.max_cpu_ms=119&right.service=ride&right.span_name=OrderVehicle&right.min_cpu_ms=120",
    ))
    .await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!((diff["left"]["span_profiles"].as_u64(), diff["left"]["samples"].as_u64()), (Some(4), Some(8)));
    assert_eq!((diff["right"]["span_profiles"].as_u64(), diff["right"]["samples"].as_u64()), (Some(1), Some(12)));

    // Nothing there: 404; bad parameters: 400 saying what is wrong.
    let (status, e) = get_json(&srv.url("/api/v1/aggregate?service=ride&span_name=Nope")).await;
    assert_eq!((status, e["reason"].as_str()), (404, Some("no_samples")), "{e}");
    for (query, says) in [
        ("span_name=OrderVehicle", "service is required"),
        ("service=ride&min_cpu_ms=ten", "milliseconds"),
        ("service=ride&min_cpu_ms=30&max_cpu_ms=20", "above"),
        ("service=ride&from=now&until=now-1h", "after"),
        ("service=ride&selector=%7Bbroken", "selector"),
        ("service=ride&format=png", "format"),
    ] {
        let (status, e) = get_json(&srv.url(&format!("/api/v1/aggregate?{query}"))).await;
        assert_eq!(status, 400, "{query}: {e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{query}: {e}");
    }
    srv.stop().await;
}
