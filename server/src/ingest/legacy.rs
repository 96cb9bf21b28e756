//! Pyroscope's legacy `POST /ingest`: `name=app.cpu{k=v,...}`, `from`/`until` (unit by digit
//! count), `format` = `folded` (default), `lines` or `pprof` (raw or multipart), `sampleRate`.

use spanprof_proto::labels as wire;
use std::collections::HashMap;

use crate::error::{Error, Reject, Result};
use crate::model::{DroppedLabels, Frames, Labels, ProfileId, SeriesBatch, SpanContribution, StackCounts, TraceId};

use super::Limits;

/// The parsed query string of an `/ingest` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestParams {
    pub labels: Labels,
    pub from_ms: u64,
    pub until_ms: u64,
    pub format: Format,
    pub period_ns: u64,
    /// The span named by a `span_id`/`profile_id` label: the whole payload belongs to it.
    pub span: Option<SpanContribution>,
    /// Whether the request said the profile type (`app.wall`, a `__name__` label); when not,
    /// `__name__` is `process_cpu` unless a pprof payload measures something else.
    pub typed: bool,
}

/// Payload formats of `/ingest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Folded,
    Lines,
    Pprof,
}

/// Profile type suffixes Pyroscope appends to the app name (`app.cpu`), mapped to `__name__`.
const TYPE_SUFFIXES: &[(&str, &str)] = &[
    (".cpu", wire::PROCESS_CPU),
    (".itimer", wire::PROCESS_CPU),
    (".wall", "wall"),
    (".alloc_objects", "memory"),
    (".alloc_space", "memory"),
    (".inuse_objects", "memory"),
    (".inuse_space", "memory"),
];

/// Parses `/ingest`'s query string. `now_ms` is used when `from`/`until` are absent.
pub fn parse_params(query: &str, now_ms: u64) -> Result<IngestParams> {
    let q: HashMap<String, String> = form_pairs(query);
    let name = q
        .get("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::rejected(Reject::BadName, "missing `name` (e.g. name=myapp.cpu{env=prod})"))?;
    let (app, mut labels) = parse_name(name)?;

    let mut span = None;
    let span_label = labels.remove(wire::SPAN_ID).or_else(|| labels.remove(wire::PROFILE_ID));
    let trace_label = labels.remove(wire::TRACE_ID);
    let span_name = labels.remove(wire::SPAN_NAME);
    if let Some(v) = span_label {
        let id = ProfileId::parse(&v).map_err(|why| {
            Error::rejected(Reject::BadLabel, format!("span_id/profile_id {v:?} is no profile ID: {why}"))
        })?;
        let trace_id = trace_label
            .map(|t| {
                TraceId::parse(&t)
                    .ok_or_else(|| Error::rejected(Reject::BadLabel, format!("trace_id {t:?} is not 32 hex digits")))
            })
            .transpose()?;
        span = Some(SpanContribution { profile_id: id, trace_id, span_name, stacks: StackCounts::new() });
    }

    let mut kind = wire::PROCESS_CPU;
    let mut service = app.as_str();
    let mut typed = labels.contains_key(wire::NAME);
    for (suffix, k) in TYPE_SUFFIXES {
        if let Some(s) = app.strip_suffix(suffix) {
            service = s;
            kind = k;
            typed = true;
            break;
        }
    }
    labels.entry(wire::SERVICE_NAME.into()).or_insert_with(|| service.to_owned());
    labels.entry(wire::NAME.into()).or_insert_with(|| kind.to_owned());

    let until_ms = match q.get("until") {
        Some(v) => parse_timestamp_ms(v, "until")?,
        None => now_ms,
    };
    let from_ms = match q.get("from") {
        Some(v) => parse_timestamp_ms(v, "from")?,
        None => until_ms.min(now_ms),
    };
    if from_ms > until_ms {
        return Err(Error::rejected(
            Reject::BadTimestamp,
            format!("`from` ({from_ms} ms) is after `until` ({until_ms} ms)"),
        ));
    }

    let format = match q.get("format").map(String::as_str) {
        None | Some("") | Some("folded") => Format::Folded,
        Some("lines") => Format::Lines,
        Some("pprof") => Format::Pprof,
        Some(other) => {
            return Err(Error::rejected(
                Reject::UnknownFormat,
                format!("unsupported format {other:?}: supported are folded, lines and pprof"),
            ));
        }
    };
    let period_ns = match q.get("sampleRate") {
        None => crate::model::DEFAULT_PERIOD_NS,
        Some(r) => match r.parse::<u64>() {
            Ok(hz) if (1..=1_000_000).contains(&hz) => 1_000_000_000 / hz,
            _ => {
                return Err(Error::rejected(
                    Reject::BadQuery,
                    format!("sampleRate {r:?} is not a rate in 1..=1000000 Hz"),
                ));
            }
        },
    };
    if let Some(u) = q.get("units")
        && !matches!(
            u.as_str(),
            "" | "samples" | "objects" | "bytes" | "goroutines" | "lock_samples" | "lock_nanoseconds"
        )
    {
        return Err(Error::rejected(Reject::BadQuery, format!("unknown units {u:?}")));
    }
    if let Some(a) = q.get("aggregationType")
        && !matches!(a.as_str(), "" | "sum" | "average")
    {
        return Err(Error::rejected(Reject::BadQuery, format!("unknown aggregationType {a:?}: sum or average")));
    }
    Ok(IngestParams { labels, from_ms, until_ms, format, period_ns, span, typed })
}

/// Decodes `application/x-www-form-urlencoded` pairs; later keys win.
fn form_pairs(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_.]*`.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Parses `app.cpu{k=v,k2=v2}` into the app name and its labels.
pub fn parse_name(name: &str) -> Result<(String, Labels)> {
    let bad = |msg: String| Error::rejected(Reject::BadName, format!("invalid name {name:?}: {msg}"));
    let (app, rest) = match name.find('{') {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (name, None),
    };
    let app = app.trim();
    if app.is_empty() {
        return Err(bad("empty application name".into()));
    }
    if app.contains(['}', ',', '=']) {
        return Err(bad("application name has `}`, `,` or `=`".into()));
    }
    let mut labels = Labels::new();
    if let Some(rest) = rest {
        let body = rest.strip_suffix('}').ok_or_else(|| bad("missing closing `}`".into()))?;
        for pair in body.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| bad(format!("label {pair:?} has no `=`")))?;
            let (k, v) = (k.trim(), v.trim());
            if !valid_label_name(k) {
                return Err(Error::rejected(
                    Reject::BadLabel,
                    format!("invalid label name {k:?}: must match [a-zA-Z_][a-zA-Z0-9_.]*"),
                ));
            }
            if v.contains(['{', '}']) {
                return Err(Error::rejected(Reject::BadLabel, format!("label {k:?} value has a brace")));
            }
            labels.insert(k.to_owned(), v.to_owned());
        }
    }
    Ok((app.to_owned(), labels))
}

/// Parses a Unix timestamp whose unit is told by its digit count: up to 10 digits seconds,
/// 13 milliseconds, 16 microseconds, 19 nanoseconds. Returns milliseconds.
pub fn parse_timestamp_ms(v: &str, what: &str) -> Result<u64> {
    let bad = || Error::rejected(Reject::BadTimestamp, format!("`{what}` {v:?} is not a Unix timestamp"));
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = v.parse().map_err(|_| bad())?;
    Ok(match v.len() {
        0..=10 => n.saturating_mul(1000),
        11..=13 => n,
        14..=16 => n / 1000,
        _ => n / 1_000_000,
    })
}

/// Parses folded stacks (`a;b;c 12` per line); with `lines`, each line is one sample.
pub fn parse_stacks(body: &[u8], format: Format, frames: &mut Frames) -> Result<StackCounts> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Error::rejected(Reject::InvalidFolded, format!("body is not UTF-8: {e}")))?;
    let mut out = StackCounts::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (stack, count) = match format {
            Format::Lines => (line, 1),
            _ => {
                let bad = || {
                    Error::rejected(
                        Reject::InvalidFolded,
                        format!("line {}: expected `frame;frame;... count`, got {line:?}", n + 1),
                    )
                };
                let (stack, count) = line.rsplit_once(' ').ok_or_else(bad)?;
                (stack, count.trim().parse::<u64>().map_err(|_| bad())?)
            }
        };
        let mut ids: Vec<u32> = stack.split(';').filter(|f| !f.is_empty()).map(|f| frames.intern(f)).collect();
        crate::model::bound_depth(&mut ids, frames);
        out.add(&ids, count);
    }
    Ok(out)
}

/// Extracts the `profile` part (pprof) of a `multipart/form-data` body.
pub async fn multipart_profile(body: bytes::Bytes, boundary: &str) -> Result<Vec<u8>> {
    let bad = |e: String| Error::rejected(Reject::InvalidMultipart, format!("invalid multipart body: {e}"));
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut profile = None;
    while let Some(field) = mp.next_field().await.map_err(|e| bad(e.to_string()))? {
        let name = field.name().unwrap_or_default().to_owned();
        let data = field.bytes().await.map_err(|e| bad(e.to_string()))?;
        if name == "profile" {
            profile = Some(data.to_vec());
        } else if name == "sample_type_config" {
            serde_json::from_slice::<serde_json::Value>(&data)
                .map_err(|e| Error::rejected(Reject::InvalidJson, format!("sample_type_config is not JSON: {e}")))?;
        }
    }
    profile.ok_or_else(|| bad("no `profile` part".into()))
}

/// Builds the batch of one `/ingest` request from its params and decoded payload.
pub fn build_batch(params: IngestParams, payload: &[u8], limits: &Limits) -> Result<SeriesBatch> {
    let IngestParams { mut labels, from_ms, until_ms, format, period_ns, span, typed } = params;
    let mut dropped_labels = DroppedLabels::default();
    let (period_ns, frames, mut spans, process) = match format {
        Format::Folded | Format::Lines => {
            let mut frames = Frames::default();
            let stacks = parse_stacks(payload, format, &mut frames)?;
            match span {
                Some(mut s) => {
                    s.stacks = stacks;
                    (period_ns, frames, vec![s], StackCounts::new())
                }
                None => (period_ns, frames, vec![], stacks),
            }
        }
        Format::Pprof => {
            let profile = super::pprof::decode(payload, limits.max_decompressed_bytes)?;
            let split = super::pprof::split(&profile, span.as_ref())?;
            dropped_labels = split.dropped;
            // Pyroscope's Node.js client sends its wall-time and heap profiles without a type
            // suffix: the profile says what it measures, as Pyroscope reads it.
            if !typed {
                labels.insert(wire::NAME.into(), split.measure.profile_type().into());
            }
            (split.period_ns, split.frames, split.spans, split.process)
        }
    };
    spans.retain(|s| !s.stacks.is_empty());
    let mut batch = SeriesBatch { labels, period_ns, from_ms, until_ms, frames, spans, process, dropped_labels };
    super::keep_spans_for_cpu_only(&mut batch);
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_with_labels_and_span() {
        let p = parse_params(
            "name=ride.cpu%7Bspan_id%3D00f067aa0ba902b7%2Cregion%3Deu%7D&from=1764097000&until=1764097010&sampleRate=100",
            0,
        )
        .unwrap();
        assert_eq!(p.labels["service_name"], "ride");
        assert_eq!(p.labels["region"], "eu");
        assert_eq!(p.labels["__name__"], "process_cpu");
        assert!(!p.labels.contains_key("span_id"));
        assert_eq!(p.span.unwrap().profile_id.to_string(), "00f067aa0ba902b7");
        assert_eq!((p.from_ms, p.until_ms), (1_764_097_000_000, 1_764_097_010_000));
        assert_eq!(p.format, Format::Folded);
    }

    #[test]
    fn timestamp_units_by_digit_count() {
        assert_eq!(parse_timestamp_ms("1764097000", "from").unwrap(), 1_764_097_000_000);
        assert_eq!(parse_timestamp_ms("1764097000123", "from").unwrap(), 1_764_097_000_123);
        assert_eq!(parse_timestamp_ms("1764097000123456", "from").unwrap(), 1_764_097_000_123);
        assert_eq!(parse_timestamp_ms("1764097000123456789", "from").unwrap(), 1_764_097_000_123);
        for bad in ["", "-5", "12a", "12345678901234567890"] {
            assert!(parse_timestamp_ms(bad, "from").is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        let reason = |q: &str| match parse_params(q, 1) {
            Err(Error::Rejected { reason, .. }) => reason,
            other => panic!("{q}: {other:?}"),
        };
        assert_eq!(reason("from=1"), Reject::BadName);
        assert_eq!(reason("name=app%7B1bad%3Dx%7D"), Reject::BadLabel);
        assert_eq!(reason("name=app%7Bk%3Dv"), Reject::BadName);
        assert_eq!(reason("name=app&from=xyz"), Reject::BadTimestamp);
        assert_eq!(reason("name=app&from=20&until=10"), Reject::BadTimestamp);
        assert_eq!(reason("name=app&format=jfr"), Reject::UnknownFormat);
        assert_eq!(reason("name=app%7Bspan_id%3D0000000000000000%7D"), Reject::BadLabel);
        assert_eq!(reason("name=app%7Bprofile_id%3Da%01b%7D"), Reject::BadLabel);
        assert_eq!(reason("name=app&sampleRate=0"), Reject::BadQuery);
    }

    #[test]
    fn folded_and_lines() {
        let mut f = Frames::default();
        let s = parse_stacks(b"a;b;c 12\n\na;b;c 3\nx 1\r\n", Format::Folded, &mut f).unwrap();
        assert_eq!(s.total(), 16);
        assert_eq!(s.len(), 2);
        let s = parse_stacks(b"a;b\na;b\nc\n", Format::Lines, &mut f).unwrap();
        assert_eq!(s.total(), 3);
        let err = parse_stacks(b"a;b;c twelve\n", Format::Folded, &mut f).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        // Frames with spaces: the count is after the last space.
        let mut f = Frames::default();
        let s = parse_stacks(b"std::vec::Vec<T> as Drop;main 4\n", Format::Folded, &mut f).unwrap();
        assert_eq!(f.name(s.iter().next().unwrap().0[0]), "std::vec::Vec<T> as Drop");
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%7Bb%7D+c%2"), "a{b} c%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
