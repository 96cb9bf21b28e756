//! The status controller: watches SpanProfilings and the pods injected with them, and reports
//! each SpanProfiling's conditions (`Ready`: pods created now get the sampler; `WebhookServing`:
//! the API server can call the webhook), observed generation and injected-pod count by
//! server-side apply, with Events on `Ready` transitions and backoff on errors.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use crate::cache::{self, Synced};
use crate::crd::{SpanProfiling, SpanProfilingSpec, SpanProfilingStatus};
use crate::error::Error;
use crate::inject::{Defaults, profiling_key};
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::names::{ANNOTATION_INJECTED, LABEL_INJECTED, MANAGER};
use crate::serving::Serving;

/// Condition types the controller reports.
pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_WEBHOOK: &str = "WebhookServing";

/// How often a healthy SpanProfiling is re-checked without any watch event.
const RESYNC: Duration = Duration::from_secs(300);
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    /// Metadata of the pods labelled as injected, across namespaces.
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// Whether `pods` holds its first list (before, every count would read 0).
    pub pods_synced: Synced,
    /// Whether the API server can call the webhook, as last observed.
    pub serving: watch::Receiver<Serving>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub defaults: Defaults,
    /// Only the leader writes status and publishes Events, so replicas do not duplicate them.
    pub leader: Leadership,
    /// Consecutive failures per SpanProfiling, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context that always acts (one replica, no election; see [`Context::with_leadership`])
    /// over a pod store filled by the caller (see [`Context::with_pods_synced`]).
    pub fn new(
        client: Client,
        pods: Store<PartialObjectMeta<Pod>>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        defaults: Defaults,
        serving: watch::Receiver<Serving>,
    ) -> Self {
        Context {
            client,
            pods,
            pods_synced: Synced::done(),
            serving,
            recorder,
            metrics,
            defaults,
            leader: Leadership::always(),
            failures: Mutex::default(),
        }
    }

    /// Reports nothing until `synced` says the pod store holds its first list.
    pub fn with_pods_synced(self, synced: Synced) -> Self {
        Context { pods_synced: synced, ..self }
    }

    /// Acts only while `leader` says this replica leads.
    pub fn with_leadership(self, leader: Leadership) -> Self {
        Context { leader, ..self }
    }
}

/// Semantic checks beyond what the CRD schema enforces (objects may predate the schema).
pub fn validate(spec: &SpanProfilingSpec, defaults: &Defaults) -> Result<(), String> {
    let server = spec.server_url.as_deref().unwrap_or(&defaults.server_url);
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        return Err(format!("serverUrl {server:?} is not an http(s) URL"));
    }
    if let Some(base) = &spec.profile_url_base
        && !(base.starts_with("http://") || base.starts_with("https://"))
    {
        return Err(format!("profileUrlBase {base:?} is not an http(s) URL"));
    }
    if !(1..=1000).contains(&spec.sample_rate_hz) {
        return Err(format!("sampleRateHz {} is outside 1..1000", spec.sample_rate_hz));
    }
    if !(1024..=65528).contains(&spec.stack_copy_bytes) || !spec.stack_copy_bytes.is_multiple_of(8) {
        return Err(format!("stackCopyBytes {} is not a multiple of 8 in 1024..65528", spec.stack_copy_bytes));
    }
    let interval = &spec.upload_interval;
    let valid_interval = interval.len() > 1
        && (interval.ends_with('s') || interval.ends_with('m'))
        && interval[..interval.len() - 1].parse::<u32>().is_ok_and(|n| n > 0);
    if !valid_interval {
        return Err(format!("uploadInterval {interval:?} is not like 10s or 1m"));
    }
    if spec.sidecar.image.as_deref().unwrap_or(&defaults.sidecar_image).trim().is_empty() {
        return Err("no sampler image (sidecar.image, or the operator's --sidecar-image)".into());
    }
    // The webhook would admit pods without the sampler rather than make them invalid.
    let sp = SpanProfiling::new("validation", spec.clone());
    let sampler = crate::inject::sampler_container(&sp, defaults, server, "service", crate::inject::AppUser::default());
    let problems = crate::validation::container_problems(&sampler);
    if !problems.is_empty() {
        return Err(format!(
            "the sampler container would be invalid, so pods are not injected: {}",
            problems.join("; ")
        ));
    }
    Ok(())
}

/// The status `sp` should have, given the injected pods the operator sees. Conditions keep their
/// `lastTransitionTime` while their status does not change, as Kubernetes' condition rules ask.
pub fn desired_status(
    sp: &SpanProfiling,
    pods: &[Arc<PartialObjectMeta<Pod>>],
    defaults: &Defaults,
    serving: &Serving,
    now: Timestamp,
) -> SpanProfilingStatus {
    let previous = sp.status.clone().unwrap_or_default();
    let key = profiling_key(sp);
    let mine: Vec<&Arc<PartialObjectMeta<Pod>>> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && p.annotations().get(ANNOTATION_INJECTED) == Some(&key))
        .collect();
    let newest = mine.iter().filter_map(|p| p.metadata.creation_timestamp.clone()).max_by_key(|t| t.0);
    let last_injection_time = match (previous.last_injection_time.clone(), newest) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
        (a, b) => a.or(b),
    };
    let generation = sp.metadata.generation;
    let (webhook_status, webhook_reason, webhook_message) = serving.condition();
    // Ready means what a user relies on: a pod annotated now would get the sampler.
    let (status, reason, message) = match validate(&sp.spec, defaults) {
        Err(e) => ("False", "InvalidSpec", e),
        Ok(()) if webhook_status == "True" => (
            "True",
            "Configured",
            format!("pods annotated spanprof.dev/inject get the sampler ({} injected)", mine.len()),
        ),
        Ok(()) => (webhook_status, webhook_reason, webhook_message.clone()),
    };
    let condition = |type_: &str, status: &str, reason: &str, message: String| {
        let old = previous.conditions.iter().find(|c| c.type_ == type_);
        let last_transition_time = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Time(now),
        };
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    };
    let ready = condition(CONDITION_READY, status, reason, message);
    let webhook = condition(CONDITION_WEBHOOK, webhook_status, webhook_reason, webhook_message);
    SpanProfilingStatus {
        observed_generation: generation,
        conditions: vec![ready, webhook],
        injected_pods: u32::try_from(mine.len()).unwrap_or(u32::MAX),
        last_injection_time,
    }
}

/// Brings one SpanProfiling's status up to date.
pub async fn reconcile(sp: Arc<SpanProfiling>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leader.is_leader() {
        // The leader reports status; becoming the leader reconciles everything again.
        return Ok(Action::requeue(RESYNC));
    }
    let serving = ctx.serving.borrow().clone();
    if !ctx.pods_synced.is_synced() || serving == Serving::Unknown {
        // A status from half the facts would be corrected a moment later (two writes, maybe a
        // false Event); both becoming known reconciles everything (see `run`).
        return Ok(Action::await_change());
    }
    ctx.metrics.reconciles.inc();
    let namespace = sp.namespace().unwrap_or_default();
    let name = sp.name_any();
    let status = desired_status(&sp, &ctx.pods.state(), &ctx.defaults, &serving, Timestamp::now());
    if sp.status.as_ref() != Some(&status) {
        let api: Api<SpanProfiling> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": SpanProfiling::api_version(&()),
            "kind": SpanProfiling::kind(&()),
            "status": status,
        });
        api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
        let ready = |s: Option<&SpanProfilingStatus>| {
            s.and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_READY)).map(|c| c.status.clone())
        };
        let (was, now) = (ready(sp.status.as_ref()), ready(Some(&status)));
        if was != now
            && let Some(cond) = status.conditions.iter().find(|c| c.type_ == CONDITION_READY)
        {
            let event = Event {
                type_: if cond.status == "True" { EventType::Normal } else { EventType::Warning },
                reason: cond.reason.clone(),
                note: Some(cond.message.clone()),
                action: "Reconcile".into(),
                secondary: None,
            };
            ctx.recorder.publish(&event, &sp.object_ref(&())).await?;
        }
    }
    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&format!("{namespace}/{name}"));
    }
    Ok(Action::requeue(RESYNC))
}

/// Requeues a failed SpanProfiling after 5 s, doubling per consecutive failure up to 5 min.
pub fn error_policy(sp: Arc<SpanProfiling>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failures.inc();
    let key = profiling_key(&sp);
    let n = match ctx.failures.lock() {
        Ok(mut failures) => {
            let n = failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let delay = backoff(n);
    tracing::warn!(profiling = key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The delay after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(10)).min(BACKOFF_MAX)
}

/// The SpanProfiling an injected pod belongs to.
pub fn profiling_of(pod: &PartialObjectMeta<Pod>) -> Option<ObjectRef<SpanProfiling>> {
    let (ns, name) = pod.annotations().get(ANNOTATION_INJECTED)?.split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
}

/// Watch events of injected pods' metadata, after they reached the pod store.
pub trait PodEvents: futures::Stream<Item = Result<PartialObjectMeta<Pod>, watcher::Error>> + Send + 'static {}
impl<S: futures::Stream<Item = Result<PartialObjectMeta<Pod>, watcher::Error>> + Send + 'static> PodEvents for S {}

/// The watch caches the operator keeps: SpanProfilings (the controller's and the webhook's) and
/// the metadata of injected pods, each with its [`Synced`] flag.
pub struct Caches {
    pub profilings: Store<SpanProfiling>,
    pub profilings_synced: Synced,
    pub pods: Store<PartialObjectMeta<Pod>>,
    pub pods_synced: Synced,
}

/// The controller (over the SpanProfiling cache the webhook also reads), the caches, and the pod
/// events that drive the pod cache (the controller consumes them in [`run`]).
pub fn controller(client: Client) -> (Controller<SpanProfiling>, Caches, impl PodEvents) {
    // Metadata only, and only pods labelled as injected: the operator never sees pod specs.
    let (pods, pods_synced, pod_events) = cache::cache(
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
        watcher::Config::default().labels(&format!("{LABEL_INJECTED}=true")),
    );
    let (profilings, profilings_synced, profiling_events) =
        cache::cache(Api::<SpanProfiling>::all(client), watcher::Config::default());
    // Only spec changes (new generations) trigger a reconcile: the echo of our own status write
    // must not (pod changes, leadership and the webhook's reachability have triggers of their own).
    let spec_changes = profiling_events.predicate_filter(predicates::generation, PredicateConfig::default());
    let controller = Controller::for_stream(spec_changes, profilings.clone());
    (controller, Caches { profilings, profilings_synced, pods, pods_synced }, pod_events)
}

/// Runs the controller until `shutdown` resolves; reconciles every SpanProfiling again whenever
/// this replica becomes the leader, the pod cache first syncs, or the webhook's reachability
/// changes (it is part of every SpanProfiling's status).
pub async fn run(
    controller: Controller<SpanProfiling>,
    pods: impl PodEvents,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let everything = futures::stream::select(
        ctx.leader.gained(),
        futures::stream::select(ctx.pods_synced.on_sync(), changes(ctx.serving.clone())),
    );
    controller
        .watches_stream(pods, |pod| profiling_of(&pod))
        .reconcile_all_on(everything)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(profiling = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

/// Yields once per change of `rx`'s value.
fn changes<T: Send + Sync + 'static>(rx: watch::Receiver<T>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        rx.borrow_and_update();
        Some(((), rx))
    })
}
