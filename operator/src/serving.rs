//! Whether pods created now would be injected: the API server must find our entry in the
//! MutatingWebhookConfiguration, with a CA bundle, pointing at the webhook Service, and the
//! Service must have a ready operator endpoint. A pure verdict from those objects, and the task
//! that keeps it current (a watch of the Service's EndpointSlices in the operator's namespace and
//! a read of the one webhook configuration).
//!
//! Why this exists: on a real cluster the operator never became ready, the API server found no
//! endpoint, `failurePolicy: Ignore` admitted every pod unmodified and silently — and the
//! SpanProfiling said `Ready=True`. `Ready` now includes this verdict.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::cache;
use crate::names::WEBHOOK_NAME;

/// How often the webhook configuration is read again (endpoint changes are watched).
const CONFIG_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Where the webhook is expected to be reached.
#[derive(Clone, Debug)]
pub struct Target {
    /// The MutatingWebhookConfiguration holding our entry.
    pub configuration: String,
    /// The Service in front of the webhook, in `namespace`.
    pub service: String,
    pub namespace: String,
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serving {
    /// Not observed yet.
    Unknown,
    /// The API server can reach `endpoints` ready replicas.
    Yes { endpoints: usize },
    /// A reason pods are admitted without the sampler, for the condition's reason and message.
    No { reason: &'static str, message: String },
    /// The objects could not be read (e.g. missing RBAC): the truth is not known.
    Unreadable(String),
}

impl Serving {
    /// The `WebhookServing` condition's status, reason and message.
    pub fn condition(&self) -> (&'static str, &'static str, String) {
        match self {
            Serving::Yes { endpoints } => (
                "True",
                "Serving",
                format!("the API server calls the injection webhook; {endpoints} ready operator endpoint(s)"),
            ),
            Serving::No { reason, message } => ("False", reason, message.clone()),
            Serving::Unknown => ("Unknown", "NotObserved", "the webhook's endpoints have not been observed yet".into()),
            Serving::Unreadable(e) => ("Unknown", "Unreadable", e.clone()),
        }
    }
}

/// Ready endpoints across `slices`; an endpoint whose `ready` is unset counts, as the API says
/// consumers should treat an unknown state.
pub fn ready_endpoints(slices: &[impl AsRef<EndpointSlice>]) -> usize {
    slices
        .iter()
        .flat_map(|s| s.as_ref().endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .count()
}

/// The verdict from the webhook configuration (`None`: not found) and the Service's
/// EndpointSlices.
pub fn verdict(
    target: &Target,
    configuration: Option<&MutatingWebhookConfiguration>,
    slices: &[impl AsRef<EndpointSlice>],
) -> Serving {
    let Some(configuration) = configuration else {
        return Serving::No {
            reason: "WebhookConfigurationMissing",
            message: format!(
                "MutatingWebhookConfiguration {} does not exist, so no pod is injected; reinstall the chart",
                target.configuration
            ),
        };
    };
    let Some(entry) = configuration.webhooks.iter().flatten().find(|w| w.name == WEBHOOK_NAME) else {
        return Serving::No {
            reason: "WebhookConfigurationMissing",
            message: format!("MutatingWebhookConfiguration {} has no webhook {WEBHOOK_NAME}", target.configuration),
        };
    };
    if entry.client_config.ca_bundle.as_ref().is_none_or(|b| b.0.is_empty()) {
        return Serving::No {
            reason: "NoCABundle",
            message: format!(
                "webhook {WEBHOOK_NAME} has no caBundle yet, so the API server cannot call it (the operator fills it in \
                 once it has a certificate)"
            ),
        };
    }
    match &entry.client_config.service {
        Some(svc) if svc.name == target.service && svc.namespace == target.namespace => {}
        Some(svc) => {
            return Serving::No {
                reason: "WebhookMisconfigured",
                message: format!(
                    "webhook {WEBHOOK_NAME} points at Service {}/{}, but the operator serves behind {}/{}",
                    svc.namespace, svc.name, target.namespace, target.service
                ),
            };
        }
        // A URL: reachability is the user's arrangement; endpoints of our Service say nothing.
        None => return Serving::Yes { endpoints: ready_endpoints(slices) },
    }
    match ready_endpoints(slices) {
        0 => Serving::No {
            reason: "NoReadyEndpoints",
            message: format!(
                "Service {}/{} has no ready operator endpoint, so the API server cannot call the webhook and admits \
                 pods without the sampler (failurePolicy: Ignore); see the operator's /readyz and logs",
                target.namespace, target.service
            ),
        },
        endpoints => Serving::Yes { endpoints },
    }
}

/// Keeps `tx` current until the stream of endpoint events ends: on every endpoint change and
/// every [`CONFIG_CHECK_EVERY`], re-reads the configuration and publishes the verdict when it
/// changed.
pub async fn watch(client: Client, target: Target, tx: watch::Sender<Serving>) {
    let slices_api: Api<EndpointSlice> = Api::namespaced(client.clone(), &target.namespace);
    let selector = format!("kubernetes.io/service-name={}", target.service);
    let (slices, synced, events) = cache::cache(slices_api, watcher::Config::default().labels(&selector));
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client);
    let mut events = std::pin::pin!(events);
    let mut tick = tokio::time::interval(CONFIG_CHECK_EVERY);
    let mut seen_sync = false;
    loop {
        tokio::select! {
            // The first list may hold no slice at all, which no event would report.
            () = synced.wait(), if !seen_sync => seen_sync = true,
            event = events.next() => match event {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching the webhook's EndpointSlices failed; retrying");
                    publish(&tx, Serving::Unreadable(format!("cannot watch the webhook Service's EndpointSlices: {e}")));
                    continue;
                }
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {}
        }
        if !synced.is_synced() {
            continue;
        }
        let now = match configurations.get_opt(&target.configuration).await {
            Ok(configuration) => verdict(&target, configuration.as_ref(), &current(&slices)),
            Err(e) => {
                Serving::Unreadable(format!("cannot read MutatingWebhookConfiguration {}: {e}", target.configuration))
            }
        };
        publish(&tx, now);
    }
}

fn current(slices: &Store<EndpointSlice>) -> Vec<std::sync::Arc<EndpointSlice>> {
    slices.state()
}

fn publish(tx: &watch::Sender<Serving>, now: Serving) {
    tx.send_if_modified(|old| {
        if *old == now {
            return false;
        }
        match &now {
            Serving::Yes { endpoints } => tracing::info!(endpoints, "the webhook is served"),
            Serving::No { message, .. } => tracing::warn!("{message}"),
            Serving::Unreadable(e) => tracing::warn!("{e}"),
            Serving::Unknown => {}
        }
        *old = now;
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn target() -> Target {
        Target {
            configuration: "spanprof-operator".into(),
            service: "spanprof-operator".into(),
            namespace: "spanprof".into(),
        }
    }

    fn configuration(ca: Option<&str>, service: &str) -> MutatingWebhookConfiguration {
        serde_json::from_value(json!({
            "metadata": {"name": "spanprof-operator"},
            "webhooks": [{
                "name": "inject.spanprof.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {"caBundle": ca, "service": {"name": service, "namespace": "spanprof", "path": "/mutate-pods"}}
            }]
        }))
        .unwrap()
    }

    fn slice(ready: &[Option<bool>]) -> Arc<EndpointSlice> {
        let endpoints: Vec<_> =
            ready.iter().map(|r| json!({"addresses": ["10.0.0.1"], "conditions": {"ready": r}})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "spanprof-operator-abc", "labels": {"kubernetes.io/service-name": "spanprof-operator"}},
                "addressType": "IPv4", "endpoints": endpoints
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ready_endpoints_behind_a_configured_webhook_serve() {
        let c = configuration(Some("Q0E="), "spanprof-operator");
        assert_eq!(
            verdict(&target(), Some(&c), &[slice(&[Some(true), Some(false)]), slice(&[None])]),
            Serving::Yes { endpoints: 2 }
        );
    }

    #[test]
    fn each_way_of_not_being_called_has_its_reason() {
        let reason = |s: Serving| match s {
            Serving::No { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        let good = configuration(Some("Q0E="), "spanprof-operator");
        // What the real cluster had: the pods existed but none was ready.
        assert_eq!(reason(verdict(&target(), Some(&good), &[slice(&[Some(false)])])), "NoReadyEndpoints");
        assert_eq!(reason(verdict(&target(), Some(&good), &Vec::<Arc<EndpointSlice>>::new())), "NoReadyEndpoints");
        assert_eq!(reason(verdict(&target(), None, &[slice(&[Some(true)])])), "WebhookConfigurationMissing");
        let no_ca = configuration(None, "spanprof-operator");
        assert_eq!(reason(verdict(&target(), Some(&no_ca), &[slice(&[Some(true)])])), "NoCABundle");
        let elsewhere = configuration(Some("Q0E="), "other");
        assert_eq!(reason(verdict(&target(), Some(&elsewhere), &[slice(&[Some(true)])])), "WebhookMisconfigured");
        let mut renamed = good.clone();
        renamed.webhooks.as_mut().unwrap()[0].name = "other.example.com".into();
        assert_eq!(reason(verdict(&target(), Some(&renamed), &[slice(&[Some(true)])])), "WebhookConfigurationMissing");
    }

    #[test]
    fn conditions_say_true_false_or_unknown() {
        assert_eq!(Serving::Yes { endpoints: 1 }.condition().0, "True");
        assert_eq!(
            Serving::No { reason: "NoReadyEndpoints", message: "m".into() }.condition(),
            ("False", "NoReadyEndpoints", "m".into())
        );
        assert_eq!(Serving::Unknown.condition().0, "Unknown");
        assert_eq!(Serving::Unreadable("forbidden".into()).condition(), ("Unknown", "Unreadable", "forbidden".into()));
    }
}
