//! The controller and the TLS Secret handling against kube's tower-test mock API server: every
//! request is asserted exactly (method, path, query, content type, body).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::{Request, Response};
use http_body_util::BodyExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};
use spanprof_operator::controller::{self, Context};
use spanprof_operator::crd::{SpanProfiling, SpanProfilingSpec};
use spanprof_operator::inject::Defaults;
use spanprof_operator::leader::{Elector, Leadership, Timing};
use spanprof_operator::metrics::Metrics;
use spanprof_operator::serving::Serving;
use spanprof_operator::tls::{self, CertBundle, Ensured, SecretStore};
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// An API request the operator is expected to make next, by what it does: each test states its
/// exchanges as a sequence of these (the shape of controller-rs's `ApiServerVerifier`
/// scenarios), and what every call of a kind must look like is checked here once.
#[derive(Clone, Copy, Debug)]
enum Call {
    /// Server-side apply of a SpanProfiling's status (field manager, force, apply-patch).
    ApplyStatus,
    /// An Event about a SpanProfiling.
    CreateEvent,
    GetSecret,
    CreateSecret,
    ReplaceSecret,
    GetWebhookConfig,
    /// Server-side apply of the caBundle to the MutatingWebhookConfiguration.
    ApplyWebhookConfig,
    GetLease,
    CreateLease,
    ReplaceLease,
}

const STATUS_PATH: &str = "/apis/spanprof.dev/v1alpha1/namespaces/shop/spanprofilings/default/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
const SECRETS_PATH: &str = "/api/v1/namespaces/spanprof/secrets";
const SECRET_PATH: &str = "/api/v1/namespaces/spanprof/secrets/spanprof-operator-tls";
const WEBHOOK_CONFIG_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/spanprof-operator";
const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/spanprof/leases";
const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/spanprof/leases/spanprof-operator";

impl Call {
    fn request_line(self) -> (&'static str, &'static str) {
        match self {
            Call::ApplyStatus => ("PATCH", STATUS_PATH),
            Call::CreateEvent => ("POST", EVENTS_PATH),
            Call::GetSecret => ("GET", SECRET_PATH),
            Call::CreateSecret => ("POST", SECRETS_PATH),
            Call::ReplaceSecret => ("PUT", SECRET_PATH),
            Call::GetWebhookConfig => ("GET", WEBHOOK_CONFIG_PATH),
            Call::ApplyWebhookConfig => ("PATCH", WEBHOOK_CONFIG_PATH),
            Call::GetLease => ("GET", LEASE_PATH),
            Call::CreateLease => ("POST", LEASES_PATH),
            Call::ReplaceLease => ("PUT", LEASE_PATH),
        }
    }

    /// Server-side applies: the operator owns its fields and takes them over (force).
    fn is_apply(self) -> bool {
        matches!(self, Call::ApplyStatus | Call::ApplyWebhookConfig)
    }
}

/// What the operator sent.
struct Sent {
    query: String,
    content_type: String,
    body: Value,
}

/// Takes the next request, checks it is `call`, answers `status` + `reply`, and returns what was
/// sent for further assertions.
async fn expect(handle: &mut ApiHandle, call: Call, status: u16, reply: Value) -> Sent {
    let (method, path) = call.request_line();
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request; expected {call:?}: {method} {path}"))
        .expect("service dropped");
    assert_eq!((req.method().as_str(), req.uri().path()), (method, path), "expected {call:?}");
    let query = req.uri().query().unwrap_or_default().to_owned();
    let content_type = req.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    if call.is_apply() {
        assert_eq!(sorted_query(&query), ["fieldManager=spanprof-operator", "force=true"], "{call:?}");
        assert_eq!(content_type, "application/apply-patch+yaml", "{call:?}");
    }
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    send.send_response(
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap(),
    );
    Sent { query, content_type, body }
}

/// How the API server refuses a call: the `Status` it answers with.
#[derive(Clone, Copy, Debug)]
enum Failure {
    NotFound,
    AlreadyExists,
    /// The resourceVersion of a replace is not the stored one any more.
    Conflict,
    /// etcd failed.
    Internal,
}

impl Failure {
    fn status(self) -> (u16, &'static str, &'static str) {
        match self {
            Failure::NotFound => (404, "NotFound", "not found"),
            Failure::AlreadyExists => (409, "AlreadyExists", "already exists"),
            Failure::Conflict => (409, "Conflict", "the object has been modified"),
            Failure::Internal => (500, "InternalError", "etcd timeout"),
        }
    }

    /// The HTTP status code and the `Status` body.
    fn reply(self) -> (u16, Value) {
        let (code, reason, message) = self.status();
        (
            code,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message}),
        )
    }
}

/// Takes the next request, checks it is `call`, and refuses it with `failure`.
async fn refuse(handle: &mut ApiHandle, call: Call, failure: Failure) -> Sent {
    let (code, status) = failure.reply();
    expect(handle, call, code, status).await
}

/// Nothing was sent (the client may already be gone, which closes the mock).
async fn assert_no_request(handle: &mut ApiHandle) {
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(50), handle.next_request()).await {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
}

fn defaults() -> Defaults {
    Defaults {
        server_url: "http://spanprof-server.spanprof.svc:4040".into(),
        sidecar_image: "ghcr.io/spanprof/spanprof-sidecar:0.1.0".into(),
        operator_namespace: "spanprof".into(),
        pod_security_default: spanprof_operator::pod_security::Level::Privileged,
    }
}

fn pod(name: &str, injected: &str, created: &str, deleting: bool) -> PartialObjectMeta<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PartialObjectMetadata",
        "metadata": {
            "name": name, "namespace": "shop", "creationTimestamp": created,
            "deletionTimestamp": if deleting { json!("2025-06-01T12:00:00Z") } else { Value::Null },
            "annotations": {"spanprof.dev/injected": injected},
            "labels": {"spanprof.dev/injected": "true"}
        }
    }))
    .unwrap()
}

fn context(client: Client) -> Arc<Context> {
    let (pods, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in [
        pod("ride-1", "shop/default", "2025-06-01T10:00:00Z", false),
        pod("ride-2", "shop/default", "2025-06-01T11:00:00Z", false),
        pod("ride-3", "shop/default", "2025-06-01T11:30:00Z", true),
        pod("other", "shop/other", "2025-06-01T11:59:00Z", false),
    ] {
        writer.apply_watcher_event(&watcher::Event::InitApply(p));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    std::mem::forget(writer);
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "spanprof-operator".into(), instance: Some("op-0".into()) },
    );
    Arc::new(Context::new(client, pods, recorder, Arc::new(Metrics::default()), defaults(), serving()))
}

/// The webhook as seen on a healthy cluster: one ready operator endpoint.
fn serving() -> tokio::sync::watch::Receiver<Serving> {
    tokio::sync::watch::channel(SERVING).1
}

const SERVING: Serving = Serving::Yes { endpoints: 1 };

fn profiling(spec: SpanProfilingSpec) -> SpanProfiling {
    let mut sp = SpanProfiling::new("default", spec);
    sp.metadata.namespace = Some("shop".into());
    sp.metadata.generation = Some(3);
    sp.metadata.uid = Some("2f9b1a64-8a3e-4c55-9d43-7e0a1b2c3d4e".into());
    sp
}

fn sorted_query(q: &str) -> Vec<String> {
    let mut parts: Vec<String> = q.split('&').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    parts.sort();
    parts
}

#[tokio::test]
async fn new_profiling_gets_its_status_applied_and_a_ready_event() {
    let (client, mut handle) = mock_client();
    let ctx = context(client);
    let sp = Arc::new(profiling(SpanProfilingSpec::default()));
    let run = tokio::spawn(controller::reconcile(sp.clone(), ctx.clone()));

    let Sent { query, content_type, body } =
        expect(&mut handle, Call::ApplyStatus, 200, serde_json::to_value(&*sp).unwrap()).await;
    assert_eq!(sorted_query(&query), ["fieldManager=spanprof-operator", "force=true"]);
    assert_eq!(content_type, "application/apply-patch+yaml");
    assert_eq!(body["apiVersion"], "spanprof.dev/v1alpha1");
    assert_eq!(body["kind"], "SpanProfiling");
    let status = &body["status"];
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["injectedPods"], 2, "terminating pods and other profilings' pods are not counted");
    assert_eq!(status["lastInjectionTime"], "2025-06-01T11:00:00Z");
    let ready = &status["conditions"][0];
    assert_eq!(
        (ready["type"].as_str(), ready["status"].as_str(), ready["reason"].as_str()),
        (Some("Ready"), Some("True"), Some("Configured"))
    );
    assert_eq!(ready["observedGeneration"], 3);
    assert!(ready["lastTransitionTime"].is_string());
    assert_eq!(body.as_object().unwrap().len(), 3, "only apiVersion, kind and status are applied: {body}");

    let Sent { body: event, .. } = expect(&mut handle, Call::CreateEvent, 201, json!({})).await;
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["reason"], "Configured");
    assert_eq!(event["action"], "Reconcile");
    assert_eq!(event["reportingController"], "spanprof-operator");
    assert_eq!(event["reportingInstance"], "op-0");
    assert_eq!(event["regarding"]["kind"], "SpanProfiling");
    assert_eq!(event["regarding"]["name"], "default");
    assert_eq!(event["regarding"]["uid"], "2f9b1a64-8a3e-4c55-9d43-7e0a1b2c3d4e");

    let action = run.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn up_to_date_status_makes_no_request() {
    let (client, mut handle) = mock_client();
    let ctx = context(client);
    let mut sp = profiling(SpanProfilingSpec::default());
    sp.status = Some(controller::desired_status(
        &sp,
        &ctx.pods.state(),
        &defaults(),
        &SERVING,
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let run = tokio::spawn(controller::reconcile(Arc::new(sp), ctx));
    assert_no_request(&mut handle).await;
    assert_eq!(run.await.unwrap().unwrap(), Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn invalid_spec_is_reported_not_ready_with_a_warning_event() {
    let (client, mut handle) = mock_client();
    let ctx = context(client);
    let mut sp = profiling(SpanProfilingSpec { server_url: Some("ftp://files".into()), ..Default::default() });
    // It was Ready before: the transition must get a new lastTransitionTime and an Event.
    let mut before = controller::desired_status(
        &profiling(SpanProfilingSpec::default()),
        &[],
        &defaults(),
        &SERVING,
        "2025-01-01T00:00:00Z".parse().unwrap(),
    );
    before.injected_pods = 2;
    sp.status = Some(before);
    let reply = serde_json::to_value(&sp).unwrap();
    let run = tokio::spawn(controller::reconcile(Arc::new(sp), ctx));
    let Sent { body, .. } = expect(&mut handle, Call::ApplyStatus, 200, reply).await;
    let ready = &body["status"]["conditions"][0];
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("InvalidSpec")));
    assert!(ready["message"].as_str().unwrap().contains("ftp://files"));
    assert_ne!(ready["lastTransitionTime"], "2025-01-01T00:00:00Z");
    let Sent { body: event, .. } = expect(&mut handle, Call::CreateEvent, 201, json!({})).await;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn unchanged_condition_keeps_its_transition_time_and_publishes_no_event() {
    let (client, mut handle) = mock_client();
    let ctx = context(client);
    let mut sp = profiling(SpanProfilingSpec::default());
    sp.status =
        Some(controller::desired_status(&sp, &[], &defaults(), &SERVING, "2025-01-01T00:00:00Z".parse().unwrap()));
    let reply = serde_json::to_value(&sp).unwrap();
    let run = tokio::spawn(controller::reconcile(Arc::new(sp), ctx));
    let Sent { body, .. } = expect(&mut handle, Call::ApplyStatus, 200, reply).await;
    assert_eq!(body["status"]["injectedPods"], 2);
    assert_eq!(body["status"]["conditions"][0]["lastTransitionTime"], "2025-01-01T00:00:00Z");
    run.await.unwrap().unwrap();
    assert_no_request(&mut handle).await;
}

#[tokio::test]
async fn api_errors_fail_the_reconcile_and_back_off_exponentially() {
    let (client, mut handle) = mock_client();
    let ctx = context(client);
    let sp = Arc::new(profiling(SpanProfilingSpec::default()));
    let run = tokio::spawn(controller::reconcile(sp.clone(), ctx.clone()));
    refuse(&mut handle, Call::ApplyStatus, Failure::Internal).await;
    let err = run.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("etcd timeout"), "{err}");
    let delays: Vec<Action> = (0..3).map(|_| controller::error_policy(sp.clone(), &err, ctx.clone())).collect();
    assert_eq!(delays, [5, 10, 20].map(|s| Action::requeue(Duration::from_secs(s))));
    assert_eq!(controller::backoff(30), Duration::from_secs(300));
    assert!(ctx.metrics.render().contains("spanprof_operator_reconcile_failures_total 3"));
}

#[test]
fn injected_pods_map_to_their_profiling() {
    let p = pod("ride-1", "shared/central", "2025-06-01T10:00:00Z", false);
    let r = controller::profiling_of(&p).unwrap();
    assert_eq!((r.name.as_str(), r.namespace.as_deref()), ("central", Some("shared")));
    assert!(controller::profiling_of(&pod("x", "garbage", "2025-06-01T10:00:00Z", false)).is_none());
}

// --- TLS Secret and caBundle ---

const DAY: i64 = 86_400;

fn store(client: Client) -> SecretStore {
    SecretStore {
        api: Api::namespaced(client, "spanprof"),
        name: "spanprof-operator-tls".into(),
        namespace: "spanprof".into(),
        dns_names: tls::service_dns_names("spanprof-operator", "spanprof"),
        validity: Duration::from_secs(90 * DAY as u64),
    }
}

fn stored(bundle: &CertBundle, rv: &str) -> Value {
    let mut v = serde_json::to_value(bundle.to_secret("spanprof-operator-tls", "spanprof", Some(rv.into()))).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

#[tokio::test]
async fn first_replica_creates_the_secret() {
    let (client, mut handle) = mock_client();
    let now = 1_750_000_000;
    let run = tokio::spawn(async move { store(client).ensure(now).await });
    refuse(&mut handle, Call::GetSecret, Failure::NotFound).await;
    let Sent { body, .. } = expect(&mut handle, Call::CreateSecret, 201, json!({})).await;
    assert_eq!(body["type"], "kubernetes.io/tls");
    assert!(body["metadata"].get("resourceVersion").is_none());
    let secret: Secret = serde_json::from_value(body).unwrap();
    let written = CertBundle::from_secret(&secret).unwrap();
    match run.await.unwrap().unwrap() {
        Ensured::Generated { bundle, .. } => assert_eq!(bundle, written),
        other => panic!("{other:?}"),
    }
    assert_eq!(written.not_after - now, 90 * DAY);
}

#[tokio::test]
async fn a_replica_losing_the_create_race_uses_the_winners_certificate() {
    let (client, mut handle) = mock_client();
    let now = 1_750_000_000;
    let winner = CertBundle::generate(
        &tls::service_dns_names("spanprof-operator", "spanprof"),
        now,
        Duration::from_secs(90 * DAY as u64),
        None,
    )
    .unwrap();
    let run = tokio::spawn(async move { store(client).ensure(now + 1).await });
    refuse(&mut handle, Call::GetSecret, Failure::NotFound).await;
    refuse(&mut handle, Call::CreateSecret, Failure::AlreadyExists).await;
    expect(&mut handle, Call::GetSecret, 200, stored(&winner, "12")).await;
    assert_eq!(run.await.unwrap().unwrap(), Ensured::Existing(winner));
}

#[tokio::test]
async fn rotation_is_a_compare_and_swap_and_the_loser_rereads() {
    let (client, mut handle) = mock_client();
    let dns = tls::service_dns_names("spanprof-operator", "spanprof");
    let issued = 1_750_000_000;
    let old = CertBundle::generate(&dns, issued, Duration::from_secs(90 * DAY as u64), None).unwrap();
    // 61 days in: less than a third of 90 days left.
    let now = issued + 61 * DAY;
    let run = tokio::spawn(async move { store(client).ensure(now).await });
    expect(&mut handle, Call::GetSecret, 200, stored(&old, "41")).await;
    let Sent { body: put, .. } = refuse(&mut handle, Call::ReplaceSecret, Failure::Conflict).await;
    assert_eq!(put["metadata"]["resourceVersion"], "41", "the replace only wins if nobody wrote since the read");
    // Another replica rotated first; we adopt its bundle.
    let theirs =
        CertBundle::generate(&dns, now, Duration::from_secs(90 * DAY as u64), Some(old.ca_cert_pem.clone())).unwrap();
    expect(&mut handle, Call::GetSecret, 200, stored(&theirs, "42")).await;
    let got = run.await.unwrap().unwrap();
    assert_eq!(got, Ensured::Existing(theirs.clone()));
    assert!(got.bundle().ca_bundle().contains(&old.ca_cert_pem), "the old CA stays trusted during the rotation");
}

#[tokio::test]
async fn rotation_writes_a_new_bundle_keeping_the_previous_ca() {
    let (client, mut handle) = mock_client();
    let dns = tls::service_dns_names("spanprof-operator", "spanprof");
    let old = CertBundle::generate(&dns, 1_750_000_000, Duration::from_secs(90 * DAY as u64), None).unwrap();
    let now = 1_750_000_000 + 70 * DAY;
    let run = tokio::spawn(async move { store(client).ensure(now).await });
    expect(&mut handle, Call::GetSecret, 200, stored(&old, "41")).await;
    let Sent { body: put, .. } = expect(&mut handle, Call::ReplaceSecret, 200, json!({})).await;
    let written = CertBundle::from_secret(&serde_json::from_value(put).unwrap()).unwrap();
    assert_eq!(written.previous_ca_pem.as_deref(), Some(old.ca_cert_pem.as_str()));
    assert_eq!(written.not_after, now + 90 * DAY);
    assert!(matches!(run.await.unwrap().unwrap(), Ensured::Generated { .. }));
}

#[test]
fn rotation_is_due_when_a_third_is_left_or_names_change() {
    let dns = tls::service_dns_names("spanprof-operator", "spanprof");
    let b = CertBundle::generate(&dns, 1_000_000, Duration::from_secs(90 * DAY as u64), None).unwrap();
    assert_eq!(b.needs_rotation(&dns, 1_000_000), None);
    assert_eq!(b.needs_rotation(&dns, 1_000_000 + 59 * DAY), None);
    assert!(b.needs_rotation(&dns, 1_000_000 + 61 * DAY).is_some());
    assert!(b.needs_rotation(&tls::service_dns_names("other", "spanprof"), 1_000_000).is_some());
    assert!(b.needs_rotation(&dns, 1_000_000 - DAY).is_some());
    // A Secret edited into garbage is regenerated rather than served.
    let mut broken = b.to_secret("s", "spanprof", None);
    broken.data.as_mut().unwrap().insert("tls.key".into(), k8s_openapi::ByteString(b"nope".to_vec()));
    assert!(CertBundle::from_secret(&broken).is_err());
    assert_eq!(CertBundle::from_secret(&b.to_secret("s", "spanprof", None)).unwrap(), b);
}

#[tokio::test]
async fn ca_bundle_is_server_side_applied_to_our_webhook_only() {
    let (client, mut handle) = mock_client();
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let run = tokio::spawn(async move {
        tls::apply_ca_bundle(&api, "spanprof-operator", "-----BEGIN CERTIFICATE-----\nx\n").await
    });
    expect(&mut handle, Call::GetWebhookConfig, 200, webhook_configuration("inject.spanprof.dev")).await;
    let Sent { query, content_type, body } = expect(&mut handle, Call::ApplyWebhookConfig, 200, json!({})).await;
    assert_eq!(sorted_query(&query), ["fieldManager=spanprof-operator", "force=true"]);
    assert_eq!(content_type, "application/apply-patch+yaml");
    assert_eq!(
        body,
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "spanprof-operator"},
            "webhooks": [{"name": "inject.spanprof.dev", "clientConfig": {"caBundle": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCngK"}}]
        })
    );
    run.await.unwrap().unwrap();
}

fn webhook_configuration(entry: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "spanprof-operator", "resourceVersion": "3"},
        "webhooks": [{
            "name": entry, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": "spanprof-operator", "namespace": "spanprof", "path": "/mutate-pods"}}
        }]
    })
}

#[tokio::test]
async fn a_missing_webhook_configuration_is_reported_as_missing_not_applied() {
    // The real cluster: a server-side apply to a deleted configuration failed with a confusing
    // validation error about fields the operator never sets.
    for ((status, reply), says) in [
        (Failure::NotFound.reply(), "MutatingWebhookConfiguration spanprof-operator: not found"),
        ((200, webhook_configuration("someone-else.example.com")), "has no webhook named inject.spanprof.dev"),
    ] {
        let (client, mut handle) = mock_client();
        let api: Api<MutatingWebhookConfiguration> = Api::all(client);
        let run = tokio::spawn(async move { tls::apply_ca_bundle(&api, "spanprof-operator", "pem").await });
        expect(&mut handle, Call::GetWebhookConfig, status, reply).await;
        let err = run.await.unwrap().unwrap_err().to_string();
        assert!(err.contains(says) && err.contains("helm install"), "{err}");
        assert_no_request(&mut handle).await;
    }
}

// --- Leader election ---

fn elector(client: Client) -> Elector {
    Elector {
        api: Api::namespaced(client, "spanprof"),
        name: "spanprof-operator".into(),
        identity: "op-0".into(),
        timing: Timing::default(),
    }
}

fn stored_lease(holder: &str, renewed: Timestamp, rv: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "spanprof-operator", "namespace": "spanprof", "resourceVersion": rv},
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 4,
            "acquireTime": renewed.to_string(), "renewTime": renewed.to_string()
        }
    })
}

fn micro_time(v: &Value) -> Timestamp {
    v.as_str().unwrap_or_else(|| panic!("not a time: {v}")).parse().unwrap()
}

#[tokio::test]
async fn the_first_replica_creates_the_lease_holding_it() {
    let (client, mut handle) = mock_client();
    let now: Timestamp = "2025-06-01T10:00:00Z".parse().unwrap();
    let run = tokio::spawn(async move { elector(client).round(now).await });
    refuse(&mut handle, Call::GetLease, Failure::NotFound).await;
    let Sent { content_type, body, .. } = expect(&mut handle, Call::CreateLease, 201, json!({})).await;
    assert_eq!(content_type, "application/json");
    assert_eq!(body["metadata"]["name"], "spanprof-operator");
    assert!(body["metadata"].get("resourceVersion").is_none(), "a create: {body}");
    let spec = &body["spec"];
    assert_eq!((spec["holderIdentity"].as_str(), spec["leaseDurationSeconds"].as_i64()), (Some("op-0"), Some(15)));
    assert_eq!((micro_time(&spec["acquireTime"]), micro_time(&spec["renewTime"])), (now, now));
    assert_eq!(spec["leaseTransitions"], 0);
    assert!(run.await.unwrap().unwrap(), "holds it");
}

#[tokio::test]
async fn losing_the_create_race_is_following() {
    let (client, mut handle) = mock_client();
    let run = tokio::spawn(async move { elector(client).round(Timestamp::now()).await });
    refuse(&mut handle, Call::GetLease, Failure::NotFound).await;
    refuse(&mut handle, Call::CreateLease, Failure::AlreadyExists).await;
    assert!(!run.await.unwrap().unwrap());
    assert_no_request(&mut handle).await;
}

#[tokio::test]
async fn a_fresh_lease_of_another_replica_is_not_taken_over() {
    let (client, mut handle) = mock_client();
    let now: Timestamp = "2025-06-01T10:00:10Z".parse().unwrap();
    let run = tokio::spawn(async move { elector(client).round(now).await });
    let renewed = "2025-06-01T10:00:00Z".parse().unwrap();
    expect(&mut handle, Call::GetLease, 200, stored_lease("op-1", renewed, "41")).await;
    assert!(!run.await.unwrap().unwrap());
    assert_no_request(&mut handle).await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_by_a_conditional_replace() {
    let (client, mut handle) = mock_client();
    let now: Timestamp = "2025-06-01T10:01:00Z".parse().unwrap();
    let run = tokio::spawn(async move { elector(client).round(now).await });
    let renewed = "2025-06-01T10:00:00Z".parse().unwrap();
    expect(&mut handle, Call::GetLease, 200, stored_lease("op-1", renewed, "41")).await;
    let Sent { body, .. } = expect(&mut handle, Call::ReplaceLease, 200, json!({})).await;
    assert_eq!(body["metadata"]["resourceVersion"], "41", "only wins if nobody wrote since the read");
    let spec = &body["spec"];
    assert_eq!(spec["holderIdentity"], "op-0");
    assert_eq!(spec["leaseTransitions"], 5);
    assert_eq!((micro_time(&spec["acquireTime"]), micro_time(&spec["renewTime"])), (now, now));
    assert!(run.await.unwrap().unwrap());

    // The same race lost: another replica replaced it first.
    let (client, mut handle) = mock_client();
    let run = tokio::spawn(async move { elector(client).round(now).await });
    expect(&mut handle, Call::GetLease, 200, stored_lease("op-1", renewed, "41")).await;
    refuse(&mut handle, Call::ReplaceLease, Failure::Conflict).await;
    assert!(!run.await.unwrap().unwrap());
}

#[tokio::test]
async fn the_leader_renews_and_releases_on_shutdown() {
    let (client, mut handle) = mock_client();
    let now: Timestamp = "2025-06-01T10:00:05Z".parse().unwrap();
    let run = tokio::spawn(async move { elector(client).round(now).await });
    let acquired = "2025-06-01T10:00:00Z".parse().unwrap();
    expect(&mut handle, Call::GetLease, 200, stored_lease("op-0", acquired, "50")).await;
    let Sent { body, .. } = expect(&mut handle, Call::ReplaceLease, 200, json!({})).await;
    assert_eq!(body["metadata"]["resourceVersion"], "50");
    assert_eq!(micro_time(&body["spec"]["renewTime"]), now);
    assert_eq!(micro_time(&body["spec"]["acquireTime"]), acquired);
    assert_eq!(body["spec"]["leaseTransitions"], 4);
    assert!(run.await.unwrap().unwrap());

    // The election loop: acquire, lead, and on shutdown release so a follower takes over at once.
    let (client, mut handle) = mock_client();
    let (leader_tx, mut leader_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(elector(client).run(leader_tx, async {
        let _ = stop_rx.await;
    }));
    refuse(&mut handle, Call::GetLease, Failure::NotFound).await;
    let Sent { body: created, .. } = expect(&mut handle, Call::CreateLease, 201, json!({})).await;
    leader_rx.wait_for(|l| *l).await.unwrap();
    stop_tx.send(()).unwrap();
    let mut current = created.clone();
    current["metadata"]["resourceVersion"] = json!("51");
    expect(&mut handle, Call::GetLease, 200, current).await;
    let Sent { body: released, .. } = expect(&mut handle, Call::ReplaceLease, 200, json!({})).await;
    assert_eq!(released["metadata"]["resourceVersion"], "51");
    assert!(released["spec"].get("holderIdentity").is_none(), "{released}");
    task.await.unwrap();
    assert!(!*leader_rx.borrow());
}

#[tokio::test]
async fn a_replica_that_does_not_lead_writes_no_status_and_no_events() {
    let (client, mut handle) = mock_client();
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let ctx = context(client);
    let ctx = Arc::new(
        Context::new(
            ctx.client.clone(),
            ctx.pods.clone(),
            ctx.recorder.clone(),
            ctx.metrics.clone(),
            defaults(),
            serving(),
        )
        .with_leadership(Leadership::new(leader_rx)),
    );
    let sp = Arc::new(profiling(SpanProfilingSpec { server_url: Some("ftp://files".into()), ..Default::default() }));
    let action = controller::reconcile(sp.clone(), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_no_request(&mut handle).await;
    assert!(!ctx.metrics.render().contains("spanprof_operator_reconciles_total 1"));
    // Once it leads, the same reconcile applies the status and publishes the transition Event.
    leader_tx.send_replace(true);
    let run = tokio::spawn(controller::reconcile(sp.clone(), ctx));
    expect(&mut handle, Call::ApplyStatus, 200, serde_json::to_value(&*sp).unwrap()).await;
    let Sent { body: event, .. } = expect(&mut handle, Call::CreateEvent, 201, json!({})).await;
    assert_eq!(event["reason"], "InvalidSpec");
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn renewing_the_lease_is_not_announced_as_gaining_leadership_again() {
    // The real-cluster run: the leader re-sent "held" at every renewal, so `gained()` fired every
    // 5 s and every SpanProfiling was reconciled every 5 s without any change.
    let (client, mut handle) = mock_client();
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let leadership = Leadership::new(leader_rx);
    let mut gained = std::pin::pin!(leadership.gained());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let fast = Timing { renew_every: Duration::from_millis(20), ..Timing::default() };
    let task = tokio::spawn(Elector { timing: fast, ..elector(client) }.run(leader_tx, async {
        let _ = stop_rx.await;
    }));
    refuse(&mut handle, Call::GetLease, Failure::NotFound).await;
    let Sent { body: created, .. } = expect(&mut handle, Call::CreateLease, 201, json!({})).await;
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), gained.next()).await.unwrap(), Some(()));
    for rv in 2..6 {
        let mut current = created.clone();
        current["metadata"]["resourceVersion"] = json!(rv.to_string());
        expect(&mut handle, Call::GetLease, 200, current).await;
        expect(&mut handle, Call::ReplaceLease, 200, json!({})).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(100), gained.next()).await.is_err(),
        "four renewals were announced as a new leadership"
    );
    // Stop with the API gone: the loop ends (releasing fails, the Lease would expire on its own).
    stop_tx.send(()).unwrap();
    drop(handle);
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
}

#[test]
fn a_sampler_the_api_server_would_reject_makes_the_spec_invalid() {
    let spec: SpanProfilingSpec = serde_json::from_value(json!({
        "sidecar": {"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "100m"}}}
    }))
    .unwrap();
    let e = controller::validate(&spec, &defaults()).unwrap_err();
    assert!(e.contains("cpu request is above its limit"), "{e}");
    let status = controller::desired_status(&profiling(spec), &[], &defaults(), &SERVING, Timestamp::now());
    let ready = &status.conditions[0];
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"), "never Ready=True for it");
}

#[test]
fn ready_follows_whether_the_webhook_is_served() {
    let sp = profiling(SpanProfilingSpec::default());
    let no = Serving::No {
        reason: "NoReadyEndpoints",
        message: "service spanprof/spanprof-operator has no ready endpoints".into(),
    };
    let status = controller::desired_status(&sp, &[], &defaults(), &no, Timestamp::now());
    let by_type = |t: &str| status.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!((by_type("Ready").status.as_str(), by_type("Ready").reason.as_str()), ("False", "NoReadyEndpoints"));
    assert_eq!(by_type("WebhookServing").status, "False");
    assert!(by_type("Ready").message.contains("no ready endpoints"));
    let status = controller::desired_status(&sp, &[], &defaults(), &SERVING, Timestamp::now());
    let by_type = |t: &str| status.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!(by_type("Ready").status, "True");
    assert_eq!(by_type("WebhookServing").status, "True");
}
