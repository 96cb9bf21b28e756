//! Grafana's Pyroscope data source API (`querier.v1.QuerierService` over Connect) over real
//! HTTP, in protobuf and in JSON. Requests and answers are encoded here from the public field
//! numbers with a small generic protobuf codec — not with the server's message types — and every
//! flame graph is decoded back into stacks and compared with the JSON API's `folded` export of
//! the same selection.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::json;

const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const PERIOD_NS: i64 = 10_000_000;

/// A generic protobuf codec: fields by number.
mod wire {
    #[derive(Clone, Debug, PartialEq)]
    pub enum Value {
        Varint(u64),
        Fixed64(u64),
        Bytes(Vec<u8>),
        Fixed32(u32),
    }

    #[derive(Clone, Debug, Default)]
    pub struct Msg(pub Vec<(u32, Value)>);

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    impl Msg {
        pub fn new() -> Self {
            Msg::default()
        }
        pub fn string(mut self, field: u32, s: &str) -> Self {
            self.0.push((field, Value::Bytes(s.as_bytes().to_vec())));
            self
        }
        pub fn int(mut self, field: u32, v: i64) -> Self {
            self.0.push((field, Value::Varint(v as u64)));
            self
        }
        pub fn double(mut self, field: u32, v: f64) -> Self {
            self.0.push((field, Value::Fixed64(v.to_bits())));
            self
        }
        pub fn msg(mut self, field: u32, m: Msg) -> Self {
            self.0.push((field, Value::Bytes(m.encode())));
            self
        }
        pub fn encode(&self) -> Vec<u8> {
            let mut out = Vec::new();
            for (field, v) in &self.0 {
                let (wt, body): (u64, Vec<u8>) = match v {
                    Value::Varint(n) => {
                        let mut b = Vec::new();
                        varint(*n, &mut b);
                        (0, b)
                    }
                    Value::Fixed64(n) => (1, n.to_le_bytes().to_vec()),
                    Value::Bytes(b) => {
                        let mut l = Vec::new();
                        varint(b.len() as u64, &mut l);
                        l.extend_from_slice(b);
                        (2, l)
                    }
                    Value::Fixed32(n) => (5, n.to_le_bytes().to_vec()),
                };
                varint((u64::from(*field) << 3) | wt, &mut out);
                out.extend(body);
            }
            out
        }

        pub fn decode(mut b: &[u8]) -> Msg {
            fn read_varint(b: &mut &[u8]) -> u64 {
                let mut v = 0u64;
                for shift in (0..64).step_by(7) {
                    let byte = b[0];
                    *b = &b[1..];
                    v |= u64::from(byte & 0x7f) << shift;
                    if byte < 0x80 {
                        break;
                    }
                }
                v
            }
            let mut out = Vec::new();
            while !b.is_empty() {
                let key = read_varint(&mut b);
                let v = match key & 7 {
                    0 => Value::Varint(read_varint(&mut b)),
                    1 => {
                        let v = u64::from_le_bytes(b[..8].try_into().unwrap());
                        b = &b[8..];
                        Value::Fixed64(v)
                    }
                    2 => {
                        let n = read_varint(&mut b) as usize;
                        let v = b[..n].to_vec();
                        b = &b[n..];
                        Value::Bytes(v)
                    }
                    5 => {
                        let v = u32::from_le_bytes(b[..4].try_into().unwrap());
                        b = &b[4..];
                        Value::Fixed32(v)
                    }
                    w => panic!("wire type {w}"),
                };
                out.push(((key >> 3) as u32, v));
            }
            Msg(out)
        }

        fn all(&self, field: u32) -> impl Iterator<Item = &Value> {
            self.0.iter().filter(move |(f, _)| *f == field).map(|(_, v)| v)
        }
        pub fn strings(&self, field: u32) -> Vec<String> {
            self.all(field)
                .map(|v| match v {
                    Value::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
                    other => panic!("field {field}: {other:?}"),
                })
                .collect()
        }
        pub fn string_of(&self, field: u32) -> String {
            self.strings(field).pop().unwrap_or_default()
        }
        pub fn msgs(&self, field: u32) -> Vec<Msg> {
            self.all(field)
                .map(|v| match v {
                    Value::Bytes(b) => Msg::decode(b),
                    other => panic!("field {field}: {other:?}"),
                })
                .collect()
        }
        pub fn int_of(&self, field: u32) -> i64 {
            self.all(field).last().map_or(0, |v| match v {
                Value::Varint(n) => *n as i64,
                other => panic!("field {field}: {other:?}"),
            })
        }
        pub fn double_of(&self, field: u32) -> f64 {
            self.all(field).last().map_or(0.0, |v| match v {
                Value::Fixed64(n) => f64::from_bits(*n),
                other => panic!("field {field}: {other:?}"),
            })
        }
        /// A repeated int64, packed or not.
        pub fn ints(&self, field: u32) -> Vec<i64> {
            let mut out = Vec::new();
            for v in self.all(field) {
                match v {
                    Value::Varint(n) => out.push(*n as i64),
                    Value::Bytes(b) => {
                        let mut b = b.as_slice();
                        while !b.is_empty() {
                            let mut n = 0u64;
                            for shift in (0..64).step_by(7) {
                                let byte = b[0];
                                b = &b[1..];
                                n |= u64::from(byte & 0x7f) << shift;
                                if byte < 0x80 {
                                    break;
                                }
                            }
                            out.push(n as i64);
                        }
                    }
                    other => panic!("field {field}: {other:?}"),
                }
            }
            out
        }
    }
}

use wire::Msg;

/// A unary Connect call in protobuf; `Ok(answer)` on 200, else `Err((status, error JSON))`.
async fn call(base: &str, method: &str, req: &Msg) -> Result<Msg, (u16, serde_json::Value)> {
    let r = reqwest::Client::new()
        .post(format!("{base}/querier.v1.QuerierService/{method}"))
        .header("Content-Type", "application/proto")
        .header("Connect-Protocol-Version", "1")
        .body(req.encode())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status != 200 {
        let ct = r.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
        assert_eq!(ct, "application/json", "Connect errors are JSON");
        return Err((status, r.json().await.unwrap()));
    }
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "application/proto",
        "exactly application/proto (Grafana checks)"
    );
    Ok(Msg::decode(&r.bytes().await.unwrap()))
}

/// A unary Connect call in JSON.
async fn call_json(base: &str, method: &str, req: serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/querier.v1.QuerierService/{method}"))
        .header("Content-Type", "application/json")
        .header("Connect-Protocol-Version", "1")
        .body(req.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Stacks (`a;b;c` → value) from flamebearer levels: each bar's parent is the bar one level up
/// whose span holds its start; a bar's self value belongs to its stack.
fn stacks_of_levels(names: &[String], levels: &[Vec<i64>]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    // (start, total, stack) of the bars of the level above.
    let mut above: Vec<(i64, i64, String)> = Vec::new();
    for (depth, level) in levels.iter().enumerate() {
        assert_eq!(level.len() % 4, 0);
        let mut here = Vec::new();
        let mut end = 0;
        for bar in level.chunks(4) {
            let (x, total, self_value, name) = (end + bar[0], bar[1], bar[2], &names[bar[3] as usize]);
            end = x + total;
            let stack = if depth == 0 {
                assert_eq!(name, "total", "the root is named total");
                String::new()
            } else {
                let parent =
                    above.iter().find(|(s, t, _)| *s <= x && x + total <= s + t).expect("a bar inside its parent");
                if parent.2.is_empty() { name.clone() } else { format!("{};{name}", parent.2) }
            };
            if self_value > 0 && depth > 0 {
                *out.entry(stack.clone()).or_insert(0) += self_value;
            }
            here.push((x, total, stack));
        }
        above = here;
    }
    out
}

fn flamegraph_stacks(answer: &Msg) -> (BTreeMap<String, i64>, i64) {
    let graph = answer.msgs(1).pop().expect("a flamegraph");
    let names = graph.strings(1);
    let levels: Vec<Vec<i64>> = graph.msgs(2).iter().map(|l| l.ints(1)).collect();
    assert!(levels.iter().all(|l| !l.is_empty()), "no empty level");
    (stacks_of_levels(&names, &levels), graph.int_of(3))
}

fn json_int(v: &serde_json::Value) -> i64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap(),
        serde_json::Value::Number(n) => n.as_i64().unwrap(),
        serde_json::Value::Null => 0,
        other => panic!("{other}"),
    }
}

/// The JSON API's folded export of `path` as stack → nanoseconds.
async fn folded_ns(base: &str, path: &str) -> BTreeMap<String, i64> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = reqwest::get(format!("{base}{path}{sep}format=folded")).await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| {
            let (stack, n) = l.rsplit_once(' ').unwrap();
            (stack.to_owned(), n.parse::<i64>().unwrap() * PERIOD_NS)
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn merge_request(selector: &str, start: i64, end: i64) -> Msg {
    Msg::new().string(1, CPU).string(2, selector).int(3, start).int(4, end)
}

#[tokio::test]
async fn grafana_pyroscope_data_source_calls_answer_like_the_json_api() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let order: &[(&str, &str)] = &[("span_id", SPAN_A), ("trace_id", TRACE), ("span_name", "OrderVehicle")];
    let pay: &[(&str, &str)] = &[("span_id", SPAN_B), ("trace_id", TRACE), ("span_name", "Payment")];
    let p1 = pprof(&[
        (&["main", "handle", "find_nearest_vehicle"], 7, order),
        (&["main", "handle", "check_driver"], 2, order),
        (&["main", "handle", "charge"], 3, pay),
        (&["main", "idle_loop"], 4, &[]),
    ]);
    let p2 = pprof(&[(&["main", "handle", "find_nearest_vehicle"], 5, order), (&["main", "gc"], 1, &[])]);
    assert_eq!(push(&srv.base, &push_request("ride", &p1)).await.0, 200);
    assert_eq!(push(&srv.base, &push_request("ride", &p2)).await.0, 200);
    let other = pprof(&[(&["main", "other_work"], 9, &[])]);
    assert_eq!(push(&srv.base, &push_request("other-svc", &other)).await.0, 200);
    let (start, end) = (now_ms() - 3_600_000, now_ms() + 60_000);

    // "Save & test": ProfileTypes over [1 s, 4 s] answers (here: every type stored).
    let types = call(&srv.base, "ProfileTypes", &Msg::new().int(1, 1000).int(2, 4000)).await.unwrap();
    let cpu = types.msgs(1).into_iter().find(|t| t.string_of(1) == CPU).expect("the CPU type is listed");
    assert_eq!(
        (cpu.string_of(2), cpu.string_of(4), cpu.string_of(5), cpu.string_of(6), cpu.string_of(7)),
        ("process_cpu".into(), "cpu".into(), "nanoseconds".into(), "cpu".into(), "nanoseconds".into())
    );

    // Profiles Drilldown asks whether anything was ingested, and when last.
    let stats = call(&srv.base, "GetProfileStats", &Msg::new()).await.unwrap();
    assert_eq!(stats.int_of(1), 1, "data_ingested");
    assert!(stats.int_of(3) >= start, "newest_profile_time");

    // The query editor: label names and values, narrowed by a selector.
    let sel = format!("{{__profile_type__=\"{CPU}\",service_name=\"ride\"}}");
    let names =
        call(&srv.base, "LabelNames", &Msg::new().string(1, &sel).int(2, start).int(3, end)).await.unwrap().strings(1);
    for n in ["service_name", "span_name", "pod", "namespace"] {
        assert!(names.contains(&n.to_owned()), "{n} in {names:?}");
    }
    assert!(!names.contains(&"span_id".to_owned()), "span IDs are no label: {names:?}");
    let services = call(&srv.base, "LabelValues", &Msg::new().string(1, "service_name").int(3, start).int(4, end))
        .await
        .unwrap()
        .strings(1);
    assert_eq!(services, ["other-svc", "ride"]);
    let span_names =
        call(&srv.base, "LabelValues", &Msg::new().string(1, "span_name").string(2, &sel).int(3, start).int(4, end))
            .await
            .unwrap()
            .strings(1);
    assert_eq!(span_names, ["OrderVehicle", "Payment"]);
    // Several matchers apply together.
    let anded =
        Msg::new().string(1, "span_name").string(2, &sel).string(2, "{span_name=~\"P.*\"}").int(3, start).int(4, end);
    assert_eq!(call(&srv.base, "LabelValues", &anded).await.unwrap().strings(1), ["Payment"]);

    // A service's CPU: all of it, as the JSON API's service view shows it.
    let (stacks, total) = flamegraph_stacks(
        &call(&srv.base, "SelectMergeStacktraces", &merge_request("{service_name=\"ride\"}", start, end))
            .await
            .unwrap(),
    );
    let window = format!("from={}&until={}", start / 1000, end / 1000);
    assert_eq!(stacks, folded_ns(&srv.base, &format!("/api/v1/services/ride/profile?{window}")).await);
    assert_eq!(total, 22 * PERIOD_NS, "every sample of the service, in nanoseconds");
    // Narrowed by span name (a regex) and to the samples outside spans.
    let (order_stacks, _) = flamegraph_stacks(
        &call(
            &srv.base,
            "SelectMergeStacktraces",
            &merge_request("{service_name=\"ride\", span_name=~\"Order.*\"}", start, end),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        order_stacks,
        folded_ns(
            &srv.base,
            &format!("/api/v1/services/ride/profile?{window}&selector=%7Bspan_name%3D~%22Order.%2A%22%7D")
        )
        .await
    );
    assert_eq!(order_stacks.values().sum::<i64>(), 14 * PERIOD_NS);
    let (outside, _) = flamegraph_stacks(
        &call(
            &srv.base,
            "SelectMergeStacktraces",
            &merge_request("{service_name=\"ride\", span_name=\"\"}", start, end),
        )
        .await
        .unwrap(),
    );
    assert_eq!(outside, BTreeMap::from([("main;gc".into(), PERIOD_NS), ("main;idle_loop".into(), 4 * PERIOD_NS)]));

    // Only the stacks under a call site (stack_trace_selector, root first).
    let call_site = Msg::new().msg(1, Msg::new().string(1, "main")).msg(1, Msg::new().string(1, "handle"));
    let (under, _) = flamegraph_stacks(
        &call(
            &srv.base,
            "SelectMergeStacktraces",
            &merge_request("{service_name=\"ride\"}", start, end).msg(7, call_site),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        under.keys().collect::<Vec<_>>(),
        ["main;handle;charge", "main;handle;check_driver", "main;handle;find_nearest_vehicle"]
    );

    // One span profile (profile_id_selector), a trace (trace_id_selector), and Tempo's call.
    let by_id =
        call(&srv.base, "SelectMergeStacktraces", &merge_request("{}", start, end).string(8, SPAN_A)).await.unwrap();
    assert_eq!(flamegraph_stacks(&by_id).0, folded_ns(&srv.base, &format!("/api/v1/profiles/{SPAN_A}")).await);
    let by_trace = call(
        &srv.base,
        "SelectMergeStacktraces",
        &merge_request("{service_name=\"ride\"}", start, end).string(10, TRACE),
    )
    .await
    .unwrap();
    assert_eq!(flamegraph_stacks(&by_trace).0, folded_ns(&srv.base, &format!("/api/v1/traces/{TRACE}")).await);
    let tempo = |selector: &str, span: &str| {
        Msg::new()
            .string(1, CPU)
            .string(2, selector)
            .string(3, span)
            .int(4, now_ms() - 30_000)
            .int(5, now_ms() + 30_000)
    };
    let span = call(&srv.base, "SelectMergeSpanProfile", &tempo("{service_name=\"ride\"}", SPAN_A)).await.unwrap();
    let (span_stacks, span_total) = flamegraph_stacks(&span);
    assert_eq!(span_stacks, folded_ns(&srv.base, &format!("/api/v1/profiles/{SPAN_A}")).await);
    assert_eq!(span_total, 14 * PERIOD_NS);
    // Tempo adds labels from the span's resource the sampler never recorded (service.namespace):
    // the span ID still finds its profile.
    let with_namespace =
        call(&srv.base, "SelectMergeSpanProfile", &tempo("{service_name=\"ride\",service_namespace=\"shop\"}", SPAN_A))
            .await
            .unwrap();
    assert_eq!(flamegraph_stacks(&with_namespace).0, span_stacks);
    // A span of another service, or one without samples: the root alone (Grafana: "no data").
    for (selector, id) in [("{service_name=\"other-svc\"}", SPAN_A), ("{service_name=\"ride\"}", "0123456789abcdef")] {
        let empty = call(&srv.base, "SelectMergeSpanProfile", &tempo(selector, id)).await.unwrap();
        let graph = empty.msgs(1).pop().unwrap();
        assert_eq!((graph.strings(1), graph.int_of(3)), (vec!["total".to_owned()], 0));
        assert_eq!(graph.msgs(2).iter().map(|l| l.ints(1)).collect::<Vec<_>>(), [vec![0, 0, 0, 0]]);
    }

    // The same call in Connect's JSON mapping: 64-bit integers as strings, camelCase names.
    let (status, answer) = call_json(
        &srv.base,
        "SelectMergeSpanProfile",
        json!({
            "profileTypeID": CPU, "labelSelector": "{service_name=\"ride\"}", "spanSelector": [SPAN_A],
            "start": (now_ms() - 30_000).to_string(), "end": now_ms() + 30_000, "maxNodes": "100",
        }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let graph = &answer["flamegraph"];
    let names: Vec<String> =
        graph["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect();
    let levels: Vec<Vec<i64>> = graph["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["values"].as_array().unwrap().iter().map(json_int).collect())
        .collect();
    assert!(graph["total"].is_string(), "int64 in JSON is a string: {graph}");
    assert_eq!(stacks_of_levels(&names, &levels), span_stacks);

    // The time series: per step, grouped by span name, adding up to the flame graph's total.
    let series_req = Msg::new()
        .string(1, CPU)
        .string(2, "{service_name=\"ride\"}")
        .int(3, start)
        .int(4, end)
        .string(5, "span_name")
        .double(6, 15.0)
        .int(10, 2);
    let series = call(&srv.base, "SelectSeries", &series_req).await.unwrap().msgs(1);
    let mut by_group = BTreeMap::new();
    let mut order = Vec::new();
    let mut exemplar_spans = Vec::new();
    for s in &series {
        let label =
            s.msgs(1).iter().find(|l| l.string_of(1) == "span_name").map(|l| l.string_of(2)).unwrap_or_default();
        let points = s.msgs(2);
        let mut last = 0;
        for p in &points {
            assert!(p.int_of(2) >= start && p.int_of(2) > last, "points in time order within the range");
            assert_eq!((p.int_of(2) - start) % 15_000, 0, "on the step grid");
            last = p.int_of(2);
            exemplar_spans.extend(p.msgs(4).iter().map(|e| (e.string_of(2), e.string_of(3), e.string_of(6))));
        }
        order.push(label.clone());
        by_group.insert(label, points.iter().map(|p| p.double_of(1)).sum::<f64>().round() as i64);
    }
    assert_eq!(
        by_group,
        BTreeMap::from([
            ("".into(), 5 * PERIOD_NS),
            ("OrderVehicle".into(), 14 * PERIOD_NS),
            ("Payment".into(), 3 * PERIOD_NS)
        ])
    );
    assert_eq!(order, ["OrderVehicle", "", "Payment"], "the largest series first");
    assert!(
        exemplar_spans.contains(&(SPAN_A.into(), SPAN_A.into(), TRACE.into())),
        "span profiles as exemplars: {exemplar_spans:?}"
    );
    // JSON, with the enum by name.
    let (status, answer) = call_json(&srv.base, "SelectSeries", json!({
        "profileTypeID": CPU, "labelSelector": "{service_name=\"other-svc\"}", "start": start.to_string(), "end": end.to_string(),
        "step": 60.0, "aggregation": "TIME_SERIES_AGGREGATION_TYPE_SUM",
    }))
    .await;
    assert_eq!(status, 200, "{answer}");
    let total: f64 =
        answer["series"][0]["points"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap()).sum();
    assert_eq!(total.round() as i64, 9 * PERIOD_NS);

    // Diff (what Profiles Drilldown's comparison calls): two selections, both sides per bar.
    let diff_req = Msg::new()
        .msg(1, merge_request("{service_name=\"ride\", span_name=\"OrderVehicle\"}", start, end))
        .msg(2, merge_request("{service_name=\"ride\", span_name=\"Payment\"}", start, end));
    let d = call(&srv.base, "Diff", &diff_req).await.unwrap().msgs(1).pop().expect("a diff flame graph");
    assert_eq!((d.int_of(5), d.int_of(6)), (14 * PERIOD_NS, 3 * PERIOD_NS), "leftTicks and rightTicks");
    let diff_levels: Vec<Vec<i64>> = d.msgs(2).iter().map(|l| l.ints(1)).collect();
    assert!(diff_levels.iter().all(|l| !l.is_empty() && l.len() % 7 == 0));
    assert_eq!(diff_levels[0], vec![0, 14 * PERIOD_NS, 0, 0, 3 * PERIOD_NS, 0, 0], "the root holds both totals");

    // The merged pprof, in SelectMergeStacktraces' PROFILE_FORMAT_PPROF (field 5 holds
    // PprofProfile{profile = 1}) and from SelectMergeProfile.
    let as_pprof =
        call(&srv.base, "SelectMergeStacktraces", &merge_request("{service_name=\"ride\"}", start, end).int(6, 4))
            .await
            .unwrap();
    let wrapped = as_pprof.msgs(5).pop().expect("the pprof field");
    let wire::Value::Bytes(raw) = &wrapped.0.iter().find(|(f, _)| *f == 1).unwrap().1 else { panic!("profile bytes") };
    let profile = <spanprof_proto::pprof::Profile as prost::Message>::decode(raw.as_slice()).unwrap();
    let cpu_index = sample_type_index(&profile, "cpu", "nanoseconds").unwrap();
    assert_eq!(profile.sample.iter().map(|s| s.value[cpu_index]).sum::<i64>(), 22 * PERIOD_NS);

    let pprof_answer = reqwest::Client::new()
        .post(format!("{}/querier.v1.QuerierService/SelectMergeProfile", srv.base))
        .header("Content-Type", "application/proto")
        .body(merge_request("{service_name=\"ride\"}", start, end).encode())
        .send()
        .await
        .unwrap();
    assert_eq!(pprof_answer.status(), 200);
    let profile =
        <spanprof_proto::pprof::Profile as prost::Message>::decode(pprof_answer.bytes().await.unwrap()).unwrap();
    let cpu_index = sample_type_index(&profile, "cpu", "nanoseconds").unwrap();
    assert_eq!(profile.sample.iter().map(|s| s.value[cpu_index]).sum::<i64>(), 22 * PERIOD_NS);
    srv.stop().await;
}

#[tokio::test]
async fn max_nodes_merges_small_nodes_and_keeps_totals() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let leaves: Vec<String> = (0..60).map(|i| format!("leaf_{i:02}")).collect();
    let specs: Vec<(Vec<&str>, i64)> =
        leaves.iter().enumerate().map(|(i, l)| (vec!["main", "work", l.as_str()], 1 + i as i64)).collect();
    let stacks: Vec<StackSpec<'_>> = specs.iter().map(|(f, n)| (f.as_slice(), *n, &[][..])).collect();
    assert_eq!(push(&srv.base, &push_request("wide", &pprof(&stacks))).await.0, 200);
    let (start, end) = (now_ms() - 3_600_000, now_ms() + 60_000);
    let whole: i64 = (1..=60).sum::<i64>() * PERIOD_NS;
    let answer =
        call(&srv.base, "SelectMergeStacktraces", &merge_request("{service_name=\"wide\"}", start, end).int(5, 10))
            .await
            .unwrap();
    let graph = answer.msgs(1).pop().unwrap();
    let names = graph.strings(1);
    let levels: Vec<Vec<i64>> = graph.msgs(2).iter().map(|l| l.ints(1)).collect();
    let bars: usize = levels.iter().map(|l| l.len() / 4).sum();
    assert!(bars <= 10, "{bars} bars");
    assert!(names.contains(&"other".to_owned()), "the rest merged into `other`: {names:?}");
    assert_eq!(graph.int_of(3), whole, "the total is kept");
    let stacks = stacks_of_levels(&names, &levels);
    assert_eq!(stacks.values().sum::<i64>(), whole, "every sample is still in some bar");
    assert_eq!(stacks["main;work;leaf_59"], 60 * PERIOD_NS, "the largest nodes are kept whole");
    srv.stop().await;
}

#[tokio::test]
async fn bad_requests_get_connect_errors_and_unknown_data_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let (start, end) = (now_ms() - 3_600_000, now_ms());
    // An empty server: Save & test passes, series and flame graphs are empty.
    let types = call(&srv.base, "ProfileTypes", &Msg::new().int(1, 1000).int(2, 4000)).await.unwrap();
    assert!(types.msgs(1).is_empty());
    assert_eq!(call(&srv.base, "GetProfileStats", &Msg::new()).await.unwrap().int_of(1), 0, "nothing ingested yet");
    let series = call(
        &srv.base,
        "SelectSeries",
        &Msg::new().string(1, CPU).string(2, "{}").int(3, start).int(4, end).double(6, 15.0),
    )
    .await
    .unwrap();
    assert!(series.msgs(1).is_empty());
    let empty = call(&srv.base, "SelectMergeStacktraces", &merge_request("{service_name=\"nobody\"}", start, end))
        .await
        .unwrap();
    assert_eq!(flamegraph_stacks(&empty), (BTreeMap::new(), 0));
    // A well-formed type nothing has: empty, not an error.
    let memory = Msg::new().string(1, "memory:alloc_space:bytes:space:bytes").string(2, "{}").int(3, start).int(4, end);
    assert_eq!(flamegraph_stacks(&call(&srv.base, "SelectMergeStacktraces", &memory).await.unwrap()).1, 0);

    for (method, req, says) in [
        ("SelectMergeStacktraces", merge_request("{service_name=ride}", start, end), "quoted value"),
        ("SelectMergeStacktraces", merge_request("{span_name=~\"(\"}", start, end), "regular expression"),
        (
            "SelectMergeStacktraces",
            Msg::new().string(1, "cpu").string(2, "{}").int(3, start).int(4, end),
            "profile type",
        ),
        ("SelectMergeStacktraces", merge_request("{}", end, start), "after end"),
        (
            "SelectMergeSpanProfile",
            Msg::new().string(1, CPU).string(2, "{}").string(3, "not-a-span").int(4, start).int(5, end),
            "span ID",
        ),
        ("SelectMergeStacktraces", merge_request("{}", start, end).string(10, "xyz"), "trace ID"),
        (
            "SelectMergeStacktraces",
            merge_request("{}", start, end).string(10, TRACE).string(11, SPAN_A),
            "exclude each other",
        ),
        ("SelectMergeStacktraces", merge_request("{}", start, end).int(5, -1), "max_nodes"),
        ("SelectSeries", Msg::new().string(1, CPU).string(2, "{}").int(3, 0).int(4, end).double(6, 0.001), "points"),
        ("SelectSeries", Msg::new().string(1, CPU).string(2, "{}").int(3, start).int(4, end).double(6, -1.0), "step"),
        ("LabelValues", Msg::new(), "name"),
    ] {
        let (status, error) = call(&srv.base, method, &req).await.expect_err(method);
        assert_eq!((status, error["code"].as_str()), (400, Some("invalid_argument")), "{method}: {error}");
        assert!(error["message"].as_str().unwrap().contains(says), "{method}: {error}");
    }
    // Not protobuf at all.
    let r = reqwest::Client::new()
        .post(format!("{}/querier.v1.QuerierService/SelectMergeStacktraces", srv.base))
        .header("Content-Type", "application/proto")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // An unknown content type, and an RPC spanprof does not serve.
    let r = reqwest::Client::new()
        .post(format!("{}/querier.v1.QuerierService/ProfileTypes", srv.base))
        .header("Content-Type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let (status, error) =
        call(&srv.base, "Diff", &Msg::new().msg(1, merge_request("{}", start, end))).await.unwrap_err();
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_argument")),
        "a Diff without its right side: {error}"
    );
    let (status, error) = call(&srv.base, "AnalyzeQuery", &Msg::new()).await.unwrap_err();
    assert_eq!((status, error["code"].as_str()), (501, Some("unimplemented")));
    let (status, error) =
        call(&srv.base, "SelectMergeStacktraces", &merge_request("{}", start, end).int(6, 3)).await.unwrap_err();
    assert_eq!((status, error["code"].as_str()), (501, Some("unimplemented")), "the DOT format: {error}");
    // The UI and JSON API are where they were.
    assert_eq!(reqwest::get(srv.url("/")).await.unwrap().status(), 200);
    assert_eq!(get_json(&srv.url("/api/v1/services")).await.0, 200);
    srv.stop().await;
}

#[tokio::test]
async fn gzip_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config(dir.path())).await;
    let leaves: Vec<String> = (0..400).map(|i| format!("some::module::function_{i}")).collect();
    let specs: Vec<Vec<&str>> = leaves.iter().map(|l| vec!["main", l.as_str()]).collect();
    let stacks: Vec<StackSpec<'_>> = specs.iter().map(|f| (f.as_slice(), 1, &[][..])).collect();
    assert_eq!(push(&srv.base, &push_request("big", &pprof(&stacks))).await.0, 200);
    let req = merge_request("{service_name=\"big\"}", now_ms() - 3_600_000, now_ms() + 60_000);
    let r = reqwest::Client::builder()
        .no_gzip()
        .build()
        .unwrap()
        .post(format!("{}/querier.v1.QuerierService/SelectMergeStacktraces", srv.base))
        .header("Content-Type", "application/proto")
        .header("Content-Encoding", "gzip")
        .header("Accept-Encoding", "gzip")
        .body(gzip(&req.encode()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("content-encoding").unwrap(), "gzip");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.bytes().await.unwrap()[..]), &mut raw).unwrap();
    let (stacks, total) = flamegraph_stacks(&Msg::decode(&raw));
    assert_eq!((stacks.len(), total), (400, 400 * PERIOD_NS));
    srv.stop().await;
}
