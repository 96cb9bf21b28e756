//! What one upload interval becomes on the wire (pure): a pprof per series, built with
//! `spanprof-proto`'s builder and labelled with the span each sample ran for, gzipped into one
//! Pyroscope `PushRequest`.

use std::io::Write;

use ahash::AHashMap as HashMap;
use prost::Message;
use spanprof_proto::ids::{SpanId, TraceId};
use spanprof_proto::labels as wire;

use crate::aggregate::{Series, StackKey};
use crate::join::SpanLabels;
use crate::proto::{self, Line, Profile, ProfileBuilder};
use crate::symbolize::Names;
use crate::unwind::FrameKey;

/// Time range and sampling period of a profile.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub period_ns: i64,
    pub time_unix_ns: i64,
    pub duration_ns: i64,
}

/// Builds the pprof of one service's interval: sample types `cpu`/`nanoseconds` and
/// `samples`/`count`, period `1e9 / Hz`, and the sample labels `span_id`, `trace_id`,
/// `span_name` on span samples.
pub fn build_profile(stacks: &HashMap<StackKey, u64>, names: impl Fn(FrameKey) -> Names, timing: Timing) -> Profile {
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds"), ("samples", "count")])
        .period("cpu", "nanoseconds", timing.period_ns)
        .time(timing.time_unix_ns, timing.duration_ns);
    b.reserve_samples(stacks.len());
    let mut locations: HashMap<FrameKey, u64> = HashMap::new();
    // Deterministic output: sort the stacks.
    let mut sorted: Vec<_> = stacks.iter().collect();
    sorted.sort_by(|a, b| (&a.0.span, &a.0.frames).cmp(&(&b.0.span, &b.0.frames)));
    // The labels of the span the last sample had: a span's samples are adjacent once sorted.
    let mut span_labels: Option<(&SpanLabels, Vec<proto::Label>)> = None;
    for (key, &n) in sorted {
        let mut location_id = Vec::with_capacity(key.frames.len());
        for &f in key.frames.iter() {
            let id = match locations.get(&f) {
                Some(&id) => id,
                None => {
                    let lines = names(f)
                        .iter()
                        .map(|name| Line { function_id: b.function(name), line: 0, column: 0 })
                        .collect();
                    let id = b.location(0, f.addr, lines);
                    locations.insert(f, id);
                    id
                }
            };
            location_id.push(id);
        }
        let label = match &key.span {
            None => Vec::new(),
            Some(span) => match &span_labels {
                Some((last, labels)) if *last == span => labels.clone(),
                _ => {
                    let mut labels = vec![
                        b.label(wire::SPAN_ID, &SpanId(span.span_id).to_string()),
                        b.label(wire::TRACE_ID, &TraceId(span.trace_id).to_string()),
                    ];
                    if !span.name.is_empty() {
                        labels.push(b.label(wire::SPAN_NAME, &span.name));
                    }
                    span_labels = Some((span, labels.clone()));
                    labels
                }
            },
        };
        let n = n as i64;
        b.sample(location_id, vec![n.saturating_mul(timing.period_ns), n], label);
    }
    b.finish()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4 + 64), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

/// The labels of a series: `__name__`, `service_name`, the pod-wide `extra` labels (empty ones left
/// out), with the series' own `container` in place of the sidecar's.
pub fn series_labels(series: &Series, extra: &[(String, String)]) -> Vec<proto::LabelPair> {
    let mut labels = vec![
        proto::LabelPair { name: wire::NAME.into(), value: wire::PROCESS_CPU.into() },
        proto::LabelPair { name: wire::SERVICE_NAME.into(), value: series.service.to_string() },
    ];
    let container = series.container.as_deref();
    labels.extend(extra.iter().filter_map(|(k, v)| {
        let v = match container {
            Some(c) if k == "container" => c,
            _ => v.as_str(),
        };
        (!v.is_empty()).then(|| proto::LabelPair { name: k.clone(), value: v.to_owned() })
    }));
    if let Some(c) = container
        && !c.is_empty()
        && !extra.iter().any(|(k, _)| k == "container")
    {
        labels.push(proto::LabelPair { name: "container".into(), value: c.to_owned() });
    }
    labels
}

/// One `PushRequest` (protobuf) with a gzipped pprof per service.
pub fn push_request(profiles: Vec<(Vec<proto::LabelPair>, Profile)>, upload_id: &str) -> Vec<u8> {
    let series = profiles
        .into_iter()
        .map(|(labels, p)| proto::RawProfileSeries {
            labels,
            samples: vec![proto::RawSample { raw_profile: gzip(&p.encode_to_vec()), id: upload_id.to_owned() }],
        })
        .collect();
    proto::PushRequest { series }.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregate;
    use crate::join::SpanLabels;
    use std::sync::Arc;

    fn k(m: u32, a: u64) -> FrameKey {
        FrameKey { module: m, addr: a }
    }

    fn names(f: FrameKey) -> Names {
        match f.addr {
            1 => Arc::from([Arc::from("inlined_leaf"), Arc::from("find_nearest_vehicle")]),
            a => Arc::from([Arc::from(format!("f{a}"))]),
        }
    }

    #[test]
    fn a_process_container_replaces_the_sidecar_wide_one() {
        let names = |labels: Vec<proto::LabelPair>| -> Vec<(String, String)> {
            labels.into_iter().map(|l| (l.name, l.value)).collect()
        };
        let series = Series { service: Arc::from("ride"), container: Some(Arc::from("api")) };
        let pod = [("pod".to_owned(), "p-1".to_owned()), ("container".to_owned(), String::new())];
        let want = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let with_api =
            want(&[("__name__", "process_cpu"), ("service_name", "ride"), ("pod", "p-1"), ("container", "api")]);
        assert_eq!(names(series_labels(&series, &pod)), with_api);
        // Without a sidecar-wide container label, the process's own is still added.
        assert_eq!(names(series_labels(&series, &pod[..1])), with_api);
        // A process that names no container keeps the sidecar-wide label (empty: left out).
        assert_eq!(
            names(series_labels(&Series::service("ride"), &pod)),
            want(&[("__name__", "process_cpu"), ("service_name", "ride"), ("pod", "p-1")])
        );
    }

    #[test]
    fn aggregates_and_builds_a_labelled_pprof() {
        let svc = Arc::new(Series::service("ride"));
        let span = SpanLabels { span_id: 0xab, trace_id: 0xcd, name: Arc::from("OrderVehicle") };
        let mut agg = Aggregate::default();
        for _ in 0..3 {
            agg.add(&svc, Some(span.clone()), &[k(0, 1), k(0, 2), k(0, 3)]);
        }
        agg.add(&svc, None, &[k(0, 2), k(0, 3)]);
        agg.add(&Arc::new(Series::service("other")), None, &[k(1, 9)]);
        assert_eq!(agg.samples(), 5);
        assert_eq!(agg.series.len(), 2);
        assert_eq!(agg.frames().count(), 3 + 2 + 1);

        let timing =
            Timing { period_ns: 10_000_000, time_unix_ns: 1_700_000_000_000_000_000, duration_ns: 10_000_000_000 };
        let p = build_profile(&agg.series[&svc], names, timing);
        let st = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(st(0), "");
        assert_eq!((st(p.sample_type[0].r#type), st(p.sample_type[0].unit)), ("cpu", "nanoseconds"));
        assert_eq!((st(p.sample_type[1].r#type), st(p.sample_type[1].unit)), ("samples", "count"));
        assert_eq!(p.period, 10_000_000);
        assert_eq!(p.sample.len(), 2);
        let spanned = p.sample.iter().find(|s| !s.label.is_empty()).unwrap();
        assert_eq!(spanned.value, vec![30_000_000, 3]);
        let labels: Vec<(&str, &str)> = spanned.label.iter().map(|l| (st(l.key), st(l.str))).collect();
        assert_eq!(
            labels,
            vec![
                ("span_id", "00000000000000ab"),
                ("trace_id", "000000000000000000000000000000cd"),
                ("span_name", "OrderVehicle")
            ]
        );
        // Leaf first; the leaf location carries the inlined function first.
        let leaf = &p.location[(spanned.location_id[0] - 1) as usize];
        let fname = |id: u64| st(p.function[(id - 1) as usize].name);
        assert_eq!(
            leaf.line.iter().map(|l| fname(l.function_id)).collect::<Vec<_>>(),
            vec!["inlined_leaf", "find_nearest_vehicle"]
        );
        // Locations and functions are shared between samples.
        assert_eq!(p.location.len(), 3);
        assert_eq!(p.function.len(), 4);
        let plain = p.sample.iter().find(|s| s.label.is_empty()).unwrap();
        assert_eq!(plain.value, vec![10_000_000, 1]);

        let body = push_request(
            vec![(
                series_labels(
                    &Series::service("ride"),
                    &[
                        ("pod".into(), "p-1".into()),
                        ("container".into(), "sidecar-wide".into()),
                        ("node".into(), String::new()),
                    ],
                ),
                p,
            )],
            "u1",
        );
        let req = proto::PushRequest::decode(body.as_slice()).unwrap();
        let labels: Vec<_> = req.series[0].labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
        assert_eq!(
            labels,
            vec![("__name__", "process_cpu"), ("service_name", "ride"), ("pod", "p-1"), ("container", "sidecar-wide")]
        );
        let raw = &req.series[0].samples[0].raw_profile;
        assert_eq!(&raw[..2], &[0x1f, 0x8b]);
        let mut d = flate2::read::GzDecoder::new(raw.as_slice());
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut out).unwrap();
        assert_eq!(Profile::decode(out.as_slice()).unwrap().sample.len(), 2);
    }
}
