//! Bad input gets a 4xx that says what was wrong, stores nothing, and never crashes the server.

mod common;

use common::*;
use prost::Message;

async fn send(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn every_bad_request_is_a_clear_4xx_and_stores_nothing() {
    // (A sample label that is no ID is not a bad request: see api.rs, it costs only the label.)
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let good = pprof(&[(&["main", "a"], 2, &[("span_id", SPAN_A)])]).encode_to_vec();
    let push_url = srv.url("/push.v1.PusherService/Push");
    let proto = [("Content-Type", "application/proto")];
    let proto_gz = [("Content-Type", "application/proto"), ("Content-Encoding", "gzip")];
    let valid_push = push_request("ride", &pprof(&[(&["main", "a"], 2, &[("span_id", SPAN_A)])])).encode_to_vec();

    let bomb = gzip(&vec![0u8; 32 << 20]);
    let mut bad_label = push_request("ride", &pprof(&[(&["a"], 1, &[])]));
    bad_label.series[0]
        .labels
        .push(spanprof_server::proto::push::LabelPair { name: "bad-label".into(), value: "x".into() });
    let mut truncated_profile = push_request("ride", &pprof(&[(&["a"], 1, &[])]));
    let raw = &mut truncated_profile.series[0].samples[0].raw_profile;
    raw.truncate(raw.len() - 3);
    let mut dangling = pprof(&[(&["a"], 1, &[])]);
    dangling.sample[0].location_id.push(4242);

    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "truncated protobuf",
            push_url.clone(),
            proto.to_vec(),
            valid_push[..valid_push.len() - 5].to_vec(),
            400,
            "invalid",
        ),
        (
            "garbage protobuf",
            push_url.clone(),
            proto.to_vec(),
            b"\x0a\xff\xff\xff\xff\x0f".to_vec(),
            400,
            "invalid PushRequest",
        ),
        ("invalid gzip", push_url.clone(), proto_gz.to_vec(), b"\x1f\x8b\x08\x00garbage".to_vec(), 400, "gzip"),
        ("gzip bomb", push_url.clone(), proto_gz.to_vec(), bomb.clone(), 400, "decompresses to more than"),
        ("oversize body", push_url.clone(), proto.to_vec(), vec![0u8; 2 << 20], 400, "larger than the limit"),
        ("bad label name", push_url.clone(), proto.to_vec(), bad_label.encode_to_vec(), 400, "invalid label name"),
        (
            "truncated raw profile",
            push_url.clone(),
            proto.to_vec(),
            truncated_profile.encode_to_vec(),
            400,
            "invalid pprof",
        ),
        (
            "dangling location",
            push_url.clone(),
            proto.to_vec(),
            push_request("ride", &dangling).encode_to_vec(),
            400,
            "unknown location 4242",
        ),
        (
            "unknown content type",
            push_url.clone(),
            vec![("Content-Type", "text/csv")],
            valid_push.clone(),
            415,
            "Content-Type",
        ),
        (
            "unknown encoding",
            push_url.clone(),
            vec![("Content-Type", "application/proto"), ("Content-Encoding", "br")],
            valid_push.clone(),
            415,
            "Content-Encoding",
        ),
        (
            "bad json",
            push_url.clone(),
            vec![("Content-Type", "application/json")],
            b"{\"series\": [".to_vec(),
            400,
            "JSON",
        ),
        (
            "json bad base64",
            push_url.clone(),
            vec![("Content-Type", "application/json")],
            br#"{"series":[{"samples":[{"rawProfile":"@@@"}]}]}"#.to_vec(),
            400,
            "base64",
        ),
        ("missing name", srv.url("/ingest?format=folded"), vec![], b"a;b 1".to_vec(), 400, "missing `name`"),
        ("bad name", srv.url("/ingest?name=app%7Bk%3Dv"), vec![], b"a;b 1".to_vec(), 400, "closing"),
        ("bad label", srv.url("/ingest?name=app%7B9x%3Dv%7D"), vec![], b"a;b 1".to_vec(), 400, "invalid label name"),
        ("bad timestamp", srv.url("/ingest?name=app&from=yesterday"), vec![], b"a;b 1".to_vec(), 400, "Unix timestamp"),
        (
            "from after until",
            srv.url("/ingest?name=app&from=1764097010&until=1764097000"),
            vec![],
            b"a;b 1".to_vec(),
            400,
            "after",
        ),
        ("unknown format", srv.url("/ingest?name=app&format=jfr"), vec![], b"x".to_vec(), 400, "unsupported format"),
        ("bad folded line", srv.url("/ingest?name=app"), vec![], b"a;b 1\na;b many\n".to_vec(), 400, "line 2"),
        (
            "bad pprof body",
            srv.url("/ingest?name=app&format=pprof"),
            vec![],
            good[..good.len() - 2].to_vec(),
            400,
            "pprof",
        ),
        (
            "multipart without profile",
            srv.url("/ingest?name=app"),
            vec![("Content-Type", "multipart/form-data; boundary=xx")],
            b"--xx\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nhi\r\n--xx--\r\n".to_vec(),
            400,
            "no `profile` part",
        ),
        ("ingest gzip bomb", srv.url("/ingest?name=app&format=pprof"), vec![], bomb, 413, "decompresses to more than"),
    ];
    for (what, url, headers, body, status, needle) in cases {
        let (got, body) = send(&url, &headers, body).await;
        let msg = body["error"].as_str().or(body["message"].as_str()).unwrap_or_default().to_owned();
        assert_eq!(got, status, "{what}: {body}");
        assert!(msg.contains(needle), "{what}: message {msg:?} should mention {needle:?}");
    }
    // Nothing was stored, and the server still serves.
    let (status, list) = get_json(&srv.url("/api/v1/profiles")).await;
    assert_eq!(status, 200);
    assert_eq!(list["profiles"].as_array().unwrap().len(), 0, "{list}");
    let (_, services) = get_json(&srv.url("/api/v1/services")).await;
    assert_eq!(services["services"].as_array().unwrap().len(), 0, "{services}");
    let (status, _) =
        push(&srv.base, &push_request("ride", &pprof(&[(&["main", "a"], 2, &[("span_id", SPAN_A)])]))).await;
    assert_eq!(status, 200);
    let m = reqwest::get(srv.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(m.contains("spanprof_server_rejected_requests_total{reason=\"too_large\"} 3"), "{m}");
    srv.stop().await;
}

#[tokio::test]
async fn a_taken_listen_address_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config(dir.path());
    config.listen = taken.local_addr().unwrap();
    let e = spanprof_server::run(config, None).await.expect_err("the address is taken");
    let text = e.to_string();
    assert!(text.contains(&taken.local_addr().unwrap().to_string()) && text.contains("--listen"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_very_deep_stack_is_stored_truncated_and_read_back_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    // 4,000 frames crashed every read of the profile (a recursive tree build on a 2 MiB stack).
    let stack: Vec<String> = (0..4000).map(|i| format!("f{i}")).collect();
    let body = format!("{} 7\n", stack.join(";"));
    let url = srv.url("/ingest?name=deep.cpu%7Bspan_id%3D00000000000d0ee9%7D&format=folded");
    let r = reqwest::Client::new().post(url).body(body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (status, profile) = get_json(&srv.url("/api/v1/profiles/00000000000d0ee9")).await;
    assert_eq!(status, 200, "{profile}");
    let text = profile.to_string();
    assert!(text.contains("[truncated]") && text.contains("f3999"), "the leaf-most frames under the marker");
    assert!(!text.contains("\"f0\""), "the outermost frames are cut");
    let folded =
        reqwest::get(srv.url("/api/v1/profiles/00000000000d0ee9?format=folded")).await.unwrap().text().await.unwrap();
    let depth = folded.lines().next().unwrap().rsplit_once(' ').unwrap().0.split(';').count();
    assert_eq!(depth, spanprof_server::model::MAX_STACK_DEPTH);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_labels_and_too_many_series_are_refused_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let profile = pprof(&[(&["main", "a"], 2, &[("span_id", SPAN_A)])]);
    // A service name longer than the store's key limit once stopped every later write.
    let (status, body) = push(&srv.url(""), &push_request(&"s".repeat(70_000), &profile)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("service_name has a value of 70000 bytes; the limit is 2048"), "{body}");
    let mut many = push_request("ride", &profile);
    let template = many.series[0].clone();
    many.series = (0..1_001)
        .map(|i| {
            let mut s = template.clone();
            s.labels.push(spanprof_server::proto::push::LabelPair { name: "shard".into(), value: i.to_string() });
            s
        })
        .collect();
    let (status, body) = push(&srv.url(""), &many).await;
    assert_eq!(status, 400, "Connect maps resource_exhausted to 400: {body}");
    assert!(body.contains("1001 series in one request; the limit is 1000"), "{body}");
    // Nothing of them was stored, and the next ordinary push is.
    let (status, body) = push(&srv.url(""), &push_request("ride", &profile)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = get_json(&srv.url(&format!("/api/v1/profiles/{SPAN_A}"))).await;
    assert_eq!(status, 200);
    let (_, services) = get_json(&srv.url("/api/v1/services")).await;
    assert!(!services.to_string().contains("sss"), "{services}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let addr = srv.addr;
    let (buf, n) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let head = "POST /ingest?name=big.cpu HTTP/1.1\r\nHost: x\r\nContent-Length: 2147483648\r\nExpect: 100-continue\r\n\r\n";
        conn.write_all(head.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).expect("answered at once, not after the body");
        (buf, n)
    })
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "no 100 Continue, a 413: {answer}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let addr = srv.addr;
    let waited = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(spanprof_cli::serve::Limits::default().header_timeout * 3)).unwrap();
        // Slowloris: a request line and one header, then nothing.
        conn.write_all(b"POST /ingest?name=x.cpu HTTP/1.1\r\nHost: x\r\n").unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 512];
        let _ = conn.read(&mut buf); // an answer or the close; a read timeout means held open
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(
        waited < spanprof_cli::serve::Limits::default().header_timeout * 2,
        "the connection was held for {waited:?}, beyond the header timeout"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_writer_that_dies_takes_readiness_and_health_down() {
    let dir = tempfile::tempdir().unwrap();
    // Limits opened wide, so that what only the store's key limit stops gets through the edge.
    let mut cfg = config(dir.path());
    cfg.limits.max_label_value_bytes = 1 << 20;
    let srv = TestServer::start(cfg).await;
    let ready = || async { reqwest::get(srv.url("/readyz")).await.unwrap().status().as_u16() };
    assert_eq!(ready().await, 200);
    let profile = pprof(&[(&["main", "a"], 2, &[("span_id", SPAN_A)])]);
    let (status, body) = push(&srv.url(""), &push_request(&"s".repeat(70_000), &profile)).await;
    assert_ne!(status, 200, "{body}");
    // The engine's key limit killed the writer: later writes fail, and the server says so
    // instead of claiming to be ready.
    let (status, _) = push(&srv.url(""), &push_request("ride", &profile)).await;
    assert_eq!(status, 503);
    // The writer thread may still be unwinding for a moment.
    let mut seen = (0, String::new());
    for _ in 0..50 {
        let r = reqwest::get(srv.url("/readyz")).await.unwrap();
        seen = (r.status().as_u16(), r.text().await.unwrap());
        if seen.0 == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (code, text) = seen;
    assert_eq!(code, 503, "writes fail but /readyz says {text}");
    assert!(text.contains("writer thread stopped"), "{text}");
    assert_eq!(reqwest::get(srv.url("/healthz")).await.unwrap().status().as_u16(), 503, "so the kubelet restarts it");
}
