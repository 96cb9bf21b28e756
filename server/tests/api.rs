//! The server over real HTTP: ingest with both Pyroscope protocols, merge by ID, span vs
//! whole-process separation, the query API, exports and metrics.

mod common;

use common::*;
use prost::Message;
use serde_json::json;

fn folded_url(base: &str, name: &str, extra: &str) -> String {
    let name: String = name
        .bytes()
        .map(|b| match b {
            b'{' => "%7B".to_owned(),
            b'}' => "%7D".to_owned(),
            b'=' => "%3D".to_owned(),
            b',' => "%2C".to_owned(),
            b => (b as char).to_string(),
        })
        .collect();
    format!("{base}/ingest?name={name}{extra}")
}

async fn post(url: &str, body: &'static str) -> u16 {
    reqwest::Client::new().post(url).body(body).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn push_merges_same_span_id_and_separates_whole_process() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let span_labels: &[(&str, &str)] = &[("span_id", SPAN_A), ("trace_id", TRACE), ("span_name", "OrderVehicle")];
    let p1 = pprof(&[(&["main", "handle", "find_nearest_vehicle"], 7, span_labels), (&["main", "idle_loop"], 4, &[])]);
    let p2 = pprof(&[
        (&["main", "handle", "find_nearest_vehicle"], 5, span_labels),
        (&["main", "handle", "check_driver_availability"], 2, span_labels),
    ]);
    assert_eq!(push(&srv.base, &push_request("ride", &p1)).await.0, 200);
    assert_eq!(push(&srv.base, &push_request("ride", &p2)).await.0, 200);

    let (status, body) = get_json(&srv.url(&format!("/api/v1/profiles/{SPAN_A}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["profile"]["samples"], 14);
    assert_eq!(body["profile"]["cpu_ns"], 140_000_000u64);
    assert_eq!(body["profile"]["trace_id"], TRACE);
    assert_eq!(body["profile"]["span_name"], "OrderVehicle");
    assert_eq!(body["profile"]["service_name"], "ride");
    assert_eq!(body["profile"]["labels"]["namespace"], "default");
    let flame = &body["flamegraph"];
    assert_eq!(find(flame, "find_nearest_vehicle").unwrap()["self"], 12);
    assert_eq!(find(flame, "check_driver_availability").unwrap()["total"], 2);
    assert!(find(flame, "idle_loop").is_none(), "whole-process samples leaked into the span profile");
    assert_eq!(body["top"][0]["name"], "find_nearest_vehicle");

    // A service's CPU is all of its CPU: span samples (14) and the rest (4).
    let (status, body) = get_json(&srv.url("/api/v1/services/ride/profile?from=now-1h")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["samples"], 18, "{body}");
    assert_eq!(find(&body["flamegraph"], "find_nearest_vehicle").unwrap()["self"], 12);
    assert!(find(&body["flamegraph"], "idle_loop").is_some());
    let (_, outside) = get_json(&srv.url("/api/v1/services/ride/profile?from=now-1h&spans=outside")).await;
    assert_eq!(outside["samples"], 4, "outside spans only");
    assert!(find(&outside["flamegraph"], "find_nearest_vehicle").is_none());
    let (_, inside) = get_json(&srv.url("/api/v1/services/ride/profile?from=now-1h&spans=inside")).await;
    assert_eq!(inside["samples"], 14, "inside spans only");
    let (_, one_name) =
        get_json(&srv.url("/api/v1/services/ride/profile?from=now-1h&selector=%7Bspan_name%3D%22OrderVehicle%22%7D"))
            .await;
    assert_eq!(one_name["samples"], 14, "{one_name}");
    let (status, bad) = get_json(&srv.url("/api/v1/services/ride/profile?spans=some")).await;
    assert_eq!((status, bad["reason"].as_str()), (400, Some("bad_query")), "{bad}");

    let (_, body) = get_json(&srv.url("/api/v1/services")).await;
    assert_eq!(body["services"], json!(["ride"]));
    let (_, body) = get_json(&srv.url("/api/v1/labels/pod/values")).await;
    assert_eq!(body["values"], json!(["ride-7d4f"]));
    srv.stop().await;
}

#[tokio::test]
async fn connect_json_push_and_legacy_ingest_merge_into_one_profile() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let p = pprof(&[(
        &["main", "scooter", "find_nearest_vehicle"],
        3,
        &[("span_id", SPAN_B), ("span_name", "OrderVehicle")],
    )]);
    let body = json!({"series": [{
        "labels": [{"name": "service_name", "value": "ride"}, {"name": "__name__", "value": "process_cpu"}],
        "samples": [{"rawProfile": base64::engine::general_purpose::STANDARD.encode(gzip(&p.encode_to_vec())), "ID": "x"}]
    }]});
    let r = reqwest::Client::new()
        .post(srv.url("/push.v1.PusherService/Push"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{}");

    // The original Pyroscope semantics: a span_id label in `name` makes the payload part of it.
    let url = folded_url(
        &srv.base,
        &format!("ride.cpu{{span_id={SPAN_B},trace_id={TRACE}}}"),
        "&from=1764097000&until=1764097010",
    );
    assert_eq!(post(&url, "main;scooter;find_nearest_vehicle 4\nmain;scooter;lock 1\n").await, 200);
    // `profile_id` is an alias of `span_id`.
    let url = folded_url(&srv.base, &format!("ride.cpu{{profile_id={SPAN_B}}}"), "&format=lines");
    assert_eq!(post(&url, "main;scooter;lock\nmain;scooter;lock\n").await, 200);

    let (status, body) = get_json(&srv.url(&format!("/api/v1/profiles/{SPAN_B}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["profile"]["samples"], 10);
    assert_eq!(body["profile"]["trace_id"], TRACE, "trace ID learned from a later push");
    assert_eq!(find(&body["flamegraph"], "find_nearest_vehicle").unwrap()["self"], 7);
    assert_eq!(find(&body["flamegraph"], "lock").unwrap()["self"], 3);
    assert_eq!(body["profile"]["first_seen_ms"], 1_764_097_000_000u64);
    srv.stop().await;
}

#[tokio::test]
async fn multipart_pprof_ingest_like_pyroscope_go() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let p = pprof(&[(&["main", "runtime.mcall", "work"], 6, &[])]);
    let boundary = "----spanprofboundary";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
    body.extend_from_slice(&gzip(&p.encode_to_vec()));
    body.extend_from_slice(format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"sample_type_config\"; filename=\"sample_type_config.json\"\r\n\r\n{{\"cpu\":{{\"units\":\"samples\",\"sampled\":true}}}}\r\n--{boundary}--\r\n").as_bytes());
    let r = reqwest::Client::new()
        .post(srv.url(
            "/ingest?name=gosvc.cpu%7Benv%3Dprod%7D&from=1764097000000000000&until=1764097010000000000&spyName=gospy",
        ))
        .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (status, body) = get_json(&srv.url("/api/v1/services/gosvc/profile?from=1764097000&until=1764097100")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["samples"], 6);
    let (_, body) = get_json(&srv.url("/api/v1/labels/env/values")).await;
    assert_eq!(body["values"], json!(["prod"]));
    srv.stop().await;
}

#[tokio::test]
async fn trace_merges_span_profiles_across_services() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let a = pprof(&[(
        &["main", "order", "find_nearest_vehicle"],
        5,
        &[("span_id", SPAN_A), ("trace_id", TRACE), ("span_name", "OrderVehicle")],
    )]);
    let b = pprof(&[(
        &["main", "car", "check_driver_availability"],
        3,
        &[("span_id", SPAN_B), ("trace_id", TRACE), ("span_name", "CarHandler")],
    )]);
    assert_eq!(push(&srv.base, &push_request("frontend", &a)).await.0, 200);
    assert_eq!(push(&srv.base, &push_request("cars", &b)).await.0, 200);

    let (status, body) = get_json(&srv.url(&format!("/api/v1/traces/{TRACE}"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["samples"], 8);
    assert_eq!(body["profiles"].as_array().unwrap().len(), 2);
    assert!(find(&body["flamegraph"], "find_nearest_vehicle").is_some());
    assert!(find(&body["flamegraph"], "check_driver_availability").is_some());

    let (_, list) = get_json(&srv.url(&format!("/api/v1/profiles?trace_id={TRACE}"))).await;
    assert_eq!(list["profiles"].as_array().unwrap().len(), 2);
    let (_, list) = get_json(&srv.url("/api/v1/profiles?service=cars")).await;
    assert_eq!(list["profiles"][0]["profile_id"], SPAN_B);
    assert_eq!(list["profiles"].as_array().unwrap().len(), 1);
    let (_, list) = get_json(&srv.url("/api/v1/profiles?span_name=OrderVehicle")).await;
    assert_eq!(list["profiles"][0]["profile_id"], SPAN_A);
    let (_, list) = get_json(&srv.url("/api/v1/profiles?min_samples=4")).await;
    assert_eq!(list["profiles"].as_array().unwrap().len(), 1);

    let (status, body) = get_json(&srv.url("/api/v1/traces/0123456789abcdef0123456789abcdef")).await;
    assert_eq!((status, body["reason"].as_str()), (404, Some("no_samples")));
    let (status, body) = get_json(&srv.url("/api/v1/profiles/0123456789abcdef")).await;
    assert_eq!((status, body["reason"].as_str()), (404, Some("no_samples")));
    let (status, body) = get_json(&srv.url("/api/v1/profiles/0000000000000000")).await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("invalid_id")));
    srv.stop().await;
}

#[tokio::test]
async fn listing_is_newest_first_and_paginates() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    for i in 1..=7u64 {
        let url = folded_url(
            &srv.base,
            &format!("svc.cpu{{span_id={i:016x}}}"),
            &format!("&from={}&until={}", 1_764_000_000 + i, 1_764_000_000 + i),
        );
        assert_eq!(post(&url, "main;work 1\n").await, 200);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = get_json(&srv.url(&format!("/api/v1/profiles?limit=3&cursor={cursor}"))).await;
        assert_eq!(status, 200, "{page}");
        for p in page["profiles"].as_array().unwrap() {
            seen.push(p["profile_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let expected: Vec<String> = (1..=7u64).rev().map(|i| format!("{i:016x}")).collect();
    assert_eq!(seen, expected);
    let (_, page) = get_json(&srv.url("/api/v1/profiles?from=1764000005&until=1764000006")).await;
    assert_eq!(page["profiles"].as_array().unwrap().len(), 2);
    let (status, _) = get_json(&srv.url("/api/v1/profiles?limit=0")).await;
    assert_eq!(status, 400);
    let (status, _) = get_json(&srv.url("/api/v1/profiles?cursor=garbage")).await;
    assert_eq!(status, 400);
    srv.stop().await;
}

#[tokio::test]
async fn exports_open_as_their_formats() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let p = pprof(&[(&["main", "handle", "find_nearest_vehicle"], 9, &[("span_id", SPAN_A), ("trace_id", TRACE)])]);
    assert_eq!(push(&srv.base, &push_request("ride", &p)).await.0, 200);
    let get = |f: &str| reqwest::get(srv.url(&format!("/api/v1/profiles/{SPAN_A}?format={f}")));

    let folded = get("folded").await.unwrap().text().await.unwrap();
    assert_eq!(folded, "main;handle;find_nearest_vehicle 9\n");

    let gz = get("pprof").await.unwrap().bytes().await.unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
    let prof = spanprof_server::proto::pprof::Profile::decode(raw.as_slice()).unwrap();
    assert_eq!(prof.sample.len(), 1);
    assert_eq!(prof.sample[0].value, vec![9, 90_000_000]);
    assert!(prof.string_table.iter().any(|s| s == "find_nearest_vehicle"));
    assert!(prof.string_table.iter().any(|s| s == SPAN_A), "span_id label kept on samples");

    let ss: serde_json::Value = get("speedscope").await.unwrap().json().await.unwrap();
    assert_eq!(ss["profiles"][0]["type"], "sampled");
    assert_eq!(ss["profiles"][0]["weights"], json!([90_000_000u64]));

    let r = get("svg").await.unwrap();
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    let svg = r.text().await.unwrap();
    assert!(svg.contains("<svg") && svg.contains("find_nearest_vehicle"));

    let trace_folded =
        reqwest::get(srv.url(&format!("/api/v1/traces/{TRACE}?format=folded"))).await.unwrap().text().await.unwrap();
    assert_eq!(trace_folded, folded);
    let (status, body) = get_json(&srv.url(&format!("/api/v1/profiles/{SPAN_A}?format=jfr"))).await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("unknown_format")));
    srv.stop().await;
}

#[tokio::test]
async fn health_metrics_and_ui_routes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let p = pprof(&[(&["main", "a"], 2, &[("span_id", SPAN_A)]), (&["main", "b"], 1, &[])]);
    assert_eq!(push(&srv.base, &push_request("ride", &p)).await.0, 200);
    assert_eq!(post(&srv.url("/ingest?name=ride.cpu&format=trie"), "x").await, 400);
    assert_eq!(reqwest::get(srv.url("/healthz")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(srv.url("/readyz")).await.unwrap().status(), 200);
    let m = reqwest::get(srv.url("/metrics")).await.unwrap().text().await.unwrap();
    for needle in [
        "spanprof_server_ingested_samples_total 3",
        "spanprof_server_ingested_span_profiles_total{result=\"created\"} 1",
        "spanprof_server_rejected_requests_total{reason=\"unknown_format\"} 1",
        "spanprof_server_store_span_profiles 1",
        "spanprof_server_ingest_requests_total{protocol=\"push\"} 1",
    ] {
        assert!(m.contains(needle), "missing {needle:?} in\n{m}");
    }
    for path in ["/", &format!("/profiles/{SPAN_A}"), &format!("/traces/{TRACE}"), "/services/ride"] {
        let r = reqwest::get(srv.url(path)).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("/ui/app.js"));
    }
    let js = reqwest::get(srv.url("/ui/app.js")).await.unwrap();
    assert!(js.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    srv.stop().await;
}

#[tokio::test]
async fn non_cpu_profiles_never_mix_into_span_or_cpu_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let url = folded_url(&srv.base, &format!("ride.alloc_objects{{span_id={SPAN_A}}}"), "");
    assert_eq!(post(&url, "main;alloc_buffers 500\n").await, 200);
    let url = folded_url(&srv.base, "ride.cpu", "");
    assert_eq!(post(&url, "main;cpu_work 5\n").await, 200);

    let (status, _) = get_json(&srv.url(&format!("/api/v1/profiles/{SPAN_A}"))).await;
    assert_eq!(status, 404, "allocation samples must not form a CPU span profile");
    let (_, cpu) = get_json(&srv.url("/api/v1/services/ride/profile")).await;
    assert_eq!(cpu["samples"], 5, "{cpu}");
    let (_, mem) = get_json(&srv.url("/api/v1/services/ride/profile?type=memory")).await;
    assert_eq!(mem["samples"], 500, "{mem}");
    assert!(find(&mem["flamegraph"], "alloc_buffers").is_some());
    srv.stop().await;
}

#[tokio::test]
async fn a_sample_label_that_is_no_id_costs_the_label_not_the_request() {
    // A span_id label that is no profile ID (here one over 128 bytes): the other samples of the
    // request are stored as before, that one as whole-process, and the answer says so.
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let p = pprof(&[
        (&["main", "handle", "find_nearest_vehicle"], 7, &[("span_id", SPAN_A), ("trace_id", TRACE)]),
        (&["main", "worker", "poll"], 3, &[("span_id", &"x".repeat(129))]),
        (&["main", "handle", "lock"], 2, &[("span_id", SPAN_B), ("trace_id", "not-a-trace-id")]),
    ]);
    let r = reqwest::Client::new()
        .post(srv.url("/push.v1.PusherService/Push"))
        .header("Content-Type", "application/proto")
        .body(push_request("ride", &p).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["spanprof-dropped-labels"], "span_id=1, trace_id=1");

    let (_, a) = get_json(&srv.url(&format!("/api/v1/profiles/{SPAN_A}"))).await;
    assert_eq!((a["profile"]["samples"].as_u64(), a["profile"]["trace_id"].as_str()), (Some(7), Some(TRACE)));
    let (_, b) = get_json(&srv.url(&format!("/api/v1/profiles/{SPAN_B}"))).await;
    assert_eq!(b["profile"]["samples"], 2, "kept in its span profile without the trace");
    assert!(b["profile"]["trace_id"].is_null());
    let (_, whole) = get_json(&srv.url("/api/v1/services/ride/profile?from=now-1h&spans=outside")).await;
    assert_eq!(whole["samples"], 3);
    assert_eq!(find(&whole["flamegraph"], "poll").unwrap()["self"], 3);
    let metrics = reqwest::get(srv.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"spanprof_server_ingest_dropped_labels_total{label="span_id"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"spanprof_server_ingest_dropped_labels_total{label="trace_id"} 1"#));
    srv.stop().await;
}
