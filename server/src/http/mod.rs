//! The HTTP surface on one port: ingest (Pyroscope protocols), the JSON query API with exports,
//! the web UI, and `/healthz`, `/readyz`, `/metrics`. One module per concern: [`ingest`],
//! [`api`] (the query API), [`render`] (answers and exports), [`ops`]; here the router, the
//! shared state and the helpers every handler uses.

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
use crate::ingest::Limits;
use crate::metrics::{LabelLabel, Metrics, ProtocolLabel, ResultLabel};
use crate::model::{DroppedLabels, ProfileId, SeriesBatch, TraceId};
use crate::query;
use crate::selector::{self, Matcher, Selector};
use crate::store::{Cursor, ProcessQuery, ProfileStore, SpanQuery, SpanSummary, Stacks};

mod api;
mod ingest;
mod ops;
mod render;

use api::*;
use ingest::*;
pub(crate) use ingest::{content_decoded, read_body};
use ops::*;
use render::*;

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

/// Runs store, decode and query work on the blocking pool, so the async workers are never held
/// up by disk or a burst of pushes.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    blocking_partial(f).await.0
}

/// [`blocking`], saying too whether the answer misses data (a peer or the object store was
/// away: [`with_partial`]). The one way handlers run store, decode and query work off the
/// async threads: a task that panicked or was cancelled is an error like any other.
pub(crate) async fn blocking_partial<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> (Result<T, Error>, Option<String>) {
    match tokio::task::spawn_blocking(move || with_partial(f)).await {
        Ok(answer) => answer,
        Err(e) => (Err(Error::Storage(format!("a blocking task failed: {e}"))), None),
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
    crate::ingest::legacy::parse_timestamp_ms(v, what)
}

fn bad_query(msg: String) -> Error {
    Error::rejected(Reject::BadQuery, msg)
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
