//! Pyroscope's Connect push API (`push.v1.PusherService/Push`), protobuf or JSON, gzip or not.

use base64::Engine;
use prost::Message;
use spanprof_proto::labels as wire;

use crate::error::{Error, Reject, Result};
use crate::model::{Labels, SeriesBatch};
use crate::proto::push::{PushRequest, PushRequestJson};

use super::{Limits, legacy::valid_label_name};

/// Which body encoding the client used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Proto,
    Json,
}

impl Encoding {
    /// The Connect content types: `application/proto` (also `application/protobuf`,
    /// `application/x-protobuf`) and `application/json`.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match ct.as_str() {
            "application/proto" | "application/protobuf" | "application/x-protobuf" | "application/grpc-web+proto" => {
                Some(Encoding::Proto)
            }
            "application/json" | "" => Some(Encoding::Json),
            _ => None,
        }
    }
}

/// Decodes a push body (already un-gzipped by `Content-Encoding`) into a [`PushRequest`].
pub fn decode_request(body: &[u8], encoding: Encoding) -> Result<PushRequest> {
    match encoding {
        Encoding::Proto => PushRequest::decode(body)
            .map_err(|e| Error::rejected(Reject::InvalidProtobuf, format!("invalid PushRequest protobuf: {e}"))),
        Encoding::Json => {
            let json: PushRequestJson = serde_json::from_slice(body)
                .map_err(|e| Error::rejected(Reject::InvalidJson, format!("invalid PushRequest JSON: {e}")))?;
            let mut req = PushRequest::default();
            for s in json.series {
                let mut series = crate::proto::push::RawProfileSeries {
                    labels: s
                        .labels
                        .into_iter()
                        .map(|l| crate::proto::push::LabelPair { name: l.name, value: l.value })
                        .collect(),
                    samples: Vec::with_capacity(s.samples.len()),
                };
                for sample in s.samples {
                    let raw_profile = base64::engine::general_purpose::STANDARD
                        .decode(sample.raw_profile.as_bytes())
                        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(sample.raw_profile.as_bytes()))
                        .map_err(|e| Error::rejected(Reject::InvalidJson, format!("rawProfile is not base64: {e}")))?;
                    series.samples.push(crate::proto::push::RawSample { raw_profile, id: sample.id });
                }
                req.series.push(series);
            }
            Ok(req)
        }
    }
}

/// Turns a push request into one batch per series. `now_ms` stands in for profiles
/// without a time.
pub fn to_batches(req: PushRequest, limits: &Limits, now_ms: u64) -> Result<Vec<SeriesBatch>> {
    let mut out = Vec::with_capacity(req.series.len());
    for (n, series) in req.series.into_iter().enumerate() {
        let mut labels = Labels::new();
        for l in series.labels {
            if !valid_label_name(&l.name) {
                return Err(Error::rejected(
                    Reject::BadLabel,
                    format!("series {n}: invalid label name {:?}: must match [a-zA-Z_][a-zA-Z0-9_.]*", l.name),
                ));
            }
            labels.insert(l.name, l.value);
        }
        if labels.get(wire::SERVICE_NAME).is_none_or(|s| s.is_empty()) {
            labels.insert(wire::SERVICE_NAME.into(), "unknown_service".into());
        }
        labels.entry(wire::NAME.into()).or_insert_with(|| wire::PROCESS_CPU.into());
        for sample in series.samples {
            let profile = super::pprof::decode(&sample.raw_profile, limits.max_decompressed_bytes)
                .map_err(|e| prefix(e, &format!("series {n}")))?;
            let split = super::pprof::split(&profile, None).map_err(|e| prefix(e, &format!("series {n}")))?;
            let (from_ms, until_ms) = split.time_range_ms.unwrap_or((now_ms, now_ms));
            let mut spans = split.spans;
            spans.retain(|s| !s.stacks.is_empty());
            if spans.is_empty() && split.process.is_empty() {
                continue;
            }
            let mut batch = SeriesBatch {
                labels: labels.clone(),
                period_ns: split.period_ns,
                from_ms,
                until_ms,
                frames: split.frames,
                spans,
                process: split.process,
                dropped_labels: split.dropped,
            };
            super::keep_spans_for_cpu_only(&mut batch);
            out.push(batch);
        }
    }
    Ok(out)
}

fn prefix(e: Error, what: &str) -> Error {
    match e {
        Error::Rejected { reason, message } => Error::rejected(reason, format!("{what}: {message}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::push::{LabelPair, RawProfileSeries, RawSample};

    fn request(profile: Vec<u8>) -> PushRequest {
        PushRequest {
            series: vec![RawProfileSeries {
                labels: vec![
                    LabelPair { name: "service_name".into(), value: "ride".into() },
                    LabelPair { name: "__name__".into(), value: "process_cpu".into() },
                ],
                samples: vec![RawSample { raw_profile: profile, id: "u".into() }],
            }],
        }
    }

    #[test]
    fn proto_and_json_decode_to_the_same_batches() {
        let p = crate::ingest::pprof::tests::build(&[(&["main", "a"], 20_000_000, &[("span_id", "00000000000000ff")])]);
        let req = request(p.encode_to_vec());
        let bytes = req.encode_to_vec();
        let from_proto = to_batches(decode_request(&bytes, Encoding::Proto).unwrap(), &Limits::default(), 5).unwrap();
        let json = serde_json::json!({"series": [{"labels": [{"name": "service_name", "value": "ride"}, {"name": "__name__", "value": "process_cpu"}],
            "samples": [{"rawProfile": base64::engine::general_purpose::STANDARD.encode(p.encode_to_vec()), "ID": "u"}]}]});
        let from_json =
            to_batches(decode_request(json.to_string().as_bytes(), Encoding::Json).unwrap(), &Limits::default(), 5)
                .unwrap();
        assert_eq!(from_proto, from_json);
        assert_eq!(from_proto[0].spans[0].stacks.total(), 2);
        assert_eq!(from_proto[0].service_name(), "ride");
    }

    #[test]
    fn bad_bodies_are_rejected() {
        assert!(decode_request(b"\x0a\xff\xff\xff", Encoding::Proto).is_err());
        assert!(decode_request(b"{", Encoding::Json).is_err());
        let err = to_batches(request(b"not a profile \xff".to_vec()), &Limits::default(), 0).unwrap_err();
        assert!(err.to_string().starts_with("series 0:"), "{err}");
        let mut req = request(vec![]);
        req.series[0].labels.push(LabelPair { name: "bad-name".into(), value: "x".into() });
        assert!(matches!(
            to_batches(req, &Limits::default(), 0),
            Err(Error::Rejected { reason: Reject::BadLabel, .. })
        ));
    }
}
