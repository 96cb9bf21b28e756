//! The webhook over real HTTPS with real AdmissionReview v1 JSON: the server certificate is one
//! the operator generated, and the client trusts only that CA, as the API server does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use spanprof_operator::crd::{CapabilityMode, SidecarSpec, SpanProfiling, SpanProfilingSpec};
use spanprof_operator::inject::Defaults;
use spanprof_operator::metrics::Metrics;
use spanprof_operator::pod_security::{self, Level};
use spanprof_operator::tls::{self, CertBundle, CertResolver};
use spanprof_operator::webhook::{self, PendingEvent, WebhookState};
use tokio::sync::{mpsc, oneshot};

const HOST: &str = "spanprof-operator.spanprof.svc";

fn dns() -> Vec<String> {
    tls::service_dns_names("spanprof-operator", "spanprof")
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn profilings(items: Vec<SpanProfiling>) -> Store<SpanProfiling> {
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for sp in items {
        writer.apply_watcher_event(&watcher::Event::InitApply(sp));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

/// The namespace cache: `(name, pod-security.kubernetes.io/enforce value)`.
fn namespaces(items: &[(&str, Option<&str>)]) -> Store<PartialObjectMeta<Namespace>> {
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for (name, level) in items {
        let labels = match level {
            Some(l) => json!({"kubernetes.io/metadata.name": name, "pod-security.kubernetes.io/enforce": l}),
            None => json!({"kubernetes.io/metadata.name": name}),
        };
        let ns: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PartialObjectMetadata", "metadata": {"name": name, "labels": labels}
        }))
        .unwrap();
        writer.apply_watcher_event(&watcher::Event::InitApply(ns));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

struct Server {
    addr: SocketAddr,
    resolver: Arc<CertResolver>,
    ca: String,
    events: mpsc::Receiver<PendingEvent>,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    start_with(SpanProfilingSpec::default(), &[("shop", None)], Level::Privileged).await
}

/// A webhook whose only SpanProfiling is `shop/default` with `spec`, knowing `known` namespaces,
/// with `default_level` for unlabelled ones.
async fn start_with(spec: SpanProfilingSpec, known: &[(&str, Option<&str>)], default_level: Level) -> Server {
    let mut sp = SpanProfiling::new("default", spec);
    sp.metadata.namespace = Some("shop".into());
    let bundle = CertBundle::generate(&dns(), now(), Duration::from_secs(3600), None).unwrap();
    let resolver = Arc::new(CertResolver::default());
    resolver.set(bundle.certified_key().unwrap());
    let (tx, events) = mpsc::channel(16);
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(WebhookState {
        profilings: profilings(vec![sp]),
        profilings_synced: spanprof_operator::cache::Synced::done(),
        namespaces: namespaces(known),
        defaults: Defaults {
            server_url: "http://spanprof-server.spanprof.svc:4040".into(),
            sidecar_image: "ghcr.io/spanprof/spanprof-sidecar:0.1.0".into(),
            operator_namespace: "spanprof".into(),
            pod_security_default: default_level,
        },
        metrics: metrics.clone(),
        events: tx,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = tls::server_config(resolver.clone()).unwrap();
    let limits = spanprof_cli::serve::Limits::default();
    let task = tokio::spawn(spanprof_cli::serve::serve_tls(listener, config, webhook::router(state), limits, async {
        let _ = stopped.await;
    }));
    Server { addr, resolver, ca: bundle.ca_bundle(), events, metrics, stop: Some(stop), task }
}

/// One HTTPS request trusting only `ca_pem`, verifying the server name as the API server does.
async fn request(addr: SocketAddr, ca_pem: &str, method: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri("/mutate-pods?timeout=5s")
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, bytes.to_vec()))
}

async fn review(server: &Server, body: Value) -> Value {
    let (status, bytes) = request(server.addr, &server.ca, "POST", serde_json::to_vec(&body).unwrap()).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    serde_json::from_slice(&bytes).unwrap()
}

/// An AdmissionReview exactly as kube-apiserver 1.33 sends it for a Deployment's pod.
fn admission_review(annotations: Value, extra_spec: Value) -> (Value, Value) {
    let mut pod = json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "generateName": "ride-7d9f8b6c5d-", "namespace": "shop", "creationTimestamp": null,
            "labels": {"app": "ride", "pod-template-hash": "7d9f8b6c5d"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "ride-7d9f8b6c5d", "uid": "0b7c1f7e-2d54-4f27-9a53-5b8e2f1f6a10", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2025-06-01T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:generateName": {}}}}]
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-5xq2r", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
            "containers": [{"name": "ride", "image": "ride:1", "resources": {}, "volumeMounts": [{"name": "kube-api-access-5xq2r", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}], "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "securityContext": {},
            "schedulerName": "default-scheduler", "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    });
    if let Some(extra) = extra_spec.as_object() {
        for (k, v) in extra {
            pod["spec"][k] = v.clone();
        }
    }
    let review = json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "8b1f1a0c-0d1e-4d8e-9a1c-1f2e3d4c5b6a", "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    });
    (review, pod)
}

fn patch_of(response: &Value) -> json_patch::Patch {
    // kube serialises the []byte patch as an array of numbers; Kubernetes itself as base64.
    let bytes: Vec<u8> = match &response["patch"] {
        Value::Array(a) => a.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
        Value::String(s) => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).unwrap(),
        other => panic!("no patch: {other}"),
    };
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn opted_in_pod_is_allowed_with_a_patch_that_adds_the_sampler() {
    let mut server = start().await;
    let (body, mut pod) = admission_review(json!({"spanprof.dev/inject": "true"}), json!({}));
    let got = review(&server, body).await;
    assert_eq!(got["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(got["kind"], "AdmissionReview");
    let response = &got["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    json_patch::patch(&mut pod, &patch_of(response)).unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.init_containers.unwrap()[0].name, "spanprof-sampler");
    assert_eq!(spec.share_process_namespace, Some(true));
    assert_eq!(pod.metadata.annotations.unwrap()["spanprof.dev/injected"], "shop/default");
    assert!(server.events.try_recv().is_err(), "no event for a successful injection");
    assert!(server.metrics.render().contains("spanprof_operator_admission_requests_total{outcome=\"injected\"} 1"));
    server.stop.take().unwrap().send(()).unwrap();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn pod_without_the_annotation_is_allowed_without_a_patch() {
    let mut server = start().await;
    for annotations in [json!({}), json!({"spanprof.dev/inject": "false"})] {
        let (body, _) = admission_review(annotations, json!({}));
        let response = review(&server, body).await["response"].clone();
        assert_eq!(response["allowed"], true);
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert!(response.get("patch").is_none() && response.get("patchType").is_none(), "{response}");
        assert!(response.get("warnings").is_none());
    }
    assert!(server.events.try_recv().is_err());
}

#[tokio::test]
async fn pod_that_cannot_be_injected_is_allowed_unmodified_with_a_warning_and_an_event() {
    let mut server = start().await;
    let (body, _) = admission_review(json!({"spanprof.dev/inject": "true"}), json!({"shareProcessNamespace": false}));
    let response = review(&server, body).await["response"].clone();
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(warning.contains("shareProcessNamespace: false"), "{warning}");
    let event = tokio::time::timeout(Duration::from_secs(1), server.events.recv()).await.unwrap().unwrap();
    assert_eq!(event.reason, "ProcessNamespaceDisabled");
    assert_eq!(event.regarding.kind.as_deref(), Some("ReplicaSet"));
    assert_eq!(event.regarding.name.as_deref(), Some("ride-7d9f8b6c5d"));
    assert_eq!(event.regarding.namespace.as_deref(), Some("shop"));
    assert_eq!(event.note, warning);

    // The same request as a dry run: same answer, but no side effect.
    let (mut body, _) = admission_review(json!({"spanprof.dev/inject": "missing"}), json!({}));
    body["request"]["dryRun"] = json!(true);
    let response = review(&server, body).await["response"].clone();
    assert!(response["warnings"][0].as_str().unwrap().contains("shop/missing not found"));
    assert!(server.events.try_recv().is_err(), "dry runs publish no events");
}

#[tokio::test]
async fn malformed_reviews_get_a_proper_answer_not_a_500() {
    let server = start().await;
    for body in [
        b"not json".to_vec(),
        br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
        b"".to_vec(),
    ] {
        let (status, bytes) = request(server.addr, &server.ca, "POST", body.clone()).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let got: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(got["kind"], "AdmissionReview");
        assert_eq!(got["response"]["uid"], "");
        assert_eq!(got["response"]["allowed"], false);
        assert_eq!(got["response"]["status"]["status"], "Failure");
        assert!(!got["response"]["status"]["message"].as_str().unwrap().is_empty());
    }
    // A request whose object is not a pod keeps its uid and is admitted unmodified.
    let (mut body, _) = admission_review(json!({"spanprof.dev/inject": "true"}), json!({}));
    body["request"]["object"]["spec"] = json!({"containers": "not a list"});
    let response = review(&server, body).await["response"].clone();
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert!(response["warnings"][0].as_str().unwrap().contains("internal error"));
    let (status, _) = request(server.addr, &server.ca, "GET", vec![]).await.unwrap();
    assert_eq!(status, 405);
    assert!(server.metrics.render().contains("outcome=\"malformed\"} 3"));
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let server = start().await;
    let rotated = CertBundle::generate(&dns(), now(), Duration::from_secs(3600), Some(server.ca.clone())).unwrap();
    let only_new_ca = rotated.ca_cert_pem.clone();
    let err = request(server.addr, &only_new_ca, "GET", vec![]).await.unwrap_err();
    assert!(err.contains("certificate") || err.contains("Unknown"), "{err}");
    server.resolver.set(rotated.certified_key().unwrap());
    assert_eq!(request(server.addr, &only_new_ca, "GET", vec![]).await.unwrap().0, 405);
    // The caBundle written during a rotation trusts both, so replicas still on the old
    // certificate keep working.
    assert!(rotated.ca_bundle().contains(&server.ca));
    assert_eq!(request(server.addr, &rotated.ca_bundle(), "GET", vec![]).await.unwrap().0, 405);
}

// --- Pod Security ---

fn sampler_mode(capabilities: CapabilityMode) -> SpanProfilingSpec {
    SpanProfilingSpec { sidecar: SidecarSpec { capabilities, ..Default::default() }, ..Default::default() }
}

fn inject_annotation() -> Value {
    json!({"spanprof.dev/inject": "true"})
}

#[tokio::test]
async fn perfmon_sampler_in_a_baseline_namespace_is_not_injected_and_says_why() {
    let mut server =
        start_with(sampler_mode(CapabilityMode::Perfmon), &[("shop", Some("baseline"))], Level::Privileged).await;
    let (body, _) = admission_review(inject_annotation(), json!({}));
    let response = review(&server, body).await["response"].clone();
    assert_eq!(response["allowed"], true);
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert!(response.get("patch").is_none() && response.get("patchType").is_none(), "{response}");
    let warning = response["warnings"][0].as_str().unwrap();
    for want in [
        "namespace shop enforces Pod Security \"baseline\"",
        "PERFMON, SYS_PTRACE",
        "enforce=privileged",
        "sidecar.capabilities: none",
    ] {
        assert!(warning.contains(want), "missing {want:?} in {warning}");
    }
    let event = tokio::time::timeout(Duration::from_secs(1), server.events.recv()).await.unwrap().unwrap();
    assert_eq!(event.reason, "PodSecurity");
    assert_eq!(event.regarding.kind.as_deref(), Some("ReplicaSet"));
    assert_eq!(event.note, warning);
    assert!(server.metrics.render().contains("spanprof_operator_admission_requests_total{outcome=\"pod_security\"} 1"));
}

#[tokio::test]
async fn perfmon_sampler_in_a_privileged_namespace_is_injected() {
    for known in [[("shop", Some("privileged"))], [("shop", None)]] {
        let mut server = start_with(sampler_mode(CapabilityMode::Perfmon), &known, Level::Privileged).await;
        let (body, mut pod) = admission_review(inject_annotation(), json!({}));
        let response = review(&server, body).await["response"].clone();
        assert_eq!(response["allowed"], true);
        json_patch::patch(&mut pod, &patch_of(&response)).unwrap();
        assert_eq!(pod["spec"]["initContainers"][0]["name"], "spanprof-sampler", "{known:?}");
        assert!(response.get("warnings").is_none(), "{response}");
        assert!(server.events.try_recv().is_err());
    }
}

#[tokio::test]
async fn unprivileged_sampler_in_a_restricted_namespace_is_injected_and_the_pod_stays_restricted() {
    let server =
        start_with(sampler_mode(CapabilityMode::None), &[("shop", Some("restricted"))], Level::Privileged).await;
    let restricted = json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "ride", "image": "ride:1",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "kube-api-access-5xq2r", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
        }]
    });
    let (body, mut pod) = admission_review(inject_annotation(), restricted);
    let before: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
    assert!(
        pod_security::pod_violations(&before.metadata, before.spec.as_ref().unwrap(), Level::Restricted).is_empty()
    );
    let response = review(&server, body).await["response"].clone();
    assert_eq!(response["allowed"], true);
    json_patch::patch(&mut pod, &patch_of(&response)).unwrap();
    let after: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
    let spec = after.spec.as_ref().unwrap();
    let sampler = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(sampler.name, "spanprof-sampler");
    let sc = sampler.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group, sc.run_as_non_root), (Some(1000), Some(1000), Some(true)));
    let violations = pod_security::pod_violations(&after.metadata, spec, Level::Restricted);
    assert!(violations.is_empty(), "{violations:?}");
    // Injected, with a warning that RuntimeDefault blocks perf_event_open without CAP_PERFMON.
    let warnings = response["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("perf_event_open")), "{warnings:?}");
}

#[tokio::test]
async fn an_unknown_namespace_gets_the_default_level() {
    // The cache does not know "shop" (yet): --pod-security-default-level applies.
    let server = start_with(sampler_mode(CapabilityMode::Perfmon), &[], Level::Baseline).await;
    let (body, _) = admission_review(inject_annotation(), json!({}));
    let response = review(&server, body).await["response"].clone();
    assert!(response.get("patch").is_none());
    assert!(response["warnings"][0].as_str().unwrap().contains("enforces Pod Security \"baseline\""));
    // An invalid label value counts as restricted, as the API server treats it.
    let server = start_with(sampler_mode(CapabilityMode::None), &[("shop", Some("strict"))], Level::Privileged).await;
    let (body, _) = admission_review(inject_annotation(), json!({}));
    let response = review(&server, body).await["response"].clone();
    assert!(response["warnings"][0].as_str().unwrap().contains("enforces Pod Security \"restricted\""), "{response}");
}
