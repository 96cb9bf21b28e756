//! The operator's real `run` — caches, controller, leader election, certificates, probes and the
//! webhook's reachability — against an API server double over real HTTP. This is the test that
//! would have caught the operator that never turned Ready on a real cluster.

mod api_double;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use api_double::ApiDouble;
use serde_json::{Value, json};
use spanprof_operator::inject::Defaults;
use spanprof_operator::pod_security::Level;
use spanprof_operator::tls::TlsSource;
use spanprof_operator::{Config, run};

const PROFILINGS: &str = "spanprofilings.spanprof.dev";
const SLICES: &str = "endpointslices.discovery.k8s.io";

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address")
}

/// `GET path` on the operator's plain HTTP port: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: op\r\n\r\n");
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    })
    .await
    .ok()??;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `limit` saying `what`.
async fn eventually<T>(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn reconciles(metrics: SocketAddr) -> u64 {
    let (_, body) = http_get(metrics, "/metrics").await.expect("metrics answer");
    body.lines()
        .find_map(|l| l.strip_prefix("spanprof_operator_reconciles_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reconcile counter in {body}"))
}

fn condition(api: &ApiDouble, type_: &str) -> Option<(String, String)> {
    let sp = api.get(PROFILINGS, "shop", "default")?;
    let c = sp["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
    Some((c["status"].as_str()?.to_owned(), c["reason"].as_str()?.to_owned()))
}

fn endpoint_slice(ready: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "spanprof-operator-x1", "namespace": "spanprof",
                     "labels": {"kubernetes.io/service-name": "spanprof-operator"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": ready}}],
        "ports": [{"name": "webhook", "port": 9443, "protocol": "TCP"}]
    })
}

fn profiling(generation: i64, rate: u32) -> Value {
    json!({
        "apiVersion": "spanprof.dev/v1alpha1", "kind": "SpanProfiling",
        "metadata": {"name": "default", "namespace": "shop", "generation": generation},
        "spec": {"sampleRateHz": rate, "stackCopyBytes": 16384, "uploadInterval": "10s",
                 "sidecar": {"imagePullPolicy": "IfNotPresent", "capabilities": "perfmon", "native": true,
                             "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "500m"}}}}
    })
}

/// A cluster as the chart leaves it: namespaces, the webhook registration, a ready operator
/// endpoint and one SpanProfiling.
async fn cluster() -> ApiDouble {
    let api = ApiDouble::start().await;
    for ns in ["spanprof", "shop"] {
        api.put("namespaces", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.put(
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "spanprof-operator"},
            "webhooks": [{
                "name": "inject.spanprof.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Ignore",
                "clientConfig": {"service": {"name": "spanprof-operator", "namespace": "spanprof", "path": "/mutate-pods", "port": 443}}
            }]
        }),
    );
    api.put(SLICES, endpoint_slice(true));
    api.put(PROFILINGS, profiling(1, 100));
    api
}

fn config(metrics: SocketAddr) -> Config {
    Config {
        webhook_listen: free_port(),
        metrics_listen: metrics,
        tls: TlsSource::Managed {
            secret_name: "spanprof-operator-tls".into(),
            dns_names: vec!["spanprof-operator.spanprof.svc".into()],
            validity: Duration::from_secs(365 * 24 * 3600),
        },
        cert_check_interval: Duration::from_secs(3600),
        webhook_config_name: "spanprof-operator".into(),
        webhook_service: "spanprof-operator".into(),
        defaults: Defaults {
            server_url: "http://spanprof-server.spanprof.svc:4040".into(),
            sidecar_image: "ghcr.io/spanprof/spanprof-sidecar:0.1.0".into(),
            operator_namespace: "spanprof".into(),
            pod_security_default: Level::Privileged,
        },
        pod_name: Some("spanprof-operator-0".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_turns_ready_reconciles_once_per_change_and_ready_follows_the_webhook() {
    let api = cluster().await;
    let metrics = free_port();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let operator = tokio::spawn(run(config(metrics), api.client(), Some(stopped)));

    // Readiness: the probe the chart's Deployment uses, which gates the webhook Service.
    let ready = eventually(Duration::from_secs(15), "/readyz answers 200", async || {
        http_get(metrics, "/readyz").await.filter(|(code, _)| *code == 200)
    })
    .await;
    assert_eq!(ready.1, "ready");

    // The leader reports the SpanProfiling Ready: the webhook is registered with a CA and its
    // Service has a ready endpoint.
    eventually(Duration::from_secs(15), "Ready=True and WebhookServing=True", async || {
        let ok = condition(&api, "Ready") == Some(("True".into(), "Configured".into()))
            && condition(&api, "WebhookServing").is_some_and(|(s, _)| s == "True");
        ok.then_some(())
    })
    .await;
    let lease = api.get("leases.coordination.k8s.io", "spanprof", "spanprof-operator").expect("a Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "spanprof-operator-0");
    let mwc = api.get("mutatingwebhookconfigurations.admissionregistration.k8s.io", "", "spanprof-operator").unwrap();
    assert!(mwc["webhooks"][0]["clientConfig"]["caBundle"].as_str().is_some_and(|b| !b.is_empty()), "caBundle applied");

    // Nothing changes: no reconcile, no write, across more than one lease renewal (5 s). The
    // echo of the operator's own status write does not count as a change either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (settled, writes) = (reconciles(metrics).await, api.requests("PATCH /apis/spanprof.dev"));
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(reconciles(metrics).await, settled, "no reconcile without a change (renewals are not changes)");
    assert_eq!(api.requests("PATCH /apis/spanprof.dev"), writes, "no status write without a change");

    // The webhook's only endpoint stops being ready: Ready turns False with the reason, after
    // one reconcile.
    api.put(SLICES, endpoint_slice(false));
    eventually(Duration::from_secs(10), "Ready=False NoReadyEndpoints", async || {
        (condition(&api, "Ready") == Some(("False".into(), "NoReadyEndpoints".into()))).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reconciles(metrics).await, settled + 1, "one change, one reconcile");
    let events = api.all("events.events.k8s.io");
    assert!(
        events.iter().any(|e| e["reason"] == "NoReadyEndpoints" && e["type"] == "Warning"),
        "the transition is an Event: {events:#?}"
    );

    // A spec change (new generation): one reconcile, observed.
    api.put(SLICES, endpoint_slice(true));
    eventually(Duration::from_secs(10), "Ready=True again", async || {
        (condition(&api, "Ready").is_some_and(|(s, _)| s == "True")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = reconciles(metrics).await;
    assert_eq!(before, settled + 2);
    let mut changed = api.get(PROFILINGS, "shop", "default").unwrap();
    changed["metadata"]["generation"] = json!(2);
    changed["spec"]["sampleRateHz"] = json!(49);
    api.put(PROFILINGS, changed);
    eventually(Duration::from_secs(10), "observedGeneration 2", async || {
        let sp = api.get(PROFILINGS, "shop", "default")?;
        (sp["status"]["observedGeneration"] == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(reconciles(metrics).await, before + 1, "one spec change, one reconcile");

    stop.send(()).expect("operator still running");
    let result = tokio::time::timeout(Duration::from_secs(15), operator).await.expect("stops on shutdown");
    result.expect("task").expect("run returns Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_webhook_registration_ready_is_false_and_says_so() {
    let api = ApiDouble::start().await;
    for ns in ["spanprof", "shop"] {
        api.put("namespaces", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.put(SLICES, endpoint_slice(true));
    api.put(PROFILINGS, profiling(1, 100));
    let metrics = free_port();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let operator = tokio::spawn(run(config(metrics), api.client(), Some(stopped)));
    eventually(Duration::from_secs(15), "Ready=False WebhookConfigurationMissing", async || {
        (condition(&api, "Ready") == Some(("False".into(), "WebhookConfigurationMissing".into()))).then_some(())
    })
    .await;
    // The replica itself is ready: it serves admission requests; what is missing is the
    // registration that sends them.
    let (code, _) = http_get(metrics, "/readyz").await.expect("probe answers");
    assert_eq!(code, 200);
    stop.send(()).expect("operator still running");
    tokio::time::timeout(Duration::from_secs(15), operator).await.expect("stops").expect("task").expect("Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_an_error_naming_the_address() {
    let api = ApiDouble::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap();
    let e = run(config(addr), api.client(), None).await.expect_err("port is taken");
    let text = e.to_string();
    assert!(text.contains(&addr.to_string()) && text.contains("--metrics-listen"), "{text}");
}

#[tokio::test]
async fn webhook_events_land_on_what_the_user_looks_at() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kube::runtime::events::{Recorder, Reporter};
    use spanprof_operator::webhook::{PendingEvent, publish_events};

    let api = ApiDouble::start().await;
    api.put(
        "deployments.apps",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ride", "namespace": "shop", "uid": "d-1"}}),
    );
    api.put(
        "replicasets.apps",
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {
            "name": "ride-7d9f8b6c5d", "namespace": "shop", "uid": "rs-1",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "ride", "uid": "d-1", "controller": true}]
        }}),
    );
    // A bare pod: admitted without a uid, stored by the API server right after admission.
    api.put(
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug", "namespace": "shop", "uid": "pod-1"}}),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let recorder = Recorder::new(api.client(), Reporter { controller: "spanprof-operator".into(), instance: None });
    let publisher = tokio::spawn(publish_events(rx, recorder, api.client()));
    let reference = |api_version: &str, kind: &str, name: &str, uid: Option<&str>| ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        name: Some(name.into()),
        namespace: Some("shop".into()),
        uid: uid.map(Into::into),
        ..Default::default()
    };
    let at = std::time::Instant::now();
    for (regarding, reason) in [
        (reference("apps/v1", "ReplicaSet", "ride-7d9f8b6c5d", Some("rs-1")), "PodSecurity"),
        (reference("v1", "Pod", "debug", None), "InvalidSampler"),
    ] {
        tx.send(PendingEvent { regarding, reason: reason.into(), note: "spanprof: not injected: …".into(), at })
            .await
            .unwrap();
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), publisher).await.expect("publisher ends").unwrap();
    let events = api.all("events.events.k8s.io");
    let on =
        |reason: &str| events.iter().find(|e| e["reason"] == reason).unwrap_or_else(|| panic!("{reason}: {events:#?}"));
    let deployment = &on("PodSecurity")["regarding"];
    assert_eq!(
        (deployment["kind"].as_str(), deployment["name"].as_str(), deployment["uid"].as_str()),
        (Some("Deployment"), Some("ride"), Some("d-1"))
    );
    let pod = &on("InvalidSampler")["regarding"];
    assert_eq!(
        (pod["kind"].as_str(), pod["uid"].as_str()),
        (Some("Pod"), Some("pod-1")),
        "with the uid `kubectl describe pod` selects on"
    );
    assert_eq!(on("InvalidSampler")["type"], "Warning");
}
