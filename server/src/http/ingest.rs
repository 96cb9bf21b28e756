//! Ingest over HTTP: Pyroscope's `/ingest` and Connect `Push` (content negotiation, body
//! limits and timeouts, compression, multipart), stored through the one store call, with
//! Connect errors.

use super::*;

/// How long a client may take to send a request body.
pub(super) const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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

/// Undoes `Content-Encoding: gzip` within the decompression limit.
pub(crate) fn content_decoded(limits: &Limits, headers: &HeaderMap, bytes: Bytes) -> Result<Bytes, Error> {
    match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(str::trim) {
        None | Some("") | Some("identity") => Ok(bytes),
        Some("gzip") => {
            Ok(crate::ingest::decode::gunzip_limited(&bytes, limits.max_decompressed_bytes, "request body")?.into())
        }
        Some(other) => Err(Error::rejected(
            Reject::UnsupportedMediaType,
            format!("unsupported Content-Encoding {other:?}: gzip or identity"),
        )),
    }
}

/// The response header that says which labels were dropped, e.g. `span_id=3, trace_id=1`
/// (samples kept without them; see [`DroppedLabels`]).
pub(super) const DROPPED_LABELS_HEADER: &str = "spanprof-dropped-labels";

/// Stores the batches of one request; returns the labels its samples were stored without.
pub(super) async fn store_batches(
    s: &Arc<AppState>,
    batches: Vec<SeriesBatch>,
    protocol: &str,
) -> Result<DroppedLabels, Error> {
    crate::ingest::check_limits(&batches, &s.limits)?;
    let mut dropped = DroppedLabels::default();
    for b in &batches {
        dropped.add(b.dropped_labels);
    }
    let store = s.store.clone();
    let stats = blocking(move || store.insert(batches)).await.inspect_err(|e| {
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
pub(super) fn with_dropped(mut response: Response, dropped: DroppedLabels) -> Response {
    if dropped.is_empty() {
        return response;
    }
    let text = format!("span_id={}, trace_id={}", dropped.span_id, dropped.trace_id);
    if let Ok(v) = HeaderValue::from_str(&text) {
        response.headers_mut().insert(DROPPED_LABELS_HEADER, v);
    }
    response
}

pub(super) async fn ingest_legacy(State(s): St, req: Request) -> Response {
    match ingest_legacy_inner(&s, req).await {
        Ok(dropped) => with_dropped(StatusCode::OK.into_response(), dropped),
        Err(e) => fail(&s, e),
    }
}

pub(super) async fn ingest_legacy_inner(s: &Arc<AppState>, req: Request) -> Result<DroppedLabels, Error> {
    let (parts, body) = req.into_parts();
    let mut params = crate::ingest::legacy::parse_params(parts.uri.query().unwrap_or(""), now_ms())?;
    let raw = read_body(s, &parts.headers, body).await?;
    let (limits, headers) = (s.limits, parts.headers.clone());
    let body = blocking(move || content_decoded(&limits, &headers, raw)).await?;
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let payload = if content_type.starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(content_type).map_err(|e| {
            Error::rejected(Reject::InvalidMultipart, format!("multipart Content-Type without a boundary: {e}"))
        })?;
        // Multipart bodies carry pprof (as @pyroscope/nodejs and pyroscope-go send it).
        params.format = crate::ingest::legacy::Format::Pprof;
        crate::ingest::legacy::multipart_profile(body, &boundary).await?
    } else {
        body.to_vec()
    };
    let batch = blocking(move || crate::ingest::legacy::build_batch(params, &payload, &limits)).await?;
    if batch.spans.is_empty() && batch.process.is_empty() {
        return Ok(DroppedLabels::default());
    }
    store_batches(s, vec![batch], "ingest").await
}

pub(super) fn disk_full_message(e: &Error) -> String {
    format!(
        "the server's disk is full, nothing of this request was stored; free space or lower --retention-bytes ({e})"
    )
}

/// Connect error codes and their HTTP statuses.
pub(super) fn connect_error(s: &AppState, e: Error) -> Response {
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

pub(super) async fn push(State(s): St, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let ct = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(encoding) = crate::ingest::push::Encoding::from_content_type(ct) else {
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
            let req = crate::ingest::push::decode_request(&body, encoding)?;
            crate::ingest::push::to_batches(req, &limits, now_ms())
        })
        .await?;
        store_batches(&s, batches, "push").await
    }
    .await;
    match result {
        Ok(dropped) => with_dropped(
            match encoding {
                crate::ingest::push::Encoding::Proto => {
                    ([(header::CONTENT_TYPE, "application/proto")], Vec::new()).into_response()
                }
                crate::ingest::push::Encoding::Json => {
                    ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
                }
            },
            dropped,
        ),
        Err(e) => connect_error(&s, e),
    }
}
