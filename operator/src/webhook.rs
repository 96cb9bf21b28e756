//! The mutating admission webhook: `POST /mutate-pods` over HTTPS answers every AdmissionReview
//! with the pod admitted — patched when it opts in, unmodified (with a warning and an Event) when
//! it cannot be injected — and never with an HTTP error for the API server to retry.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use futures::Stream;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, PartialObjectMeta};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::crd::SpanProfiling;
use crate::inject::{self, Decision, Defaults, Skip};
use crate::metrics::{Metrics, snake};
use crate::names::WEBHOOK_PATH;
use crate::pod_security::{self, Level};

/// The API server sends at most a few MiB; anything larger is not a review.
const MAX_BODY_BYTES: usize = 8 << 20;
/// How long a review waits for the SpanProfiling cache at startup before giving up on the pod.
const CACHE_WAIT: Duration = Duration::from_secs(2);
/// events.k8s.io/v1 rejects notes longer than 1 KiB.
const MAX_NOTE_BYTES: usize = 1024;

/// An Event to publish about a pod that was not injected; published off the request path.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingEvent {
    pub regarding: ObjectReference,
    pub reason: String,
    pub note: String,
}

/// What the webhook needs to answer reviews.
pub struct WebhookState {
    pub profilings: Store<SpanProfiling>,
    /// Namespaces' metadata, for the Pod Security level each enforces.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    /// Bounded: when full, events are dropped rather than slowing admission.
    pub events: mpsc::Sender<PendingEvent>,
}

/// The webhook's HTTP routes.
pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(mutate))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn mutate(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    // Before the first list of SpanProfilings arrives, "true" would wrongly find none.
    let cache_ready = tokio::time::timeout(CACHE_WAIT, state.profilings.wait_until_ready()).await.is_ok_and(|r| r.is_ok());
    let profilings = state.profilings.state();
    let level = |namespace: &str| namespace_level(&state.namespaces, namespace, state.defaults.pod_security_default);
    let (review, outcome, event) = review(&body, cache_ready.then_some(profilings.as_slice()), level, &state.defaults);
    state.metrics.admission(&outcome);
    if let Some(event) = event
        && state.events.try_send(event).is_err()
    {
        tracing::warn!("event queue full; dropping an event");
    }
    match serde_json::to_vec(&review) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        // Cannot happen for these types; the API server then applies failurePolicy: Ignore.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The Pod Security level `namespace` enforces, from the namespace cache; a namespace the cache
/// does not hold (yet) gets `default`, the level of unlabelled namespaces.
pub fn namespace_level(namespaces: &Store<PartialObjectMeta<Namespace>>, namespace: &str, default: Level) -> Level {
    match namespaces.get(&ObjectRef::new(namespace)) {
        Some(ns) => pod_security::enforced_level(ns.labels()).unwrap_or(default),
        None => {
            tracing::info!(namespace, level = %default, "namespace not in the cache (yet); assuming the default Pod Security level");
            default
        }
    }
}

/// The namespace cache (metadata only: the labels are all the webhook reads) and the watch
/// events that fill it, to be driven by the caller.
pub fn namespace_cache(
    client: Client,
) -> (Store<PartialObjectMeta<Namespace>>, impl Stream<Item = Result<PartialObjectMeta<Namespace>, watcher::Error>> + Send) {
    let (reader, writer) = reflector::store();
    // kube 5: an Api of PartialObjectMeta makes metadata-only list and watch requests.
    let api = Api::<PartialObjectMeta<Namespace>>::all(client);
    let events = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff().touched_objects();
    (reader, events)
}

/// Answers one AdmissionReview body: the response review, the metric outcome, and the Event to
/// publish. `profilings` is `None` while the cache is not synced; `pod_security` gives the level a
/// namespace enforces. Pure, so it is tested directly.
pub fn review(
    body: &[u8],
    profilings: Option<&[Arc<SpanProfiling>]>,
    pod_security: impl FnOnce(&str) -> Level,
    defaults: &Defaults,
) -> (AdmissionReview<DynamicObject>, String, Option<PendingEvent>) {
    let parsed: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return malformed(format!("malformed AdmissionReview: {e}")),
    };
    let req: AdmissionRequest<DynamicObject> = match parsed.try_into() {
        Ok(r) => r,
        Err(_) => return malformed("AdmissionReview without a request".into()),
    };
    let resp = AdmissionResponse::from(&req);
    if req.kind.kind != "Pod" || req.operation != Operation::Create {
        return (resp.into_review(), "ignored".into(), None);
    }
    let namespace = req.namespace.clone().unwrap_or_else(|| "default".into());
    let pod: Result<Pod, String> = match &req.object {
        Some(obj) => serde_json::to_value(obj).and_then(serde_json::from_value).map_err(|e| format!("pod does not parse: {e}")),
        None => Err("request without an object".into()),
    };
    let decision = match (&pod, profilings) {
        (Err(e), _) => Decision::Skip(Skip::Internal(e.clone())),
        (Ok(_), None) => Decision::Skip(Skip::Internal("the SpanProfiling cache is not synced yet".into())),
        (Ok(pod), Some(profilings)) => inject::decide(pod, &namespace, profilings, defaults, || pod_security(&namespace)),
    };
    let skip = match decision {
        Decision::Inject { profiling, patch, warnings } => match resp.clone().with_patch(patch) {
            Ok(mut patched) => {
                let pod = pod_label(pod.as_ref().ok());
                for w in &warnings {
                    tracing::info!(namespace, pod, profiling, "{w}");
                }
                tracing::info!(namespace, pod, profiling, "injected");
                patched.warnings = (!warnings.is_empty()).then_some(warnings);
                return (patched.into_review(), "injected".into(), None);
            }
            Err(e) => Skip::Internal(e.to_string()),
        },
        Decision::Skip(skip) => skip,
    };
    let outcome = snake(skip.reason());
    if !skip.is_problem() {
        return (resp.into_review(), outcome, None);
    }
    let message = skip.to_string();
    tracing::warn!(namespace, pod = %pod_label(pod.as_ref().ok()), reason = skip.reason(), "{message}");
    let mut resp = resp;
    resp.warnings = Some(vec![message.clone()]);
    // dryRun requests must have no side effects (sideEffects: None).
    let event = (!req.dry_run).then(|| PendingEvent {
        regarding: regarding(pod.as_ref().ok(), &namespace),
        reason: skip.reason().to_owned(),
        note: truncate(message, MAX_NOTE_BYTES),
    });
    (resp.into_review(), outcome, event)
}

fn malformed(message: String) -> (AdmissionReview<DynamicObject>, String, Option<PendingEvent>) {
    tracing::warn!("{message}");
    // kube's and controller-runtime's convention: HTTP 200, a review without uid whose status
    // says why. The API server rejects the uid mismatch as a webhook failure, and
    // failurePolicy: Ignore admits the pod.
    (AdmissionResponse::invalid(message).into_review(), "malformed".into(), None)
}

/// `s` cut to at most `max` bytes on a character boundary, marked with an ellipsis when cut.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn pod_label(pod: Option<&Pod>) -> String {
    pod.and_then(|p| p.metadata.name.clone().or_else(|| p.metadata.generate_name.clone())).unwrap_or_default()
}

/// What an Event about a pod at admission should point at: the pod has no name or uid yet when
/// a controller creates it, so its controlling owner (a ReplicaSet, a Job…) is where
/// `kubectl describe` shows the Event; a bare pod is referenced by name.
pub fn regarding(pod: Option<&Pod>, namespace: &str) -> ObjectReference {
    let owner = pod.and_then(|p| {
        let owners = p.metadata.owner_references.as_deref().unwrap_or_default();
        owners.iter().find(|o| o.controller == Some(true)).or(owners.first()).cloned()
    });
    match owner {
        Some(o) => ObjectReference {
            api_version: Some(o.api_version),
            kind: Some(o.kind),
            name: Some(o.name),
            namespace: Some(namespace.to_owned()),
            uid: Some(o.uid),
            ..Default::default()
        },
        None => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod_label(pod)),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
    }
}

/// Publishes the webhook's Events until the channel closes.
pub async fn publish_events(mut rx: mpsc::Receiver<PendingEvent>, recorder: Recorder) {
    while let Some(ev) = rx.recv().await {
        let event = Event {
            type_: EventType::Warning,
            reason: ev.reason,
            note: Some(ev.note),
            action: "Inject".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &ev.regarding).await {
            tracing::warn!(error = %e, "publishing an event failed");
        }
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then lets open connections
/// finish (up to 10 s).
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after 10 s; closing them");
    }
    Ok(())
}
