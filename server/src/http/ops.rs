//! Operations endpoints: the UI's files, `/healthz`, `/readyz`, `/metrics`, and the internal
//! call peers answer each other with.

use super::*;

pub(super) fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", crate::ui::INDEX_HTML)
}

/// Ready: serving, and the store takes writes.
pub(super) async fn readyz(State(s): St) -> Response {
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
pub(super) async fn healthz(State(s): St) -> Response {
    match s.store.health() {
        Err(t) if t.restart_helps && s.ready.load(Ordering::Acquire) => {
            (StatusCode::SERVICE_UNAVAILABLE, t.message).into_response()
        }
        _ => "ok".into_response(),
    }
}

pub(super) async fn metrics(State(s): St) -> Response {
    let store = s.store.clone();
    if let Ok(stats) = blocking(move || store.stats()).await {
        s.metrics.store_file_bytes.set(stats.file_bytes as i64);
        s.metrics.store_record_bytes.set(stats.record_bytes as i64);
        s.metrics.store_interned_bytes.set(stats.interned_bytes as i64);
        s.metrics.store_span_profiles.set(stats.span_profiles as i64);
    }
    ([(header::CONTENT_TYPE, spanprof_cli::OPENMETRICS)], s.metrics.render()).into_response()
}

/// A peer asks for this replica's own data (local store and the block it is uploading).
pub(super) async fn peer_local(State(s): St, body: Bytes) -> Response {
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
    match blocking(move || layered.local_answer(q)).await {
        Ok(a) => axum::Json(a).into_response(),
        Err(e) => fail(&s, e),
    }
}
