//! The HTTP surface on one port: ingest (Pyroscope protocols), the JSON query API with exports,
//! the web UI, and `/healthz`, `/readyz`, `/metrics`.

use spanprof_proto::labels as wire;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::json;

use crate::aggregate::AggregateQuery;
use crate::error::{Error, Reject};
use crate::export::{self, ExportMeta};
use crate::flame;
use crate::gate::{QueryGate, QueryTurn};
use crate::ingest::{self, Limits};
use crate::metrics::{LabelLabel, Metrics, ProtocolLabel, ResultLabel};
use crate::model::{DroppedLabels, ProfileId, SeriesBatch, TraceId};
use crate::query;
use crate::selector::{self, Matcher, Selector};
use crate::store::{Cursor, ProcessQuery, ProfileStore, SpanQuery, SpanSummary, Stacks};

/// Shared state of every handler.
pub struct AppState {
    pub store: Arc<dyn ProfileStore>,
    pub limits: Limits,
    pub metrics: Metrics,
    pub ready: AtomicBool,
    /// The bound on heavy queries running and waiting at once.
    pub queries: Arc<QueryGate>,
    /// The local store in front of object storage, when there is one (its status, and its
    /// answers to peers).
    pub layered: Option<Arc<crate::store::layered::LayeredStore>>,
}

type St = State<Arc<AppState>>;

/// The whole HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ingest", post(ingest_legacy))
        .route("/push.v1.PusherService/Push", post(push))
        .route(crate::store::peers::LOCAL_PATH, post(peer_local))
        .route("/api/v1/profiles", get(list_profiles))
        .route("/api/v1/profiles/{id}", get(get_profile))
        .route("/api/v1/traces/{id}", get(get_trace))
        .route("/api/v1/services", get(list_services))
        .route("/api/v1/services/{name}/profile", get(service_profile))
        .route("/api/v1/labels", get(label_names))
        .route("/api/v1/labels/{name}/values", get(label_values))
        .route("/api/v1/diff", get(diff_profiles))
        .route("/api/v1/aggregate", get(aggregate_spans))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .route("/profiles/{id}", get(index))
        .route("/traces/{id}", get(index))
        .route("/services/{name}", get(index))
        .route("/services/{name}/spans/{span_name}", get(index))
        .route("/diff", get(index))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", crate::ui::APP_JS) }))
        .route("/ui/style.css", get(|| async { asset("text/css; charset=utf-8", crate::ui::STYLE_CSS) }))
        .merge(crate::querier::routes())
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", crate::ui::INDEX_HTML)
}

/// Ready: serving, and the store takes writes.
async fn readyz(State(s): St) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response();
    }
    match s.store.health() {
        // Ingest goes on into the local store while the bucket is away: still ready (taking the
        // replica out of its Service would turn clients away), but the answer says so.
        Ok(()) => match s.layered.as_ref().map(|l| &l.status).filter(|b| b.is_degraded()) {
            Some(b) => {
                let why = b.last_error.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
                format!("ready, degraded: the object store fails ({why}); data waits on local disk").into_response()
            }
            None => "ready".into_response(),
        },
        Err(t) => (StatusCode::SERVICE_UNAVAILABLE, t.message).into_response(),
    }
}

/// Alive unless the store can no longer take writes and only a restart recovers it.
async fn healthz(State(s): St) -> Response {
    match s.store.health() {
        Err(t) if t.restart_helps && s.ready.load(Ordering::Acquire) => {
            (StatusCode::SERVICE_UNAVAILABLE, t.message).into_response()
        }
        _ => "ok".into_response(),
    }
}

async fn metrics(State(s): St) -> Response {
    let store = s.store.clone();
    if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || store.stats()).await {
        s.metrics.store_file_bytes.set(stats.file_bytes as i64);
        s.metrics.store_record_bytes.set(stats.record_bytes as i64);
        s.metrics.store_interned_bytes.set(stats.interned_bytes as i64);
        s.metrics.store_span_profiles.set(stats.span_profiles as i64);
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.render())
        .into_response()
}

/// A peer asks for this replica's own data (local store and the block it is uploading).
async fn peer_local(State(s): St, body: Bytes) -> Response {
    let Some(layered) = s.layered.clone() else {
        return error_response(
            StatusCode::NOT_FOUND,
            "no_object_store",
            "this server has no --object-store, so no peers",
        );
    };
    let q: crate::store::peers::LocalQuery = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_query", format!("not a local query: {e}")),
    };
    match tokio::task::spawn_blocking(move || layered.local_answer(q)).await {
        Ok(Ok(a)) => axum::Json(a).into_response(),
        Ok(Err(e)) => fail(&s, e),
        Err(e) => fail(&s, Error::Storage(e.to_string())),
    }
}

/// A JSON error body: `{"error": "...", "reason": "..."}`.
fn error_response(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into(), "reason": reason }))).into_response()
}

/// Maps an error to a response and counts rejections.
fn fail(s: &AppState, e: Error) -> Response {
    match e {
        Error::Rejected { reason, message } => {
            s.metrics.reject(reason.as_str());
            let status = match reason {
                Reject::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Reject::SlowBody => StatusCode::REQUEST_TIMEOUT,
                Reject::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                _ => StatusCode::BAD_REQUEST,
            };
            tracing::debug!(%reason, %message, "request rejected");
            error_response(status, reason.as_str(), message)
        }
        Error::Overloaded => {
            s.metrics.reject("overloaded");
            let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Error::Busy => {
            s.metrics.reject("busy");
            let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string());
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Error::Unavailable => error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        ref full if full.is_disk_full() => {
            tracing::error!(error = %full, "the store's disk is full");
            error_response(StatusCode::INSUFFICIENT_STORAGE, "disk_full", disk_full_message(full))
        }
        other => {
            tracing::error!(error = %other, "request failed");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string())
        }
    }
}

/// How long a client may take to send a request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads the body up to the configured limit. A declared `Content-Length` over the limit is
/// refused before a byte is read (so `Expect: 100-continue` is not granted either), and a body
/// that trickles in slower than [`BODY_TIMEOUT`] is given up on.
pub(crate) async fn read_body(s: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, Error> {
    let limit = s.limits.max_body_bytes;
    let too_large =
        || Error::rejected(Reject::TooLarge, format!("request body is larger than the limit of {limit} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(Error::rejected(
            Reject::SlowBody,
            format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

/// Runs CPU-heavy decoding on the blocking pool, so queries on the async workers are not held up
/// by a burst of pushes.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Storage(format!("decode task failed: {e}")))?
}

/// Undoes `Content-Encoding: gzip` within the decompression limit.
pub(crate) fn content_decoded(limits: &Limits, headers: &HeaderMap, bytes: Bytes) -> Result<Bytes, Error> {
    match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(str::trim) {
        None | Some("") | Some("identity") => Ok(bytes),
        Some("gzip") => {
            Ok(ingest::decode::gunzip_limited(&bytes, limits.max_decompressed_bytes, "request body")?.into())
        }
        Some(other) => Err(Error::rejected(
            Reject::UnsupportedMediaType,
            format!("unsupported Content-Encoding {other:?}: gzip or identity"),
        )),
    }
}

/// The response header that says which labels were dropped, e.g. `span_id=3, trace_id=1`
/// (samples kept without them; see [`DroppedLabels`]).
const DROPPED_LABELS_HEADER: &str = "spanprof-dropped-labels";

/// Stores the batches of one request; returns the labels its samples were stored without.
async fn store_batches(s: &Arc<AppState>, batches: Vec<SeriesBatch>, protocol: &str) -> Result<DroppedLabels, Error> {
    ingest::check_limits(&batches, &s.limits)?;
    let mut dropped = DroppedLabels::default();
    for b in &batches {
        dropped.add(b.dropped_labels);
    }
    let store = s.store.clone();
    let stats = tokio::task::spawn_blocking(move || store.insert(batches))
        .await
        .map_err(|e| Error::Storage(format!("insert task failed: {e}")))?
        .inspect_err(|e| {
            if matches!(e, Error::Storage(_) | Error::Corrupt(_) | Error::DiskFull { .. }) {
                s.metrics.store_write_failures.inc();
            }
        })?;
    let m = &s.metrics;
    m.ingest_requests.get_or_create(&ProtocolLabel { protocol: protocol.to_owned() }).inc();
    m.ingested_samples.inc_by(stats.samples);
    m.span_profiles.get_or_create(&ResultLabel { result: "created".into() }).inc_by(stats.span_profiles_created);
    m.span_profiles.get_or_create(&ResultLabel { result: "merged".into() }).inc_by(stats.span_profiles_merged);
    for (label, n) in [(wire::SPAN_ID, dropped.span_id), (wire::TRACE_ID, dropped.trace_id)] {
        if n > 0 {
            m.ingest_dropped_labels.get_or_create(&LabelLabel { label: label.into() }).inc_by(n);
        }
    }
    Ok(dropped)
}

/// Adds [`DROPPED_LABELS_HEADER`] to a response when labels were dropped.
fn with_dropped(mut response: Response, dropped: DroppedLabels) -> Response {
    if dropped.is_empty() {
        return response;
    }
    let text = format!("span_id={}, trace_id={}", dropped.span_id, dropped.trace_id);
    if let Ok(v) = HeaderValue::from_str(&text) {
        response.headers_mut().insert(DROPPED_LABELS_HEADER, v);
    }
    response
}

async fn ingest_legacy(State(s): St, req: Request) -> Response {
    match ingest_legacy_inner(&s, req).await {
        Ok(dropped) => with_dropped(StatusCode::OK.into_response(), dropped),
        Err(e) => fail(&s, e),
    }
}

async fn ingest_legacy_inner(s: &Arc<AppState>, req: Request) -> Result<DroppedLabels, Error> {
    let (parts, body) = req.into_parts();
    let mut params = ingest::legacy::parse_params(parts.uri.query().unwrap_or(""), now_ms())?;
    let raw = read_body(s, &parts.headers, body).await?;
    let (limits, headers) = (s.limits, parts.headers.clone());
    let body = blocking(move || content_decoded(&limits, &headers, raw)).await?;
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let payload = if content_type.starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(content_type).map_err(|e| {
            Error::rejected(Reject::InvalidMultipart, format!("multipart Content-Type without a boundary: {e}"))
        })?;
        // Multipart bodies carry pprof (as @pyroscope/nodejs and pyroscope-go send it).
        params.format = ingest::legacy::Format::Pprof;
        ingest::legacy::multipart_profile(body, &boundary).await?
    } else {
        body.to_vec()
    };
    let batch = blocking(move || ingest::legacy::build_batch(params, &payload, &limits)).await?;
    if batch.spans.is_empty() && batch.process.is_empty() {
        return Ok(DroppedLabels::default());
    }
    store_batches(s, vec![batch], "ingest").await
}

fn disk_full_message(e: &Error) -> String {
    format!(
        "the server's disk is full, nothing of this request was stored; free space or lower --retention-bytes ({e})"
    )
}

/// Connect error codes and their HTTP statuses.
fn connect_error(s: &AppState, e: Error) -> Response {
    if e.is_disk_full() {
        tracing::error!(error = %e, "the store's disk is full");
        let body = json!({ "code": "resource_exhausted", "message": disk_full_message(&e) });
        return (StatusCode::INSUFFICIENT_STORAGE, axum::Json(body)).into_response();
    }
    let (status, code) = match &e {
        Error::Rejected { reason: Reject::TooLarge, .. } => (StatusCode::BAD_REQUEST, "resource_exhausted"),
        Error::Rejected { reason: Reject::UnsupportedMediaType, .. } => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unimplemented")
        }
        Error::Rejected { .. } => (StatusCode::BAD_REQUEST, "invalid_argument"),
        Error::Overloaded | Error::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    match &e {
        Error::Rejected { reason, .. } => s.metrics.reject(reason.as_str()),
        Error::Overloaded => s.metrics.reject("overloaded"),
        Error::Unavailable => {}
        other => tracing::error!(error = %other, "push failed"),
    }
    (status, axum::Json(json!({ "code": code, "message": e.to_string() }))).into_response()
}

async fn push(State(s): St, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let ct = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(encoding) = ingest::push::Encoding::from_content_type(ct) else {
        return connect_error(
            &s,
            Error::rejected(
                Reject::UnsupportedMediaType,
                format!("unsupported Content-Type {ct:?}: application/proto or application/json"),
            ),
        );
    };
    let result = async {
        let raw = read_body(&s, &parts.headers, body).await?;
        let (limits, headers) = (s.limits, parts.headers.clone());
        let batches = blocking(move || {
            let body = content_decoded(&limits, &headers, raw)?;
            let req = ingest::push::decode_request(&body, encoding)?;
            ingest::push::to_batches(req, &limits, now_ms())
        })
        .await?;
        store_batches(&s, batches, "push").await
    }
    .await;
    match result {
        Ok(dropped) => with_dropped(
            match encoding {
                ingest::push::Encoding::Proto => {
                    ([(header::CONTENT_TYPE, "application/proto")], Vec::new()).into_response()
                }
                ingest::push::Encoding::Json => ([(header::CONTENT_TYPE, "application/json")], "{}").into_response(),
            },
            dropped,
        ),
        Err(e) => connect_error(&s, e),
    }
}

/// A span profile's metadata as the API shows it.
#[derive(Serialize)]
struct SummaryJson<'a> {
    profile_id: String,
    trace_id: Option<String>,
    service_name: &'a str,
    span_name: &'a str,
    samples: u64,
    cpu_ns: u64,
    first_seen_ms: u64,
    last_seen_ms: u64,
    labels: &'a std::collections::BTreeMap<String, String>,
}

fn summary_json(s: &SpanSummary) -> SummaryJson<'_> {
    SummaryJson {
        profile_id: s.profile_id.to_string(),
        trace_id: s.trace_id.map(|t| t.to_string()),
        service_name: &s.service_name,
        span_name: &s.span_name,
        samples: s.samples,
        cpu_ns: s.samples.saturating_mul(s.period_ns),
        first_seen_ms: s.first_seen_ms,
        last_seen_ms: s.last_seen_ms,
        labels: &s.labels,
    }
}

/// Parses a time for the query API: `now`, `now-15m` (s, m, h, d), or a Unix timestamp whose
/// unit is told by its digit count.
pub fn parse_time(v: &str, now: u64, what: &str) -> Result<u64, Error> {
    let v = v.trim();
    if v == "now" {
        return Ok(now);
    }
    if let Some(rel) = v.strip_prefix("now-") {
        let bad = || Error::rejected(Reject::BadTimestamp, format!("`{what}` {v:?}: expected now-<n><s|m|h|d>"));
        let (n, unit) = rel.split_at(rel.len().saturating_sub(1));
        let n: u64 = n.parse().map_err(|_| bad())?;
        let ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        return Ok(now.saturating_sub(n.saturating_mul(ms)));
    }
    ingest::legacy::parse_timestamp_ms(v, what)
}

fn bad_query(msg: String) -> Error {
    Error::rejected(Reject::BadQuery, msg)
}

async fn list_profiles(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let started = Instant::now();
    let query = (|| -> Result<SpanQuery, Error> {
        let now = now_ms();
        let nonempty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(SpanQuery {
            service: nonempty("service").or_else(|| nonempty("service_name")),
            span_name: nonempty("span_name"),
            trace_id: nonempty("trace_id")
                .map(|t| TraceId::parse(&t).ok_or_else(|| bad_query(format!("trace_id {t:?} is not 32 hex digits"))))
                .transpose()?,
            from_ms: nonempty("from").map(|v| parse_time(&v, now, "from")).transpose()?,
            until_ms: nonempty("until").map(|v| parse_time(&v, now, "until")).transpose()?,
            min_samples: nonempty("min_samples")
                .map(|v| v.parse().map_err(|_| bad_query(format!("min_samples {v:?} is not a number"))))
                .transpose()?
                .unwrap_or(0),
            limit: nonempty("limit")
                .map(|v| match v.parse::<usize>() {
                    Ok(n) if (1..=1000).contains(&n) => Ok(n),
                    _ => Err(bad_query(format!("limit {v:?} is not in 1..=1000"))),
                })
                .transpose()?
                .unwrap_or(50),
            after: nonempty("cursor")
                .map(|c| Cursor::decode(&c).ok_or_else(|| bad_query(format!("invalid cursor {c:?}"))))
                .transpose()?,
        })
    })();
    let query = match query {
        Ok(q) => q,
        Err(e) => return fail(&s, e),
    };
    let store = s.store.clone();
    let (page, partial) = match tokio::task::spawn_blocking(move || with_partial(|| store.search_spans(&query))).await {
        Ok((Ok(p), partial)) => (p, partial),
        Ok((Err(e), _)) => return fail(&s, e),
        Err(e) => return fail(&s, Error::Storage(e.to_string())),
    };
    let mut body = json!({
        "profiles": page.profiles.iter().map(summary_json).collect::<Vec<_>>(),
        "next_cursor": page.next.map(|c| c.encode()),
    });
    if let Some(why) = &partial {
        body["partial"] = json!(true);
        body["partial_reason"] = json!(why);
    }
    s.metrics.observe_query("list_profiles", started.elapsed().as_secs_f64());
    axum::Json(body).into_response()
}

fn export_format(q: &HashMap<String, String>) -> Result<export::Format, Error> {
    let f = q.get("format").map(String::as_str).unwrap_or("json");
    export::Format::parse(f).ok_or_else(|| {
        Error::rejected(Reject::UnknownFormat, format!("unknown format {f:?}: json, pprof, folded, speedscope or svg"))
    })
}

/// `?max_nodes=`: the most flame-graph bars the JSON answer holds; 0 = every node.
fn max_nodes(q: &HashMap<String, String>) -> Result<usize, Error> {
    match q.get("max_nodes").map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(flame::DEFAULT_MAX_NODES),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n != 1 => Ok(n),
            _ => Err(bad_query(format!("max_nodes {v:?} is not 0 (every node) or a number of nodes of at least 2"))),
        },
    }
}

/// What a heavy query asks for besides its subject: the format and the flame graph's bound.
struct Rendering {
    format: export::Format,
    max_nodes: usize,
}

impl Rendering {
    fn from_query(q: &HashMap<String, String>) -> Result<Self, Error> {
        Ok(Rendering { format: export_format(q)?, max_nodes: max_nodes(q)? })
    }
}

/// A loaded profile, ready to render: its stacks, export metadata and the JSON fields about it.
struct Loaded {
    stacks: Stacks,
    meta: ExportMeta,
    file_stem: String,
    extra: serde_json::Map<String, serde_json::Value>,
}

/// The JSON answer of a profile, trace or service view: the fields about it, the flame graph
/// (bounded, Pyroscope's levels) and the top functions.
#[derive(Serialize)]
struct ProfileJson {
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
    period_ns: u64,
    flamegraph: flame::FlameGraph,
    top: Vec<flame::TopFunction>,
}

/// Bytes sent to the client per chunk of a streamed answer.
const CHUNK_BYTES: usize = 64 << 10;

/// An `io::Write` that hands full chunks to the response body as it goes, so an export is never
/// held whole in memory beside the profile; it waits while the client is slow (the channel is
/// bounded) and fails once the client is gone.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A response body written by `write` on the blocking pool while it is sent. The query's turn
/// goes with the writer and ends when the body is written. A failure half-way ends the body with
/// an error, so the client sees a broken transfer rather than a short file.
fn streamed<F>(turn: QueryTurn, write: F) -> Body
where
    F: FnOnce(&mut dyn std::io::Write) -> Result<(), Error> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let mut out = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK_BYTES) };
        let result = write(&mut out).and_then(|()| out.send().map_err(Error::from));
        if let Err(e) = result {
            tracing::debug!(error = %e, "a streamed answer ended early");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// `name` with every character but ASCII letters, digits and `-` replaced by `_`, bounded:
/// part of a download's file name (a quoted header parameter) whatever the profile ID or
/// service name holds.
fn file_name_safe(name: &str) -> String {
    name.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// Renders a loaded profile in the requested format, on the blocking pool, as a stream; JSON
/// gets the fields of `loaded.extra` plus the bounded flame graph and the top functions.
fn render(turn: QueryTurn, rendering: Rendering, loaded: Loaded, done: impl FnOnce() + Send + 'static) -> Response {
    let Loaded { stacks, meta, file_stem, extra } = loaded;
    let attachment = |ext: &str| format!("inline; filename=\"{file_stem}.{ext}\"");
    let (content_type, disposition) = match rendering.format {
        export::Format::Json => ("application/json", None),
        export::Format::Folded => ("text/plain; charset=utf-8", Some(attachment("folded"))),
        export::Format::Pprof => {
            ("application/octet-stream", Some(attachment("pb.gz").replace("inline", "attachment")))
        }
        export::Format::Speedscope => ("application/json", Some(attachment("speedscope.json"))),
        export::Format::Svg => ("image/svg+xml", Some(attachment("svg"))),
    };
    let format = rendering.format;
    let body = streamed(turn, move |out| {
        let written = write_rendering(out, format, rendering.max_nodes, stacks, &meta, extra);
        done();
        written
    });
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(d) = disposition.and_then(|d| HeaderValue::from_str(&d).ok()) {
        headers.insert(header::CONTENT_DISPOSITION, d);
    }
    response
}

/// Writes one rendering of `stacks` to `out` (see [`render`]).
fn write_rendering(
    out: &mut dyn std::io::Write,
    format: export::Format,
    max_nodes: usize,
    stacks: Stacks,
    meta: &ExportMeta,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<(), Error> {
    match format {
        export::Format::Json => {
            let tree = flame::CallTree::build(stacks.iter().map(|(f, c)| (f.as_slice(), *c)));
            drop(stacks);
            let answer = ProfileJson {
                extra,
                period_ns: meta.period_ns,
                flamegraph: tree.flamegraph(max_nodes),
                top: tree.top_functions(200),
            };
            drop(tree);
            serde_json::to_writer(out, &answer).map_err(|e| Error::Io(std::io::Error::other(e)))
        }
        export::Format::Folded => Ok(export::write_folded(&stacks, out)?),
        export::Format::Pprof => export::write_pprof(&stacks, meta, out),
        export::Format::Speedscope => export::write_speedscope(&stacks, meta, out),
        export::Format::Svg => export::write_svg(&stacks, meta, out),
    }
}

/// Runs a heavy query: waits for a turn at the gate, loads on the blocking pool with `load`
/// (`Ok(None)` = nothing stored: 404 naming `what`), renders as a stream.
async fn heavy_query<F>(
    s: &Arc<AppState>,
    endpoint: &'static str,
    rendering: Rendering,
    what: String,
    load: F,
) -> Response
where
    F: FnOnce(&dyn ProfileStore) -> Result<Option<Loaded>, Error> + Send + 'static,
{
    let started = Instant::now();
    let turn = match s.queries.enter().await {
        Ok(t) => t,
        Err(e) => return fail(s, e),
    };
    let store = s.store.clone();
    let (loaded, partial) = match tokio::task::spawn_blocking(move || with_partial(|| load(store.as_ref()))).await {
        Ok((Ok(Some(l)), partial)) => (l, partial),
        Ok((Ok(None), _)) => return no_samples(&what),
        Ok((Err(e), _)) => return fail(s, e),
        Err(e) => return fail(s, Error::Storage(e.to_string())),
    };
    let mut loaded = loaded;
    if let Some(why) = &partial {
        loaded.extra.insert("partial".into(), json!(true));
        loaded.extra.insert("partial_reason".into(), json!(why));
    }
    let loaded_after = started.elapsed();
    let state = s.clone();
    // The answer is written after this returns: it is timed when the last byte is handed over.
    let mut response = render(turn, rendering, loaded, move || {
        let total = started.elapsed();
        state.metrics.observe_query(endpoint, total.as_secs_f64());
        tracing::debug!(
            endpoint,
            load_ms = loaded_after.as_millis() as u64,
            total_ms = total.as_millis() as u64,
            "query answered"
        );
    });
    mark_partial_header(&mut response, partial.as_deref());
    response
}

/// Runs a store call and says whether its answer missed data (a peer or the object store was
/// away), as the layered store noted on this thread.
pub(crate) fn with_partial<T>(f: impl FnOnce() -> T) -> (T, Option<String>) {
    let _ = crate::store::peers::take_partial();
    let out = f();
    (out, crate::store::peers::take_partial())
}

/// `spanprof-partial: <why>` on an answer that misses data (exports have no JSON field for it).
pub(crate) fn mark_partial_header(response: &mut Response, why: Option<&str>) {
    if let Some(v) = why.and_then(|w| HeaderValue::from_str(&w.replace(['\r', '\n'], " ")).ok()) {
        response.headers_mut().insert("spanprof-partial", v);
    }
}

fn no_samples(what: &str) -> Response {
    error_response(StatusCode::NOT_FOUND, "no_samples", format!("no samples for {what} yet"))
}

fn invalid_id(s: &AppState, msg: String) -> Response {
    s.metrics.reject("invalid_id");
    error_response(StatusCode::BAD_REQUEST, "invalid_id", msg)
}

async fn get_profile(State(s): St, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let pid = match ProfileId::parse(&id) {
        Ok(pid) => pid,
        Err(why) => return invalid_id(&s, format!("{id:?} is no profile ID: {why}")),
    };
    let rendering = match Rendering::from_query(&q) {
        Ok(r) => r,
        Err(e) => return fail(&s, e),
    };
    let what = if pid.is_span() { format!("span {pid}") } else { format!("profile {pid:?}") };
    heavy_query(&s, "profile", rendering, what, move |store| {
        let Some(profile) = store.span_profile(pid.clone())? else {
            return Ok(None);
        };
        let sm = &profile.summary;
        let mut labels =
            vec![(sm.profile_id.label_key(), sm.profile_id.to_string()), (wire::SPAN_NAME, sm.span_name.clone())];
        if let Some(t) = sm.trace_id {
            labels.push((wire::TRACE_ID, t.to_string()));
        }
        let meta = ExportMeta {
            title: format!("{} {} ({})", sm.service_name, sm.span_name, sm.profile_id),
            period_ns: sm.period_ns,
            time_ms: sm.first_seen_ms,
            duration_ms: sm.last_seen_ms.saturating_sub(sm.first_seen_ms),
            labels,
        };
        let mut extra = serde_json::Map::new();
        extra.insert("profile".into(), json!(summary_json(sm)));
        let file_stem = match &pid {
            ProfileId::Span(_) => format!("span-{pid}"),
            ProfileId::Named(name) => format!("profile-{}", file_name_safe(name)),
        };
        Ok(Some(Loaded { stacks: profile.stacks, meta, file_stem, extra }))
    })
    .await
}

async fn get_trace(State(s): St, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(tid) = TraceId::parse(&id) else {
        return invalid_id(&s, format!("{id:?} is not a trace ID (32 hex digits)"));
    };
    let rendering = match Rendering::from_query(&q) {
        Ok(r) => r,
        Err(e) => return fail(&s, e),
    };
    heavy_query(&s, "trace", rendering, format!("trace {tid}"), move |store| {
        let profiles = query::trace(store, tid, &Selector::all())?;
        if profiles.is_empty() {
            return Ok(None);
        }
        let first = profiles.iter().map(|p| p.summary.first_seen_ms).min().unwrap_or(0);
        let last = profiles.iter().map(|p| p.summary.last_seen_ms).max().unwrap_or(0);
        let mut extra = serde_json::Map::new();
        extra.insert("trace_id".into(), json!(tid.to_string()));
        extra.insert("profiles".into(), json!(profiles.iter().map(|p| summary_json(&p.summary)).collect::<Vec<_>>()));
        let (period_ns, stacks) = query::merge_spans(profiles);
        let samples: u64 = stacks.iter().map(|(_, c)| c).sum();
        extra.insert("samples".into(), json!(samples));
        extra.insert("cpu_ns".into(), json!(samples.saturating_mul(period_ns)));
        let meta = ExportMeta {
            title: format!("trace {tid}"),
            period_ns,
            time_ms: first,
            duration_ms: last.saturating_sub(first),
            labels: vec![(wire::TRACE_ID, tid.to_string())],
        };
        Ok(Some(Loaded { stacks, meta, file_stem: format!("trace-{tid}"), extra }))
    })
    .await
}

async fn list_services(State(s): St) -> Response {
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || store.services()).await {
        Ok(Ok(services)) => axum::Json(json!({ "services": services })).into_response(),
        Ok(Err(e)) => fail(&s, e),
        Err(e) => fail(&s, Error::Storage(e.to_string())),
    }
}

/// `?selector=`: a label selector (`{service_name="ride"}`); none selects everything.
fn selector_param(q: &HashMap<String, String>) -> Result<Selector, Error> {
    Selector::parse(q.get("selector").map(String::as_str).unwrap_or(""))
}

async fn label_names(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let selector = match selector_param(&q) {
        Ok(sel) => sel,
        Err(e) => return fail(&s, e),
    };
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || query::label_names(store.as_ref(), &selector)).await {
        Ok(Ok(names)) => axum::Json(json!({ "names": names })).into_response(),
        Ok(Err(e)) => fail(&s, e),
        Err(e) => fail(&s, Error::Storage(e.to_string())),
    }
}

async fn label_values(State(s): St, Path(name): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let selector = match selector_param(&q) {
        Ok(sel) => sel,
        Err(e) => return fail(&s, e),
    };
    let store = s.store.clone();
    let n = name.clone();
    match tokio::task::spawn_blocking(move || query::label_values(store.as_ref(), &n, &selector)).await {
        Ok(Ok(values)) => axum::Json(json!({ "name": name, "values": values })).into_response(),
        Ok(Err(e)) => fail(&s, e),
        Err(e) => fail(&s, Error::Storage(e.to_string())),
    }
}

/// `spans=`: which samples of a service a whole-process view shows (`all` when absent).
fn spans_matcher(spans: Option<&str>) -> Result<Option<Matcher>, Error> {
    let op = match spans.unwrap_or("all") {
        "all" | "" => return Ok(None),
        "inside" => selector::Op::NotEqual,
        "outside" => selector::Op::Equal,
        other => return Err(bad_query(format!("spans {other:?}: all, inside or outside"))),
    };
    Matcher::new(selector::SPAN_NAME_LABEL, op, "").map(Some)
}

async fn service_profile(
    State(s): St,
    Path(service): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let now = now_ms();
    let range = (|| -> Result<(ProcessQuery, Rendering), Error> {
        let from = q.get("from").map(|v| parse_time(v, now, "from")).transpose()?.unwrap_or(now - 3_600_000);
        let until = q.get("until").map(|v| parse_time(v, now, "until")).transpose()?.unwrap_or(now);
        if from > until {
            return Err(Error::rejected(Reject::BadTimestamp, "`from` is after `until`"));
        }
        let profile_type = q.get("type").filter(|t| !t.is_empty()).cloned().unwrap_or_else(|| wire::PROCESS_CPU.into());
        let mut selector = selector_param(&q)?
            .and(Matcher::new(wire::SERVICE_NAME, selector::Op::Equal, &service)?)
            .and(Matcher::new(selector::NAME_LABEL, selector::Op::Equal, &profile_type)?);
        if let Some(m) = spans_matcher(q.get("spans").map(String::as_str))? {
            selector = selector.and(m);
        }
        Ok((ProcessQuery { selector, from_ms: from, until_ms: until }, Rendering::from_query(&q)?))
    })();
    let (pq, rendering) = match range {
        Ok(r) => r,
        Err(e) => return fail(&s, e),
    };
    let (from, until) = (pq.from_ms, pq.until_ms);
    let what = format!("service {service:?} in this time range");
    heavy_query(&s, "service_profile", rendering, what, move |store| {
        let Some(profile) = query::process(store, &pq)? else {
            return Ok(None);
        };
        let samples: u64 = profile.stacks.iter().map(|(_, c)| c).sum();
        let meta = ExportMeta {
            title: format!("{service} (whole process)"),
            period_ns: profile.period_ns,
            time_ms: from,
            duration_ms: until - from,
            labels: vec![(wire::SERVICE_NAME, service.clone())],
        };
        let mut extra = serde_json::Map::new();
        extra.insert("service_name".into(), json!(service));
        extra.insert("from_ms".into(), json!(from));
        extra.insert("until_ms".into(), json!(until));
        extra.insert("samples".into(), json!(samples));
        extra.insert("cpu_ns".into(), json!(samples.saturating_mul(profile.period_ns)));
        let file_stem = file_name_safe(&service);
        Ok(Some(Loaded { stacks: profile.stacks, meta, file_stem, extra }))
    })
    .await
}

/// One side of `/api/v1/diff` from its `{side}.…` parameters: exactly one of `{side}.profile`,
/// `{side}.trace` or `{side}.service` (with `from`, `until`, `type`, `spans`, `span_name`,
/// `selector`, and `min_cpu_ms`/`max_cpu_ms` to take only the spans whose own CPU is in range).
fn subject_param(q: &HashMap<String, String>, side: &str, now: u64) -> Result<query::Subject, Error> {
    let get = |k: &str| q.get(&format!("{side}.{k}")).map(|v| v.trim()).filter(|v| !v.is_empty());
    let named = [get("profile"), get("trace"), get("service")].iter().filter(|v| v.is_some()).count();
    if named != 1 {
        return Err(bad_query(format!("{side}: give exactly one of {side}.profile, {side}.trace or {side}.service")));
    }
    if let Some(id) = get("profile") {
        return ProfileId::parse(id)
            .map(query::Subject::Profile)
            .map_err(|why| bad_query(format!("{side}.profile {id:?}: {why}")));
    }
    if let Some(t) = get("trace") {
        return TraceId::parse(t)
            .map(query::Subject::Trace)
            .ok_or_else(|| bad_query(format!("{side}.trace {t:?} is not 32 hex digits")));
    }
    let service = get("service").unwrap_or_default();
    let from = get("from")
        .map(|v| parse_time(v, now, &format!("{side}.from")))
        .transpose()?
        .unwrap_or(now.saturating_sub(3_600_000));
    let until = get("until").map(|v| parse_time(v, now, &format!("{side}.until"))).transpose()?.unwrap_or(now);
    if from > until {
        return Err(Error::rejected(Reject::BadTimestamp, format!("{side}.from is after {side}.until")));
    }
    let mut selector = Selector::parse(get("selector").unwrap_or(""))?.and(Matcher::new(
        wire::SERVICE_NAME,
        selector::Op::Equal,
        service,
    )?);
    if let Some(name) = get("span_name") {
        selector = selector.and(Matcher::new(selector::SPAN_NAME_LABEL, selector::Op::Equal, name)?);
    }
    if let Some(q) = cpu_filter(selector.clone(), from, until, get, &format!("{side}."))? {
        return Ok(query::Subject::Spans(q));
    }
    let profile_type = get("type").unwrap_or(wire::PROCESS_CPU);
    selector = selector.and(Matcher::new(selector::NAME_LABEL, selector::Op::Equal, profile_type)?);
    if let Some(m) = spans_matcher(get("spans"))? {
        selector = selector.and(m);
    }
    Ok(query::Subject::Process(ProcessQuery { selector, from_ms: from, until_ms: until }))
}

/// The aggregate of a selection of span rollups when `get` gives `min_cpu_ms` or `max_cpu_ms`
/// (`what` names the parameters' prefix in errors).
fn cpu_filter<'a>(
    selector: Selector,
    from_ms: u64,
    until_ms: u64,
    get: impl Fn(&str) -> Option<&'a str>,
    what: &str,
) -> Result<Option<AggregateQuery>, Error> {
    let cpu_ms = |k: &str| {
        get(k)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| bad_query(format!("{what}{k} {v:?} is not a number of milliseconds")))
            })
            .transpose()
    };
    let (min_cpu, max_cpu) = (cpu_ms("min_cpu_ms")?, cpu_ms("max_cpu_ms")?);
    if min_cpu.is_none() && max_cpu.is_none() {
        return Ok(None);
    }
    if let (Some(lo), Some(hi)) = (min_cpu, max_cpu)
        && lo > hi
    {
        return Err(bad_query(format!("{what}min_cpu_ms {lo} is above {what}max_cpu_ms {hi}")));
    }
    Ok(Some(AggregateQuery {
        selector,
        from_ms,
        until_ms,
        min_cpu_ns: min_cpu.unwrap_or(0).saturating_mul(1_000_000),
        max_cpu_ns: max_cpu.map_or(u64::MAX, |m| m.saturating_mul(1_000_000)),
    }))
}

/// `GET /api/v1/aggregate?service=S&span_name=N&from=&until=[&selector=][&min_cpu_ms=][&max_cpu_ms=]`:
/// every span profile of a span name (every named or unnamed span without `span_name`) last
/// seen in the range, as one answer — counts, the per-span CPU distribution, the heaviest spans
/// and the merged flame graph — or an export of the merged stacks (`format=`).
async fn aggregate_spans(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let now = now_ms();
    let parsed = (|| -> Result<(AggregateQuery, Rendering), Error> {
        let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let service = get("service")
            .ok_or_else(|| bad_query("service is required: the service whose spans to aggregate".into()))?;
        let from =
            get("from").map(|v| parse_time(v, now, "from")).transpose()?.unwrap_or(now.saturating_sub(3_600_000));
        let until = get("until").map(|v| parse_time(v, now, "until")).transpose()?.unwrap_or(now);
        if from > until {
            return Err(Error::rejected(Reject::BadTimestamp, "`from` is after `until`"));
        }
        let mut selector = selector_param(&q)?.and(Matcher::new(wire::SERVICE_NAME, selector::Op::Equal, service)?);
        selector = selector.and(match get("span_name") {
            Some(name) => Matcher::new(selector::SPAN_NAME_LABEL, selector::Op::Equal, name)?,
            None => Matcher::new(selector::SPAN_NAME_LABEL, selector::Op::NotEqual, "")?,
        });
        let everything = AggregateQuery {
            selector: selector.clone(),
            from_ms: from,
            until_ms: until,
            min_cpu_ns: 0,
            max_cpu_ns: u64::MAX,
        };
        let aq = cpu_filter(selector, from, until, get, "")?.unwrap_or(everything);
        Ok((aq, Rendering::from_query(&q)?))
    })();
    let (aq, rendering) = match parsed {
        Ok(p) => p,
        Err(e) => return fail(&s, e),
    };
    let service = q.get("service").cloned().unwrap_or_default();
    let span_name = q.get("span_name").cloned().filter(|n| !n.trim().is_empty());
    let what = match &span_name {
        Some(n) => format!("spans {n:?} of service {service:?} in this time range"),
        None => format!("spans of service {service:?} in this time range"),
    };
    heavy_query(&s, "aggregate", rendering, what, move |store| {
        let Some(mut a) = crate::aggregate::aggregate(store, &aq)? else {
            return Ok(None);
        };
        let stacks = std::mem::take(&mut a.stacks);
        let title = match &span_name {
            Some(n) => format!("{service}: {n} ({} spans)", a.spans),
            None => format!("{service}: all spans ({})", a.spans),
        };
        let meta = ExportMeta {
            title,
            period_ns: a.period_ns,
            time_ms: aq.from_ms,
            duration_ms: aq.until_ms - aq.from_ms,
            labels: vec![(wire::SERVICE_NAME, service.clone())],
        };
        let mut extra = match serde_json::to_value(&a) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        extra.insert("service_name".into(), json!(service));
        extra.insert("span_name".into(), json!(span_name));
        extra.insert("selector".into(), json!(aq.selector.to_string()));
        extra.insert("from_ms".into(), json!(aq.from_ms));
        extra.insert("until_ms".into(), json!(aq.until_ms));
        extra.insert("min_cpu_ns".into(), json!(aq.min_cpu_ns));
        extra.insert("max_cpu_ns".into(), json!((aq.max_cpu_ns != u64::MAX).then_some(aq.max_cpu_ns)));
        let file_stem = file_name_safe(&format!("{service}-{}", span_name.as_deref().unwrap_or("spans")));
        Ok(Some(Loaded { stacks, meta, file_stem, extra }))
    })
    .await
}

/// A diff side as the JSON answer describes it.
fn subject_json(subject: &query::Subject, loaded: &query::Loaded) -> serde_json::Value {
    let mut v = match subject {
        query::Subject::Profile(id) => json!({ "kind": "profile", "profile_id": id.to_string() }),
        query::Subject::Trace(t) => json!({ "kind": "trace", "trace_id": t.to_string() }),
        query::Subject::Process(q) => {
            json!({ "kind": "service", "selector": q.selector.to_string(), "from_ms": q.from_ms, "until_ms": q.until_ms })
        }
        query::Subject::Spans(q) => json!({
            "kind": "spans", "selector": q.selector.to_string(), "from_ms": q.from_ms, "until_ms": q.until_ms,
            "min_cpu_ns": q.min_cpu_ns, "max_cpu_ns": (q.max_cpu_ns != u64::MAX).then_some(q.max_cpu_ns),
        }),
    };
    let samples = loaded.samples();
    v["samples"] = json!(samples);
    v["period_ns"] = json!(loaded.period_ns);
    v["cpu_ns"] = json!(samples.saturating_mul(loaded.period_ns));
    if let Some(n) = loaded.span_profiles {
        v["span_profiles"] = json!(n);
    }
    v
}

/// `GET /api/v1/diff?left.…&right.…`: both sides' totals and their diff flame graph.
async fn diff_profiles(State(s): St, Query(q): Query<HashMap<String, String>>) -> Response {
    let started = Instant::now();
    let now = now_ms();
    let parsed =
        (|| Ok::<_, Error>((subject_param(&q, "left", now)?, subject_param(&q, "right", now)?, max_nodes(&q)?)))();
    let (left, right, bound) = match parsed {
        Ok(p) => p,
        Err(e) => return fail(&s, e),
    };
    let _turn = match s.queries.enter().await {
        Ok(t) => t,
        Err(e) => return fail(&s, e),
    };
    let store = s.store.clone();
    let answer = tokio::task::spawn_blocking(move || {
        with_partial(|| -> Result<serde_json::Value, Error> {
            let (l, r) = (query::load(store.as_ref(), &left)?, query::load(store.as_ref(), &right)?);
            let graph = crate::diff::diff(&l.stacks, &r.stacks, bound);
            Ok(json!({ "left": subject_json(&left, &l), "right": subject_json(&right, &r), "flamegraph": graph }))
        })
    })
    .await;
    let (body, partial) = match answer {
        Ok((Ok(b), p)) => (b, p),
        Ok((Err(e), _)) => return fail(&s, e),
        Err(e) => return fail(&s, Error::Storage(e.to_string())),
    };
    let mut body = body;
    if let Some(why) = &partial {
        body["partial"] = json!(true);
        body["partial_reason"] = json!(why);
    }
    s.metrics.observe_query("diff", started.elapsed().as_secs_f64());
    axum::Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_times() {
        assert_eq!(parse_time("now-15m", 1_000_000, "from").unwrap(), 100_000);
        assert_eq!(parse_time("now", 5, "from").unwrap(), 5);
        assert_eq!(parse_time("1764097000", 0, "from").unwrap(), 1_764_097_000_000);
        assert!(parse_time("now-5x", 0, "from").is_err());
        assert!(parse_time("yesterday", 0, "from").is_err());
    }
}
