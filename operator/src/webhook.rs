//! The mutating admission webhook: `POST /mutate-pods` over HTTPS answers every AdmissionReview
//! with the pod admitted — patched when it opts in, unmodified (with a warning and an Event) when
//! it cannot be injected — and never with an HTTP error for the API server to retry.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::Stream;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, PartialObjectMeta};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use crate::cache::{self, Synced};
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

/// An Event to publish about a pod that was not injected, or injected with a known problem;
/// published off the request path.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingEvent {
    /// The pod's controlling owner, or the pod itself (without a uid: it has none before it is
    /// stored; the publisher looks it up).
    pub regarding: ObjectReference,
    pub reason: String,
    pub note: String,
    /// When the pod was admitted.
    pub at: std::time::Instant,
}

/// What the webhook needs to answer reviews.
pub struct WebhookState {
    pub profilings: Store<SpanProfiling>,
    /// Whether `profilings` holds its first list.
    pub profilings_synced: Synced,
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
    let cache_ready = tokio::time::timeout(CACHE_WAIT, state.profilings_synced.wait()).await.is_ok()
        && state.profilings_synced.is_synced();
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

/// The namespace cache (metadata only: the labels are all the webhook reads), its sync flag, and
/// the watch events that fill it, to be driven by the caller.
pub fn namespace_cache(
    client: Client,
) -> (
    Store<PartialObjectMeta<Namespace>>,
    Synced,
    impl Stream<Item = Result<PartialObjectMeta<Namespace>, watcher::Error>> + Send,
) {
    // kube 5: an Api of PartialObjectMeta makes metadata-only list and watch requests.
    cache::cache(Api::<PartialObjectMeta<Namespace>>::all(client), watcher::Config::default())
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
        Some(obj) => {
            serde_json::to_value(obj).and_then(serde_json::from_value).map_err(|e| format!("pod does not parse: {e}"))
        }
        None => Err("request without an object".into()),
    };
    let decision = match (&pod, profilings) {
        (Err(e), _) => Decision::Skip(Skip::Internal(e.clone())),
        (Ok(_), None) => Decision::Skip(Skip::Internal("the SpanProfiling cache is not synced yet".into())),
        (Ok(pod), Some(profilings)) => {
            inject::decide(pod, &namespace, profilings, defaults, || pod_security(&namespace))
        }
    };
    let skip = match decision {
        Decision::Inject { profiling, patch, warnings } => match resp.clone().with_patch(patch) {
            Ok(mut patched) => {
                let label = pod_label(pod.as_ref().ok());
                for w in &warnings {
                    tracing::warn!(namespace, pod = label, profiling, "{w}");
                }
                tracing::info!(namespace, pod = label, profiling, "injected");
                // Admission warnings reach whoever created the pod: for a Deployment's pods that
                // is the ReplicaSet controller, not the user; the Event is what the user sees.
                let event = (!warnings.is_empty() && !req.dry_run).then(|| PendingEvent {
                    regarding: regarding(pod.as_ref().ok(), &namespace),
                    reason: "InjectedWithWarnings".into(),
                    note: truncate(warnings.join("; "), MAX_NOTE_BYTES),
                    at: std::time::Instant::now(),
                });
                patched.warnings = (!warnings.is_empty()).then_some(warnings);
                return (patched.into_review(), "injected".into(), event);
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
        at: std::time::Instant::now(),
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

/// What an Event about a pod at admission should point at: its controlling owner (a ReplicaSet, a
/// Job…: a controller's pods have no name yet), which the publisher follows up to the workload
/// the user manages; else the pod itself by name (its uid is looked up once it exists).
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
            // The API server assigns the uid after admission: see `publish_events`.
            uid: pod.and_then(|p| p.metadata.uid.clone()),
            ..Default::default()
        },
    }
}

/// How long after admission a bare pod's uid is looked up (the API server stores the pod once
/// every admission step has passed).
const POD_STORED_AFTER: Duration = Duration::from_secs(2);

/// The owner kinds whose own controlling owner is what users manage and `kubectl describe`:
/// a ReplicaSet's Deployment, a Job's CronJob.
fn owner_api(client: &Client, r: &ObjectReference) -> Option<Api<PartialObjectMeta<DynamicObject>>> {
    use kube::discovery::ApiResource;
    let (group, version, plural) = match (r.api_version.as_deref()?, r.kind.as_deref()?) {
        ("apps/v1", "ReplicaSet") => ("apps", "v1", "replicasets"),
        ("batch/v1", "Job") => ("batch", "v1", "jobs"),
        _ => return None,
    };
    let kind = r.kind.clone()?;
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind,
        plural: plural.into(),
    };
    Some(Api::namespaced_with(client.clone(), r.namespace.as_deref()?, &resource))
}

/// Where an Event is shown to the user: a ReplicaSet's or Job's controlling owner (read with a
/// metadata-only get); a bare pod with its uid (without one, `kubectl describe pod` does not show
/// the Event). Anything that cannot be read keeps the reference as it was.
async fn resolve(client: &Client, mut r: ObjectReference, admitted_at: tokio::time::Instant) -> ObjectReference {
    if r.kind.as_deref() == Some("Pod") && r.uid.as_deref().is_none_or(str::is_empty) {
        tokio::time::sleep_until(admitted_at + POD_STORED_AFTER).await;
        let (Some(ns), Some(name)) = (r.namespace.clone(), r.name.clone()) else { return r };
        match Api::<Pod>::namespaced(client.clone(), &ns).get_metadata_opt(&name).await {
            Ok(Some(pod)) => r.uid = pod.metadata.uid,
            Ok(None) => {
                tracing::debug!(namespace = ns, pod = name, "pod not stored (rejected later?); event without uid")
            }
            Err(e) => tracing::debug!(namespace = ns, pod = name, error = %e, "pod uid lookup failed"),
        }
        return r;
    }
    let Some(api) = owner_api(client, &r) else { return r };
    let Some(name) = r.name.clone() else { return r };
    match api.get_metadata_opt(&name).await {
        Ok(Some(owner)) => {
            let owners = owner.metadata.owner_references.unwrap_or_default();
            if let Some(top) = owners.iter().find(|o| o.controller == Some(true)) {
                r = ObjectReference {
                    api_version: Some(top.api_version.clone()),
                    kind: Some(top.kind.clone()),
                    name: Some(top.name.clone()),
                    namespace: r.namespace.clone(),
                    uid: Some(top.uid.clone()),
                    ..Default::default()
                };
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(owner = name, error = %e, "owner lookup failed; event on the direct owner"),
    }
    r
}

/// Publishes the webhook's Events until the channel closes, in order; each Event goes to the
/// object the user looks at (see [`resolve`]).
pub async fn publish_events(mut rx: mpsc::Receiver<PendingEvent>, recorder: Recorder, client: Client) {
    while let Some(ev) = rx.recv().await {
        let regarding = resolve(&client, ev.regarding, ev.at.into()).await;
        let event = Event {
            type_: EventType::Warning,
            reason: ev.reason,
            note: Some(ev.note),
            action: "Inject".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &regarding).await {
            tracing::warn!(error = %e, "publishing an event failed");
        }
    }
}
