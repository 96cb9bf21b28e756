//! Pyroscope's query API (`querier.v1.QuerierService`) over Connect, as Grafana's Pyroscope
//! data source (and Tempo's "profiles for this span" link through it) calls it: unary POSTs in
//! protobuf (`application/proto`) or JSON, gzip accepted, errors in Connect's JSON form.
//!
//! Every answer comes from the [`crate::query`] layer the JSON API uses: a selection gives the
//! same stacks and totals through either API. Values follow the profile type's unit: a CPU or
//! wall-clock profile's samples are shown as nanoseconds (samples × period), as Pyroscope does.

use spanprof_proto::labels as wire;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Reject};
use crate::flame::{self, CallTree};
use crate::http::AppState;
use crate::model::{Labels, ProfileId, TraceId};
use crate::proto::querier as pb;
use crate::query::{self, Aggregation, SeriesQuery};
use crate::selector::{Matcher, Op, PROFILE_TYPE_LABEL, ProfileType, Selector};
use crate::store::{ProcessQuery, ProfileStore, Stacks};

/// The service's path prefix.
const SERVICE: &str = "/querier.v1.QuerierService/";
/// Most points one series query may return per series (Prometheus's bound).
const MAX_POINTS: u64 = 11_000;
/// Span profiles a series query looks through for exemplars.
const MAX_EXEMPLAR_CANDIDATES: usize = 10_000;
/// The largest `max_nodes` a request may ask for (Pyroscope's bound).
const MAX_NODES_LIMIT: i64 = 1 << 20;
/// Answers larger than this are gzipped for a client that accepts it.
const GZIP_ABOVE_BYTES: usize = 4 << 10;

type St = State<Arc<AppState>>;

/// The Connect routes of the query API.
pub fn routes() -> Router<Arc<AppState>> {
    let route = |method: &str| format!("{SERVICE}{method}");
    Router::new()
        .route(&route("ProfileTypes"), post(profile_types))
        .route(&route("LabelNames"), post(label_names))
        .route(&route("LabelValues"), post(label_values))
        .route(&route("Series"), post(series_labels))
        .route(&route("SelectMergeStacktraces"), post(select_merge_stacktraces))
        .route(&route("SelectMergeSpanProfile"), post(select_merge_span_profile))
        .route(&route("SelectMergeProfile"), post(select_merge_profile))
        .route(&route("SelectSeries"), post(select_series))
        .route(&route("GetProfileStats"), post(profile_stats))
        .route(&route("Diff"), post(diff))
        .route(&format!("{SERVICE}{{method}}"), post(unimplemented))
}

/// How a request (and so its answer) is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Proto,
    Json,
}

impl Wire {
    fn of(headers: &HeaderMap) -> Result<Self, Error> {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        match ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "application/proto" | "application/protobuf" | "application/x-protobuf" => Ok(Wire::Proto),
            "application/json" => Ok(Wire::Json),
            _ => Err(Error::rejected(
                Reject::UnsupportedMediaType,
                format!("unsupported Content-Type {ct:?}: application/proto or application/json (Connect unary)"),
            )),
        }
    }
}

/// A Connect error: its code and the HTTP status Connect gives it.
fn connect_code(e: &Error) -> (StatusCode, &'static str) {
    match e {
        Error::Rejected { reason: Reject::UnsupportedMediaType, .. } => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unimplemented")
        }
        Error::Rejected { reason: Reject::TooLarge, .. } => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
        Error::Rejected { reason: Reject::UnknownFormat, .. } => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
        Error::Rejected { .. } => (StatusCode::BAD_REQUEST, "invalid_argument"),
        Error::Busy | Error::Overloaded | Error::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn connect_error(s: &AppState, endpoint: &str, e: Error) -> Response {
    let (status, code) = connect_code(&e);
    if code == "internal" {
        tracing::error!(endpoint, error = %e, "query failed");
    } else {
        s.metrics.reject(&format!("query_{code}"));
    }
    let mut response =
        (status, axum::Json(serde_json::json!({ "code": code, "message": e.to_string() }))).into_response();
    if matches!(e, Error::Busy) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

async fn unimplemented(State(s): St, axum::extract::Path(method): axum::extract::Path<String>) -> Response {
    let body = serde_json::json!({
        "code": "unimplemented",
        "message": format!("querier.v1.QuerierService/{method} is not implemented by spanprof-server"),
    });
    s.metrics.reject("query_unimplemented");
    (StatusCode::NOT_IMPLEMENTED, axum::Json(body)).into_response()
}

/// Encodes an answer as the request was encoded; gzipped when large and the client takes it.
fn encoded<T: Message + Serialize>(answer: &T, wire: Wire, gzip: bool) -> Response {
    let (content_type, body) = match wire {
        Wire::Proto => ("application/proto", answer.encode_to_vec()),
        // Serializing plain structs of strings and numbers cannot fail.
        Wire::Json => ("application/json", serde_json::to_vec(answer).unwrap_or_default()),
    };
    raw_answer(content_type, body, gzip)
}

fn raw_answer(content_type: &'static str, body: Vec<u8>, gzip: bool) -> Response {
    let mut headers = vec![(header::CONTENT_TYPE, HeaderValue::from_static(content_type))];
    let body = if gzip && body.len() > GZIP_ABOVE_BYTES {
        let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
        match std::io::Write::write_all(&mut gz, &body).and_then(|()| gz.finish()) {
            Ok(z) => {
                headers.push((header::CONTENT_ENCODING, HeaderValue::from_static("gzip")));
                z
            }
            Err(_) => body,
        }
    } else {
        body
    };
    let mut response = Response::new(axum::body::Body::from(body));
    for (k, v) in headers {
        response.headers_mut().insert(k, v);
    }
    response
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.split(';').next().is_some_and(|e| e.trim() == "gzip")))
}

/// Decodes a request body of either encoding.
pub fn decode<T: Message + Default + DeserializeOwned>(body: &[u8], wire: Wire, what: &str) -> Result<T, Error> {
    match wire {
        Wire::Proto => T::decode(body)
            .map_err(|e| Error::rejected(Reject::InvalidProtobuf, format!("invalid {what} protobuf: {e}"))),
        Wire::Json if body.is_empty() => {
            serde_json::from_slice(b"{}").map_err(|e| Error::rejected(Reject::InvalidJson, e.to_string()))
        }
        Wire::Json => serde_json::from_slice(body)
            .map_err(|e| Error::rejected(Reject::InvalidJson, format!("invalid {what} JSON: {e}"))),
    }
}

/// What an RPC answers: a message, or raw bytes of another message (a pprof).
enum Answer<T> {
    Message(T),
    Pprof(Vec<u8>),
}

/// Runs one unary call: reads and decodes the request, runs `answer` on the blocking pool
/// (heavy calls wait for a turn at the query gate), encodes the answer.
async fn unary<Req, Resp>(
    s: Arc<AppState>,
    req: Request,
    endpoint: &'static str,
    heavy: bool,
    answer: impl FnOnce(&dyn ProfileStore, Req, Wire) -> Result<Answer<Resp>, Error> + Send + 'static,
) -> Response
where
    Req: Message + Default + DeserializeOwned + Send + 'static,
    Resp: Message + Serialize + Send + 'static,
{
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let wire = match Wire::of(&parts.headers) {
        Ok(w) => w,
        Err(e) => return connect_error(&s, endpoint, e),
    };
    let gzip = accepts_gzip(&parts.headers);
    let request: Req = match async {
        let raw = crate::http::read_body(&s, &parts.headers, body).await?;
        let body = crate::http::content_decoded(&s.limits, &parts.headers, raw)?;
        decode(&body, wire, endpoint)
    }
    .await
    {
        Ok(r) => r,
        Err(e) => return connect_error(&s, endpoint, e),
    };
    let _turn = if heavy {
        match s.queries.enter().await {
            Ok(t) => Some(t),
            Err(e) => return connect_error(&s, endpoint, e),
        }
    } else {
        None
    };
    let store = s.store.clone();
    let (result, partial) = crate::http::blocking_partial(move || answer(store.as_ref(), request, wire)).await;
    let mut response = match result {
        Ok(Answer::Message(m)) => encoded(&m, wire, gzip),
        Ok(Answer::Pprof(bytes)) => raw_answer("application/proto", bytes, gzip),
        Err(e) => return connect_error(&s, endpoint, e),
    };
    crate::http::mark_partial_header(&mut response, partial.as_deref());
    s.metrics.observe_query(endpoint, started.elapsed().as_secs_f64());
    response
}

fn bad(msg: String) -> Error {
    Error::rejected(Reject::BadQuery, msg)
}

/// A request's time range, Unix milliseconds; `end` 0 = now.
fn range(start: i64, end: i64) -> Result<(u64, u64), Error> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let start = u64::try_from(start).map_err(|_| bad(format!("start {start} is before 1970")))?;
    let end = if end == 0 { now } else { u64::try_from(end).map_err(|_| bad(format!("end {end} is before 1970")))? };
    if start > end {
        return Err(bad(format!("start {start} is after end {end}")));
    }
    Ok((start, end))
}

/// The selector of a `matchers` list: every matcher of every entry applies (Pyroscope ANDs
/// them); none selects everything.
fn selector_of(matchers: &[String]) -> Result<Selector, Error> {
    let mut all = Selector::all();
    for m in matchers.iter().filter(|m| !m.trim().is_empty()) {
        all.matchers.extend(Selector::parse(m)?.matchers);
    }
    Ok(all)
}

/// `label_selector` narrowed to the profile type `type_id`.
pub fn typed_selector(type_id: &str, label_selector: &str) -> Result<(ProfileType, Selector), Error> {
    let profile_type = ProfileType::parse(type_id)?;
    let selector = Selector::parse(label_selector)?.and(Matcher::new(PROFILE_TYPE_LABEL, Op::Equal, &profile_type.id)?);
    Ok((profile_type, selector))
}

fn profile_type_message(t: ProfileType) -> pb::ProfileType {
    pb::ProfileType {
        id: t.id,
        name: t.name,
        sample_type: t.sample_type,
        sample_unit: t.sample_unit,
        period_type: t.period_type,
        period_unit: t.period_unit,
    }
}

async fn profile_types(State(s): St, req: Request) -> Response {
    unary(s, req, "ProfileTypes", false, |store, _req: pb::ProfileTypesRequest, _wire| {
        let types = query::profile_types(store, &Selector::all())?;
        Ok(Answer::Message(pb::ProfileTypesResponse {
            profile_types: types.into_iter().map(profile_type_message).collect(),
        }))
    })
    .await
}

async fn label_names(State(s): St, req: Request) -> Response {
    unary(s, req, "LabelNames", false, |store, req: pb::LabelNamesRequest, _wire| {
        let names = query::label_names(store, &selector_of(&req.matchers)?)?;
        Ok(Answer::Message(pb::NamesResponse { names }))
    })
    .await
}

async fn label_values(State(s): St, req: Request) -> Response {
    unary(s, req, "LabelValues", false, |store, req: pb::LabelValuesRequest, _wire| {
        if req.name.is_empty() {
            return Err(bad("LabelValues needs the label's name".into()));
        }
        let values = query::label_values(store, &req.name, &selector_of(&req.matchers)?)?;
        Ok(Answer::Message(pb::NamesResponse { names: values }))
    })
    .await
}

/// The label sets of the selected series, cut to `label_names` when given.
async fn series_labels(State(s): St, req: Request) -> Response {
    unary(s, req, "Series", false, |store, req: pb::SeriesRequest, _wire| {
        let selector = selector_of(&req.matchers)?;
        let mut sets: BTreeSet<Labels> = BTreeSet::new();
        for labels in query::series_labels(store)? {
            if !selector.matches(&labels) {
                continue;
            }
            let kept: Labels = if req.label_names.is_empty() {
                labels
            } else {
                labels.into_iter().filter(|(k, _)| req.label_names.contains(k)).collect()
            };
            sets.insert(kept);
        }
        let labels_set = sets
            .into_iter()
            .map(|l| pb::Labels { labels: l.into_iter().map(|(name, value)| pb::LabelPair { name, value }).collect() })
            .collect();
        Ok(Answer::Message(pb::SeriesResponse { labels_set }))
    })
    .await
}

/// Whether any data was stored (a listing of span profiles tells the newest time).
async fn profile_stats(State(s): St, req: Request) -> Response {
    unary(s, req, "GetProfileStats", false, |store, _req: pb::GetProfileStatsRequest, _wire| {
        let newest = store
            .search_spans(&crate::store::SpanQuery { limit: 1, ..Default::default() })?
            .profiles
            .first()
            .map(|p| p.last_seen_ms);
        let ingested = newest.is_some() || !store.services()?.is_empty();
        Ok(Answer::Message(pb::GetProfileStatsResponse {
            data_ingested: ingested,
            oldest_profile_time: 0,
            newest_profile_time: newest.map_or(0, |t| t as i64),
        }))
    })
    .await
}

/// What a flame-graph request selects, besides its type and labels.
#[derive(Default)]
struct Subjects {
    profile_ids: Vec<String>,
    span_ids: Vec<String>,
    trace_ids: Vec<String>,
}

/// The stacks a request selects (on one period) and the value of one sample in the type's unit.
fn load(
    store: &dyn ProfileStore,
    type_id: &str,
    label_selector: &str,
    start: i64,
    end: i64,
    subjects: &Subjects,
    call_site: Option<&pb::StackTraceSelector>,
) -> Result<(Stacks, u64), Error> {
    let (profile_type, selector) = typed_selector(type_id, label_selector)?;
    let (from_ms, until_ms) = range(start, end)?;
    if !subjects.span_ids.is_empty() && !subjects.trace_ids.is_empty() {
        return Err(bad("span_selector and trace_id_selector exclude each other".into()));
    }
    let mut ids = Vec::new();
    for id in &subjects.profile_ids {
        ids.push(ProfileId::parse(id).map_err(|why| bad(format!("profile ID {id:?}: {why}")))?);
    }
    for id in &subjects.span_ids {
        match ProfileId::parse(id) {
            Ok(p @ ProfileId::Span(_)) => ids.push(p),
            _ => return Err(bad(format!("span ID {id:?} is not 16 hex digits"))),
        }
    }
    let mut traces = Vec::new();
    for id in &subjects.trace_ids {
        traces.push(TraceId::parse(id).ok_or_else(|| bad(format!("trace ID {id:?} is not 32 hex digits")))?);
    }
    let (period, mut stacks) = if ids.is_empty() && traces.is_empty() {
        match query::process(store, &ProcessQuery { selector, from_ms, until_ms })? {
            Some(p) => (p.period_ns, p.stacks),
            None => (0, Vec::new()),
        }
    } else {
        let mut profiles = query::span_profiles(store, &ids, &selector)?;
        for t in traces {
            let known: BTreeSet<ProfileId> = profiles.iter().map(|p| p.summary.profile_id.clone()).collect();
            profiles.extend(
                query::trace(store, t, &selector)?.into_iter().filter(|p| !known.contains(&p.summary.profile_id)),
            );
        }
        query::merge_spans(profiles)
    };
    if let Some(site) = call_site.filter(|c| !c.call_site.is_empty()) {
        stacks.retain(|(frames, _)| {
            frames.len() >= site.call_site.len() && site.call_site.iter().zip(frames).all(|(l, f)| l.name == **f)
        });
    }
    let unit = if profile_type.counts_samples() { period.max(1) } else { 1 };
    Ok((stacks, unit))
}

/// `max_nodes` as asked: unset or 0 = the default bound; negative is refused.
fn node_bound(max_nodes: Option<i64>) -> Result<usize, Error> {
    match max_nodes {
        None | Some(0) => Ok(flame::DEFAULT_MAX_NODES),
        Some(n) if (2..=MAX_NODES_LIMIT).contains(&n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => {
            Err(bad(format!("max_nodes {n}: 0 (the default, {}) or 2 to {MAX_NODES_LIMIT}", flame::DEFAULT_MAX_NODES)))
        }
    }
}

/// The flame graph of `stacks` bounded to `max_nodes` bars, values in the type's unit. With no
/// samples: the root alone, which Grafana shows as "no data".
pub fn flamegraph_message(stacks: &Stacks, unit: u64, max_nodes: usize) -> pb::FlameGraph {
    let tree = CallTree::build(stacks.iter().map(|(f, c)| (f.as_slice(), *c)));
    let graph = tree.flamegraph(max_nodes);
    let scale = |v: u64| i64::try_from(v.saturating_mul(unit)).unwrap_or(i64::MAX);
    let levels: Vec<pb::Level> = graph
        .levels
        .iter()
        .map(|level| pb::Level {
            values: level
                .chunks(4)
                .flat_map(|bar| [scale(bar[0]), scale(bar[1]), scale(bar[2]), bar[3] as i64])
                .collect(),
        })
        .collect();
    pb::FlameGraph {
        names: graph.names.iter().map(|n| n.to_string()).collect(),
        levels: if levels.is_empty() { vec![pb::Level { values: vec![0, 0, 0, 0] }] } else { levels },
        total: scale(graph.total),
        max_self: scale(graph.max_self),
    }
}

/// The answer of a flame-graph RPC in the requested format: the flame graph, or the merged
/// pprof (`PROFILE_FORMAT_PPROF`, protobuf only).
fn flamegraph_answer(
    stacks: Stacks,
    unit: u64,
    max_nodes: Option<i64>,
    format: i32,
    wire: Wire,
    pprof_type: &ProfileType,
) -> Result<Answer<pb::FlameGraphResponse>, Error> {
    let bound = node_bound(max_nodes)?;
    match format {
        pb::profile_format::UNSPECIFIED | pb::profile_format::FLAMEGRAPH => {
            Ok(Answer::Message(pb::FlameGraphResponse {
                flamegraph: Some(flamegraph_message(&stacks, unit, bound)),
                pprof: None,
            }))
        }
        pb::profile_format::PPROF if wire == Wire::Proto => {
            let profile = pprof_of(&stacks, unit, pprof_type, 0, 0);
            Ok(Answer::Message(pb::FlameGraphResponse {
                flamegraph: None,
                pprof: Some(pb::PprofProfile { profile: Some(profile) }),
            }))
        }
        pb::profile_format::PPROF => Err(Error::rejected(
            Reject::UnknownFormat,
            "PROFILE_FORMAT_PPROF is served in protobuf only (pprof has no JSON form)",
        )),
        other => Err(Error::rejected(
            Reject::UnknownFormat,
            format!("profile format {other} is not served: PROFILE_FORMAT_FLAMEGRAPH or PROFILE_FORMAT_PPROF"),
        )),
    }
}

/// The pprof of `stacks`: CPU and wall-clock types as samples and nanoseconds, others as their
/// one value.
fn pprof_of(
    stacks: &Stacks,
    unit: u64,
    profile_type: &ProfileType,
    from_ms: u64,
    until_ms: u64,
) -> crate::proto::pprof::Profile {
    let meta = crate::export::ExportMeta {
        title: profile_type.id.clone(),
        period_ns: if profile_type.counts_samples() { unit } else { 0 },
        time_ms: from_ms,
        duration_ms: until_ms.saturating_sub(from_ms),
        labels: Vec::new(),
    };
    let values = if profile_type.counts_samples() {
        crate::export::PprofValues::SamplesAndCpu
    } else {
        crate::export::PprofValues::Single {
            sample_type: profile_type.sample_type.clone(),
            unit: profile_type.sample_unit.clone(),
        }
    };
    crate::export::pprof_profile(stacks, &meta, &values)
}

async fn select_merge_stacktraces(State(s): St, req: Request) -> Response {
    unary(s, req, "SelectMergeStacktraces", true, |store, req: pb::SelectMergeStacktracesRequest, wire| {
        let subjects = Subjects {
            profile_ids: req.profile_id_selector,
            span_ids: req.span_selector,
            trace_ids: req.trace_id_selector,
        };
        let (stacks, unit) = load(
            store,
            &req.profile_type_id,
            &req.label_selector,
            req.start,
            req.end,
            &subjects,
            req.stack_trace_selector.as_ref(),
        )?;
        flamegraph_answer(stacks, unit, req.max_nodes, req.format, wire, &ProfileType::parse(&req.profile_type_id)?)
    })
    .await
}

async fn select_merge_span_profile(State(s): St, req: Request) -> Response {
    unary(s, req, "SelectMergeSpanProfile", true, |store, req: pb::SelectMergeSpanProfileRequest, _wire| {
        let profile_type = ProfileType::parse(&req.profile_type_id)?;
        // Any format but the tree is a flame graph here (as Pyroscope answers this call).
        let format = if req.format == pb::profile_format::TREE { req.format } else { pb::profile_format::FLAMEGRAPH };
        // No span asked for: nothing selected.
        if req.span_selector.is_empty() {
            return flamegraph_answer(Vec::new(), 1, req.max_nodes, format, Wire::Proto, &profile_type);
        }
        let subjects = Subjects { span_ids: req.span_selector, ..Default::default() };
        let (stacks, unit) =
            load(store, &req.profile_type_id, &req.label_selector, req.start, req.end, &subjects, None)?;
        flamegraph_answer(stacks, unit, req.max_nodes, format, Wire::Proto, &profile_type)
    })
    .await
}

/// The merged profile as a pprof (`google.v1.Profile`, not gzipped: Connect carries it).
async fn select_merge_profile(State(s): St, req: Request) -> Response {
    let endpoint = "SelectMergeProfile";
    unary(
        s,
        req,
        endpoint,
        true,
        |store, req: pb::SelectMergeProfileRequest, _wire| -> Result<Answer<pb::NamesResponse>, Error> {
            let subjects = Subjects {
                profile_ids: req.profile_id_selector,
                trace_ids: req.trace_id_selector,
                ..Default::default()
            };
            let profile_type = ProfileType::parse(&req.profile_type_id)?;
            let (stacks, unit) = load(
                store,
                &req.profile_type_id,
                &req.label_selector,
                req.start,
                req.end,
                &subjects,
                req.stack_trace_selector.as_ref(),
            )?;
            let (from_ms, until_ms) = range(req.start, req.end)?;
            Ok(Answer::Pprof(pprof_of(&stacks, unit, &profile_type, from_ms, until_ms).encode_to_vec()))
        },
    )
    .await
}

async fn select_series(State(s): St, req: Request) -> Response {
    unary(s, req, "SelectSeries", true, |store, req: pb::SelectSeriesRequest, _wire| {
        let (profile_type, selector) = typed_selector(&req.profile_type_id, &req.label_selector)?;
        let (from_ms, until_ms) = range(req.start, req.end)?;
        if !(req.step.is_finite() && req.step >= 0.001) {
            return Err(bad(format!("step {} s: at least 0.001 s (1 ms)", req.step)));
        }
        let step_ms = ((req.step * 1000.0).round() as u64).max(1);
        if (until_ms - from_ms) / step_ms > MAX_POINTS {
            return Err(bad(format!(
                "{} points per series at a step of {} s; at most {MAX_POINTS}: use a larger step",
                (until_ms - from_ms) / step_ms,
                req.step
            )));
        }
        let q = SeriesQuery {
            process: ProcessQuery { selector: selector.clone(), from_ms, until_ms },
            profile_type: profile_type.clone(),
            step_ms,
            group_by: req.group_by.clone(),
            aggregation: if req.aggregation == pb::aggregation::AVERAGE {
                Aggregation::Average
            } else {
                Aggregation::Sum
            },
            limit: req.limit.map_or(0, |l| usize::try_from(l.max(0)).unwrap_or(0)),
        };
        let found = query::series(store, &q)?;
        let mut series: Vec<pb::Series> = found
            .into_iter()
            .map(|s| pb::Series {
                labels: s.labels.into_iter().map(|(name, value)| pb::LabelPair { name, value }).collect(),
                points: s
                    .points
                    .into_iter()
                    .map(|(t, value)| pb::Point { value, timestamp: t as i64, exemplars: Vec::new() })
                    .collect(),
            })
            .collect();
        let wants_exemplars = matches!(req.exemplar_type, pb::exemplar_type::INDIVIDUAL | pb::exemplar_type::SPAN);
        if wants_exemplars && profile_type.id == crate::selector::CPU_PROFILE_TYPE {
            add_exemplars(store, &selector, from_ms, until_ms, step_ms, &req.group_by, &mut series)?;
        }
        Ok(Answer::Message(pb::SelectSeriesResponse { series }))
    })
    .await
}

/// Two selections' diff flame graph, each side's values in its unit.
async fn diff(State(s): St, req: Request) -> Response {
    unary(s, req, "Diff", true, |store, req: pb::DiffRequest, _wire| {
        let side = |r: Option<pb::SelectMergeStacktracesRequest>, which: &str| -> Result<(Stacks, u64, usize), Error> {
            let r = r.ok_or_else(|| bad(format!("Diff needs its {which} selection")))?;
            let subjects = Subjects {
                profile_ids: r.profile_id_selector,
                span_ids: r.span_selector,
                trace_ids: r.trace_id_selector,
            };
            let (stacks, unit) = load(
                store,
                &r.profile_type_id,
                &r.label_selector,
                r.start,
                r.end,
                &subjects,
                r.stack_trace_selector.as_ref(),
            )?;
            Ok((stacks, unit, node_bound(r.max_nodes)?))
        };
        let (left, left_unit, left_bound) = side(req.left, "left")?;
        let (right, right_unit, right_bound) = side(req.right, "right")?;
        let graph = crate::diff::diff(&left, &right, left_bound.max(right_bound));
        let scale = |v: u64, unit: u64| i64::try_from(v.saturating_mul(unit)).unwrap_or(i64::MAX);
        let levels = graph
            .levels
            .iter()
            .map(|level| pb::Level {
                values: level
                    .chunks(7)
                    .flat_map(|b| {
                        [
                            scale(b[0], left_unit),
                            scale(b[1], left_unit),
                            scale(b[2], left_unit),
                            scale(b[3], right_unit),
                            scale(b[4], right_unit),
                            scale(b[5], right_unit),
                            b[6] as i64,
                        ]
                    })
                    .collect(),
            })
            .collect();
        let (left_ticks, right_ticks) = (scale(graph.left_ticks, left_unit), scale(graph.right_ticks, right_unit));
        let max_self = graph
            .levels
            .iter()
            .flat_map(|l| l.chunks(7))
            .map(|b| scale(b[2], left_unit).max(scale(b[5], right_unit)))
            .max()
            .unwrap_or(0);
        Ok(Answer::Message(pb::DiffResponse {
            flamegraph: Some(pb::FlameGraphDiff {
                names: graph.names.iter().map(|n| n.to_string()).collect(),
                levels,
                total: left_ticks.saturating_add(right_ticks),
                max_self,
                left_ticks,
                right_ticks,
            }),
        }))
    })
    .await
}

/// Puts on each point the heaviest span profile that ended in its step (its ID is the span ID
/// to open), from the newest span profiles of the range.
fn add_exemplars(
    store: &dyn ProfileStore,
    selector: &Selector,
    from_ms: u64,
    until_ms: u64,
    step_ms: u64,
    group_by: &[String],
    series: &mut [pb::Series],
) -> Result<(), Error> {
    let spans = query::spans_in_range(store, selector, from_ms, until_ms, MAX_EXEMPLAR_CANDIDATES)?;
    for span in spans {
        let labels = query::span_labels(&span);
        let group: Vec<(&String, Option<&String>)> = group_by.iter().map(|g| (g, labels.get(g))).collect();
        let Some(s) = series
            .iter_mut()
            .find(|s| group.iter().all(|(g, v)| s.labels.iter().find(|l| l.name == **g).map(|l| &l.value) == *v))
        else {
            continue;
        };
        let step = query::step_of(span.last_seen_ms.clamp(from_ms, until_ms), from_ms, until_ms, step_ms);
        let Some(point) = s.points.iter_mut().find(|p| p.timestamp as u64 == step) else { continue };
        let value = i64::try_from(span.samples.saturating_mul(span.period_ns)).unwrap_or(i64::MAX);
        if point.exemplars.first().is_some_and(|e| e.value >= value) {
            continue;
        }
        let id = span.profile_id.to_string();
        let on_series: BTreeSet<&str> = s.labels.iter().map(|l| l.name.as_str()).collect();
        let own = [(wire::SERVICE_NAME, span.service_name.clone()), (wire::SPAN_NAME, span.span_name.clone())];
        point.exemplars = vec![pb::Exemplar {
            timestamp: span.last_seen_ms as i64,
            span_id: if span.profile_id.is_span() { id.clone() } else { String::new() },
            profile_id: id,
            value,
            labels: own
                .into_iter()
                .filter(|(name, value)| !on_series.contains(name) && !value.is_empty())
                .map(|(name, value)| pb::LabelPair { name: name.into(), value })
                .collect(),
            trace_id: span.trace_id.map(|t| t.to_string()).unwrap_or_default(),
        }];
    }
    Ok(())
}
