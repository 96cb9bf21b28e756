//! Injection over realistic admitted pods: the patch is applied with json-patch, the result
//! parsed as a k8s-openapi Pod, and its shape compared exactly.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use spanprof_operator::crd::{CapabilityMode, SpanProfiling, SpanProfilingSpec};
use spanprof_operator::inject::{self, Decision, Defaults, Skip};
use spanprof_operator::pod_security::{self, Level};

fn defaults() -> Defaults {
    Defaults {
        server_url: "http://spanprof-server.spanprof.svc:4040".into(),
        sidecar_image: "ghcr.io/spanprof/spanprof-sidecar:0.1.0".into(),
        operator_namespace: "spanprof".into(),
        pod_security_default: Level::Privileged,
    }
}

fn profiling(namespace: &str, name: &str, spec: SpanProfilingSpec) -> Arc<SpanProfiling> {
    let mut sp = SpanProfiling::new(name, spec);
    sp.metadata.namespace = Some(namespace.into());
    Arc::new(sp)
}

/// A Deployment's pod as the API server hands it to the webhook: no name yet (generateName), owned
/// by a ReplicaSet, with the service account token volume the ServiceAccount admission added.
fn deployment_pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "ride-7d9f8b6c5d-",
            "namespace": "shop",
            "labels": {"app.kubernetes.io/name": "ride", "pod-template-hash": "7d9f8b6c5d"},
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "ride-7d9f8b6c5d",
                "uid": "6f1c2a8e-1d2b-4c3d-9e8f-0a1b2c3d4e5f", "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
            "containers": [{
                "name": "ride",
                "image": "registry.example.com/ride:1.4.2",
                "ports": [{"containerPort": 5050, "protocol": "TCP"}],
                "resources": {},
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0
        },
        "status": {}
    })
}

fn parse(pod: &Value) -> Pod {
    serde_json::from_value(pod.clone()).expect("fixture is a Pod")
}

/// Decides for `pod`; on injection applies the patch and returns the patched pod (re-serialised
/// through k8s-openapi, so it must be a valid Pod).
fn run(pod: &Value, namespace: &str, profilings: &[Arc<SpanProfiling>]) -> Result<Value, Skip> {
    run_in(pod, namespace, profilings, Level::Privileged).map(|(pod, _)| pod)
}

/// [`run`] in a namespace enforcing `level`; also returns the warnings.
fn run_in(
    pod: &Value,
    namespace: &str,
    profilings: &[Arc<SpanProfiling>],
    level: Level,
) -> Result<(Value, Vec<String>), Skip> {
    match inject::decide(&parse(pod), namespace, profilings, &defaults(), || level) {
        Decision::Inject { patch, warnings, .. } => {
            let mut doc = pod.clone();
            json_patch::patch(&mut doc, &patch).expect("patch applies");
            let typed: Pod = serde_json::from_value(doc.clone()).expect("patched pod parses");
            assert_eq!(
                serde_json::to_value(&typed).expect("serialises"),
                doc,
                "patch produced fields Pod does not know"
            );
            Ok((doc, warnings))
        }
        Decision::Skip(skip) => Err(skip),
    }
}

fn sampler_env(service: &str) -> Value {
    json!([
        {"name": "SPANPROF_SERVER_URL", "value": "http://spanprof-server.spanprof.svc:4040"},
        {"name": "SPANPROF_SAMPLE_RATE_HZ", "value": "100"},
        {"name": "SPANPROF_UPLOAD_INTERVAL", "value": "10s"},
        {"name": "SPANPROF_STACK_COPY_BYTES", "value": "16384"},
        {"name": "SPANPROF_CONTEXT_DIR", "value": "/var/run/spanprof"},
        {"name": "SPANPROF_SERVICE_NAME", "value": service},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    ])
}

/// The sampler of a pod whose one app container is named like its service.
fn sampler(service: &str, native: bool) -> Value {
    let mut env = sampler_env(service);
    let env_list = env.as_array_mut().unwrap();
    env_list.push(json!({"name": "SPANPROF_SERVICE_NAMES", "value": format!("{service}={service}")}));
    env_list.push(json!({"name": "SPANPROF_SIDECAR_LISTEN", "value": "0.0.0.0:4041"}));
    let mut c = json!({
        "name": "spanprof-sampler",
        "image": "ghcr.io/spanprof/spanprof-sidecar:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": {
            "capabilities": {"add": ["PERFMON", "SYS_PTRACE"], "drop": ["ALL"]},
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true
        },
        "volumeMounts": [
            {"name": "spanprof-context", "mountPath": "/var/run/spanprof"},
            {"name": "spanprof-context", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError"
    });
    if native {
        c["restartPolicy"] = json!("Always");
    }
    c["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 4041}, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6});
    c
}

#[test]
fn single_container_deployment_pod_gets_exactly_the_sidecar_volume_and_env() {
    let pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    let got = run(&pod, "shop", &sps).expect("injected");

    let mut want = pod.clone();
    want["metadata"]["annotations"]["spanprof.dev/injected"] = json!("shop/default");
    want["metadata"]["labels"]["spanprof.dev/injected"] = json!("true");
    want["spec"]["shareProcessNamespace"] = json!(true);
    want["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "spanprof-context", "emptyDir": {"medium": "Memory"}}));
    let app = &mut want["spec"]["containers"][0];
    app["env"] = json!([
        {"name": "SPANPROF_CONTEXT_DIR", "value": "/var/run/spanprof"},
        {"name": "SPANPROF_SERVICE_NAME", "value": "ride"},
        {"name": "SPANPROF_PROFILE_URL", "value": "http://spanprof-server.spanprof.svc:4040/profiles/{profile_id}"},
        {"name": "SPANPROF_CONTAINER_NAME", "value": "ride"}
    ]);
    app["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "spanprof-context", "mountPath": "/var/run/spanprof", "subPath": "ride"}));
    want["spec"]["initContainers"] = json!([sampler("ride", true)]);
    assert_eq!(got, want);
}

#[test]
fn pod_without_annotations_labels_or_volumes_gets_the_maps_and_lists_created() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "worker", "namespace": "shop", "annotations": {"spanprof.dev/inject": "default"}},
        "spec": {"containers": [{"name": "worker", "image": "worker:1"}]}
    });
    let mut pod_no_labels = pod.clone();
    pod_no_labels["metadata"].as_object_mut().unwrap().remove("labels");
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    let got = run(&pod_no_labels, "shop", &sps).expect("injected");
    let want = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "worker", "namespace": "shop",
            "annotations": {"spanprof.dev/inject": "default", "spanprof.dev/injected": "shop/default"},
            "labels": {"spanprof.dev/injected": "true"}
        },
        "spec": {
            "shareProcessNamespace": true,
            "volumes": [{"name": "spanprof-context", "emptyDir": {"medium": "Memory"}}],
            "containers": [{
                "name": "worker", "image": "worker:1",
                "env": [
                    {"name": "SPANPROF_CONTEXT_DIR", "value": "/var/run/spanprof"},
                    {"name": "SPANPROF_SERVICE_NAME", "value": "worker"},
                    {"name": "SPANPROF_PROFILE_URL", "value": "http://spanprof-server.spanprof.svc:4040/profiles/{profile_id}"},
                    {"name": "SPANPROF_CONTAINER_NAME", "value": "worker"}
                ],
                "volumeMounts": [{"name": "spanprof-context", "mountPath": "/var/run/spanprof", "subPath": "worker"}]
            }],
            "initContainers": [sampler("worker", true)]
        }
    });
    assert_eq!(got, want);
}

#[test]
fn multi_container_pod_keeps_user_env_mounts_volumes_and_init_containers() {
    let mut pod = deployment_pod(json!({"spanprof.dev/inject": "shop/tuned"}));
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "ride-migrate:1"}]);
    pod["spec"]["volumes"].as_array_mut().unwrap().push(json!({"name": "cache", "emptyDir": {}}));
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "RUST_LOG", "value": "info"},
        {"name": "SPANPROF_SERVICE_NAME", "value": "ride-custom"}
    ]);
    pod["spec"]["containers"].as_array_mut().unwrap().push(json!({
        "name": "envoy", "image": "envoyproxy/envoy:v1.31",
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]
    }));
    let spec = SpanProfilingSpec {
        sample_rate_hz: 49,
        profile_url_base: Some("https://spanprof.example.com/".into()),
        ..Default::default()
    };
    let sps = [profiling("shop", "tuned", spec), profiling("shop", "other", SpanProfilingSpec::default())];
    let got = run(&pod, "shop", &sps).expect("injected");

    let ride = &got["spec"]["containers"][0];
    assert_eq!(
        ride["env"],
        json!([
            {"name": "RUST_LOG", "value": "info"},
            {"name": "SPANPROF_SERVICE_NAME", "value": "ride-custom"},
            {"name": "SPANPROF_CONTEXT_DIR", "value": "/var/run/spanprof"},
            {"name": "SPANPROF_PROFILE_URL", "value": "https://spanprof.example.com/profiles/{profile_id}"},
            {"name": "SPANPROF_CONTAINER_NAME", "value": "ride"}
        ]),
        "the user's SPANPROF_SERVICE_NAME wins"
    );
    let envoy = &got["spec"]["containers"][1];
    assert_eq!(envoy["env"][0], json!({"name": "SPANPROF_CONTEXT_DIR", "value": "/var/run/spanprof"}));
    assert_eq!(
        envoy["env"][3],
        json!({"name": "SPANPROF_CONTAINER_NAME", "value": "envoy"}),
        "each container is told its own name"
    );
    assert_eq!(
        envoy["volumeMounts"],
        json!([
            {"name": "cache", "mountPath": "/cache"},
            {"name": "spanprof-context", "mountPath": "/var/run/spanprof", "subPath": "envoy"}
        ]),
        "each container writes into its own subdirectory of the volume, which tells the sampler whose process it is"
    );
    let sampler_env = &got["spec"]["initContainers"][0]["env"];
    let service_names = sampler_env.as_array().unwrap().iter().find(|e| e["name"] == "SPANPROF_SERVICE_NAMES").unwrap();
    assert_eq!(
        service_names["value"], "ride=ride-custom,envoy=ride",
        "the sampler labels each container as its app reports itself"
    );
    let names: Vec<&str> =
        got["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["spanprof-sampler", "migrate"], "the sampler starts before the pod's init containers");
    assert_eq!(got["spec"]["initContainers"][0]["env"][1], json!({"name": "SPANPROF_SAMPLE_RATE_HZ", "value": "49"}));
    let volumes: Vec<&str> =
        got["spec"]["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(volumes, ["kube-api-access-x7k2p", "cache", "spanprof-context"]);
    assert_eq!(got["metadata"]["annotations"]["spanprof.dev/injected"], "shop/tuned");
}

#[test]
fn explicit_share_process_namespace_false_is_not_injected() {
    let mut pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    pod["spec"]["shareProcessNamespace"] = json!(false);
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    let skip = run(&pod, "shop", &sps).unwrap_err();
    assert_eq!(skip, Skip::ProcessNamespaceDisabled);
    assert!(skip.is_problem());
    assert!(skip.to_string().contains("shareProcessNamespace: false"), "{skip}");
}

#[test]
fn share_process_namespace_already_true_is_left_as_is() {
    let mut pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    pod["spec"]["shareProcessNamespace"] = json!(true);
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    let patch = match inject::decide(&parse(&pod), "shop", &sps, &defaults(), || Level::Privileged) {
        Decision::Inject { patch, .. } => patch,
        other => panic!("{other:?}"),
    };
    let paths: Vec<String> =
        patch.0.iter().map(|op| serde_json::to_value(op).unwrap()["path"].as_str().unwrap().to_owned()).collect();
    assert!(!paths.iter().any(|p| p == "/spec/shareProcessNamespace"), "{paths:?}");
    assert_eq!(paths[0], "/metadata/annotations/spanprof.dev~1injected", "keys with '/' are escaped");
}

#[test]
fn host_pid_pod_is_not_injected() {
    let mut pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    pod["spec"]["hostPID"] = json!(true);
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    assert_eq!(run(&pod, "shop", &sps).unwrap_err(), Skip::HostPid);
}

#[test]
fn already_injected_pod_is_left_alone_so_reinvocation_is_a_no_op() {
    let pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    let injected = run(&pod, "shop", &sps).expect("injected");
    let skip = run(&injected, "shop", &sps).unwrap_err();
    assert_eq!(skip, Skip::AlreadyInjected("shop/default".into()));
    assert!(!skip.is_problem());
}

#[test]
fn a_sampler_container_added_by_hand_is_not_duplicated() {
    let mut pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    pod["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "spanprof-sampler", "image": "x"}));
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    assert_eq!(run(&pod, "shop", &sps).unwrap_err(), Skip::SidecarExists);
}

fn two_container_pod(annotations: Value) -> Value {
    let mut pod = deployment_pod(annotations);
    pod["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "envoy", "image": "envoyproxy/envoy:v1.31"}));
    pod
}

fn configured(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["env"].as_array().is_some_and(|e| e.iter().any(|v| v["name"] == "SPANPROF_CONTEXT_DIR")))
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn container_names_annotation_selects_the_app_containers() {
    let pod =
        two_container_pod(json!({"spanprof.dev/inject": "true", "spanprof.dev/container-names": " envoy , nope"}));
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    let got = run(&pod, "shop", &sps).expect("injected");
    assert_eq!(configured(&got), ["envoy"]);
    assert!(got["spec"]["containers"][0].get("env").is_none(), "unselected containers are untouched");
    assert_eq!(got["spec"]["containers"][0]["volumeMounts"].as_array().unwrap().len(), 1);
}

#[test]
fn spec_containers_select_and_the_annotation_wins_over_them() {
    let spec = SpanProfilingSpec { containers: vec!["ride".into()], ..Default::default() };
    let sps = [profiling("shop", "default", spec)];
    let got = run(&two_container_pod(json!({"spanprof.dev/inject": "true"})), "shop", &sps).expect("injected");
    assert_eq!(configured(&got), ["ride"]);
    let pod = two_container_pod(json!({"spanprof.dev/inject": "true", "spanprof.dev/container-names": "envoy"}));
    assert_eq!(configured(&run(&pod, "shop", &sps).expect("injected")), ["envoy"]);
    let all = [profiling("shop", "default", SpanProfilingSpec::default())];
    assert_eq!(
        configured(&run(&two_container_pod(json!({"spanprof.dev/inject": "true"})), "shop", &all).unwrap()),
        ["ride", "envoy"]
    );
}

/// The value of `name` in the injected sampler's environment.
fn sampler_var(pod: &Value, name: &str) -> Option<String> {
    let spec = &pod["spec"];
    let all = spec["initContainers"].as_array().into_iter().chain(spec["containers"].as_array()).flatten();
    let sampler = all.into_iter().find(|c| c["name"] == "spanprof-sampler").expect("sampler injected");
    let env = sampler["env"].as_array()?;
    env.iter().find(|e| e["name"] == name).map(|e| e["value"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn the_sampler_is_told_how_many_cpus_the_sampled_containers_may_use() {
    let all = [profiling("shop", "default", SpanProfilingSpec::default())];
    let mut pod = two_container_pod(json!({"spanprof.dev/inject": "true"}));
    pod["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "1500m", "memory": "1Gi"}});
    pod["spec"]["containers"][1]["resources"] = json!({"limits": {"cpu": "1"}});
    assert_eq!(sampler_var(&run(&pod, "shop", &all).unwrap(), "SPANPROF_APP_CPUS").as_deref(), Some("2.5"));
    // Only the selected containers count.
    pod["metadata"]["annotations"]["spanprof.dev/container-names"] = json!("ride");
    assert_eq!(sampler_var(&run(&pod, "shop", &all).unwrap(), "SPANPROF_APP_CPUS").as_deref(), Some("1.5"));
    pod["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "0.25"}});
    assert_eq!(sampler_var(&run(&pod, "shop", &all).unwrap(), "SPANPROF_APP_CPUS").as_deref(), Some("0.25"));
    // A selected container without a CPU limit may use every CPU of the node: nothing to tell.
    pod["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    assert_eq!(sampler_var(&run(&pod, "shop", &all).unwrap(), "SPANPROF_APP_CPUS"), None);
    // Nor with a quantity in a form CPU limits do not use.
    pod["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "2e3m"}});
    assert_eq!(sampler_var(&run(&pod, "shop", &all).unwrap(), "SPANPROF_APP_CPUS"), None);
}

#[test]
fn a_selection_naming_no_container_is_not_injected() {
    let pod = two_container_pod(json!({"spanprof.dev/inject": "true", "spanprof.dev/container-names": "web"}));
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    assert_eq!(run(&pod, "shop", &sps).unwrap_err(), Skip::NoContainersSelected { requested: vec!["web".into()] });
}

#[test]
fn annotation_forms_resolve_or_say_why_not() {
    let sps = [
        profiling("shop", "a", SpanProfilingSpec::default()),
        profiling("shop", "b", SpanProfilingSpec::default()),
        profiling("shared", "central", SpanProfilingSpec::default()),
    ];
    let key = |v: Option<&str>, ns: &str, sps: &[Arc<SpanProfiling>]| {
        let pod = match v {
            Some(v) => deployment_pod(json!({"spanprof.dev/inject": v})),
            None => deployment_pod(json!({})),
        };
        match inject::decide(&parse(&pod), ns, sps, &defaults(), || Level::Privileged) {
            Decision::Inject { profiling, .. } => Ok(profiling),
            Decision::Skip(s) => Err(s),
        }
    };
    assert_eq!(key(Some("b"), "shop", &sps), Ok("shop/b".into()));
    assert_eq!(key(Some("shared/central"), "shop", &sps), Ok("shared/central".into()));
    assert_eq!(key(Some("true"), "shared", &sps), Ok("shared/central".into()));
    assert_eq!(
        key(Some("true"), "shop", &sps),
        Err(Skip::AmbiguousProfiling { namespace: "shop".into(), names: vec!["a".into(), "b".into()] })
    );
    assert_eq!(key(Some("true"), "empty", &sps), Err(Skip::NoProfiling { namespace: "empty".into() }));
    assert_eq!(
        key(Some("c"), "shop", &sps),
        Err(Skip::ProfilingNotFound { namespace: "shop".into(), name: "c".into() })
    );
    assert_eq!(key(Some("false"), "shop", &sps), Err(Skip::NotRequested));
    assert_eq!(key(None, "shop", &sps), Err(Skip::NotRequested));
    assert_eq!(key(Some("Yes please"), "shop", &sps), Err(Skip::InvalidAnnotation("Yes please".into())));
    assert_eq!(key(Some("a/b/c"), "shop", &sps), Err(Skip::InvalidAnnotation("a/b/c".into())));
    assert_eq!(key(Some("true"), "spanprof", &sps), Err(Skip::OperatorNamespace));
    for s in
        [Skip::AmbiguousProfiling { namespace: "n".into(), names: vec![] }, Skip::NoProfiling { namespace: "n".into() }]
    {
        assert!(s.is_problem());
    }
    assert!(!Skip::NotRequested.is_problem());
}

#[test]
fn non_native_mode_appends_a_regular_container() {
    let spec = SpanProfilingSpec {
        sidecar: spanprof_operator::crd::SidecarSpec { native: false, ..Default::default() },
        ..Default::default()
    };
    let sps = [profiling("shop", "default", spec)];
    let got = run(&deployment_pod(json!({"spanprof.dev/inject": "true"})), "shop", &sps).expect("injected");
    assert!(got["spec"].get("initContainers").is_none());
    assert_eq!(got["spec"]["containers"][1], sampler("ride", false));
}

#[test]
fn capability_modes_and_security_context_override() {
    let with = |capabilities, security_context| {
        let spec = SpanProfilingSpec {
            sidecar: spanprof_operator::crd::SidecarSpec { capabilities, security_context, ..Default::default() },
            ..Default::default()
        };
        let sps = [profiling("shop", "default", spec)];
        run(&deployment_pod(json!({"spanprof.dev/inject": "true"})), "shop", &sps).expect("injected")["spec"]["initContainers"][0]
            ["securityContext"]
            .clone()
    };
    assert_eq!(
        with(CapabilityMode::Privileged, None),
        json!({"privileged": true, "runAsUser": 0, "runAsNonRoot": false, "readOnlyRootFilesystem": true})
    );
    assert_eq!(
        with(CapabilityMode::None, None),
        json!({
            "capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": false, "privileged": false,
            "readOnlyRootFilesystem": true, "runAsUser": 65532, "runAsNonRoot": true
        }),
        "the pod names no user: the sampler runs as its image's non-root user"
    );
    let own = serde_json::from_value(json!({"runAsUser": 1000})).unwrap();
    assert_eq!(with(CapabilityMode::Perfmon, Some(own)), json!({"runAsUser": 1000}));
}

#[test]
fn sidecar_extra_env_replaces_ours_and_adds_new() {
    let spec = SpanProfilingSpec {
        server_url: Some("http://pyroscope.obs:4040".into()),
        sidecar: spanprof_operator::crd::SidecarSpec {
            env: serde_json::from_value(
                json!([{"name": "SPANPROF_UPLOAD_INTERVAL", "value": "30s"}, {"name": "RUST_LOG", "value": "debug"}]),
            )
            .unwrap(),
            image: Some("my/sampler:dev".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let sps = [profiling("shop", "default", spec)];
    let got = run(&deployment_pod(json!({"spanprof.dev/inject": "true"})), "shop", &sps).expect("injected");
    let c = &got["spec"]["initContainers"][0];
    assert_eq!(c["image"], "my/sampler:dev");
    assert_eq!(c["env"][0], json!({"name": "SPANPROF_SERVER_URL", "value": "http://pyroscope.obs:4040"}));
    assert_eq!(c["env"][2], json!({"name": "SPANPROF_UPLOAD_INTERVAL", "value": "30s"}));
    assert_eq!(c["env"][9], json!({"name": "RUST_LOG", "value": "debug"}));
    assert_eq!(c["env"][10]["name"], "SPANPROF_SERVICE_NAMES");
    assert_eq!(c["env"][11]["name"], "SPANPROF_SIDECAR_LISTEN");
    assert_eq!(c["env"].as_array().unwrap().len(), 12);
}

#[test]
fn service_name_precedence() {
    let sp = |service_name: Option<&str>| {
        SpanProfiling::new("d", SpanProfilingSpec { service_name: service_name.map(Into::into), ..Default::default() })
    };
    let mut pod = deployment_pod(json!({"spanprof.dev/service-name": "from-annotation"}));
    assert_eq!(inject::service_name(&parse(&pod), &sp(Some("from-spec"))), "from-annotation");
    pod["metadata"]["annotations"] = json!({});
    assert_eq!(inject::service_name(&parse(&pod), &sp(Some("from-spec"))), "from-spec");
    assert_eq!(inject::service_name(&parse(&pod), &sp(None)), "ride");
    pod["metadata"]["labels"] = json!({"app": "legacy", "pod-template-hash": "7d9f8b6c5d"});
    assert_eq!(inject::service_name(&parse(&pod), &sp(None)), "legacy");
    pod["metadata"]["labels"] = json!({"pod-template-hash": "7d9f8b6c5d"});
    assert_eq!(inject::service_name(&parse(&pod), &sp(None)), "ride", "Deployment name from the ReplicaSet");
    pod["metadata"]["ownerReferences"][0]["kind"] = json!("StatefulSet");
    pod["metadata"]["ownerReferences"][0]["name"] = json!("ledger");
    assert_eq!(inject::service_name(&parse(&pod), &sp(None)), "ledger");
    pod["metadata"].as_object_mut().unwrap().remove("ownerReferences");
    assert_eq!(inject::service_name(&parse(&pod), &sp(None)), "ride-7d9f8b6c5d", "generateName without the dash");
}

// --- Pod Security ---

fn with_sidecar(sidecar: spanprof_operator::crd::SidecarSpec) -> [Arc<SpanProfiling>; 1] {
    [profiling("shop", "default", SpanProfilingSpec { sidecar, ..Default::default() })]
}

fn mode(capabilities: CapabilityMode) -> [Arc<SpanProfiling>; 1] {
    with_sidecar(spanprof_operator::crd::SidecarSpec { capabilities, ..Default::default() })
}

/// The Deployment pod hardened the way a `restricted` namespace demands of the app itself.
fn restricted_pod() -> Value {
    let mut pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    pod["spec"]["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 3000, "seccompProfile": {"type": "RuntimeDefault"}});
    pod["spec"]["containers"][0]["securityContext"] =
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": true});
    pod
}

/// Every Pod Security violation of a whole (patched) pod.
fn pss(pod: &Value, level: Level) -> Vec<String> {
    let pod = parse(pod);
    pod_security::pod_violations(&pod.metadata, pod.spec.as_ref().unwrap(), level)
        .into_iter()
        .map(|v| v.message)
        .collect()
}

#[test]
fn sampler_modes_against_namespace_levels() {
    use CapabilityMode::*;
    // (mode, namespace level, injected?) for a pod that itself meets restricted.
    let cases = [
        (Perfmon, Level::Privileged, true),
        (Perfmon, Level::Baseline, false),
        (Perfmon, Level::Restricted, false),
        (Privileged, Level::Privileged, true),
        (Privileged, Level::Baseline, false),
        (Privileged, Level::Restricted, false),
        (None, Level::Privileged, true),
        (None, Level::Baseline, true),
        (None, Level::Restricted, true),
    ];
    for (m, level, injected) in cases {
        match run_in(&restricted_pod(), "shop", &mode(m), level) {
            Ok((pod, _)) => {
                assert!(
                    injected,
                    "{m:?} in {level}: injected but Pod Security would reject it: {:?}",
                    pss(&pod, level)
                );
                assert_eq!(pss(&pod, level), Vec::<String>::new(), "{m:?} in {level}: the injected pod must pass");
            }
            Err(skip) => {
                assert!(!injected, "{m:?} in {level}: {skip}");
                assert_eq!(skip.reason(), "PodSecurity");
                assert!(skip.is_problem());
                // What the webhook predicted is what the whole-pod check finds once injected.
                let forced = run(&restricted_pod(), "shop", &mode(m)).unwrap();
                assert!(!pss(&forced, level).is_empty(), "{m:?} in {level}");
            }
        }
    }
}

#[test]
fn perfmon_in_a_baseline_namespace_says_why_and_what_to_do() {
    let skip = run_in(
        &deployment_pod(json!({"spanprof.dev/inject": "true"})),
        "shop",
        &mode(CapabilityMode::Perfmon),
        Level::Baseline,
    )
    .unwrap_err();
    let Skip::PodSecurity { namespace, level, violations, .. } = &skip else { panic!("{skip:?}") };
    assert_eq!((namespace.as_str(), *level), ("shop", Level::Baseline));
    assert_eq!(violations, &["adds capabilities PERFMON, SYS_PTRACE"]);
    let text = skip.to_string();
    for want in [
        "namespace shop enforces Pod Security \"baseline\"",
        "adds capabilities PERFMON, SYS_PTRACE",
        "the API server would reject the pod",
        "pod-security.kubernetes.io/enforce=privileged",
        "sidecar.capabilities: none",
        "kernel.perf_event_paranoid <= 2",
    ] {
        assert!(text.contains(want), "missing {want:?} in: {text}");
    }
    assert!(text.len() < 1024, "fits an Event note: {} bytes", text.len());

    let skip = run_in(
        &deployment_pod(json!({"spanprof.dev/inject": "true"})),
        "shop",
        &mode(CapabilityMode::Privileged),
        Level::Restricted,
    )
    .unwrap_err();
    let Skip::PodSecurity { violations, remedy, .. } = &skip else { panic!("{skip:?}") };
    assert!(violations.iter().any(|v| v.contains("privileged is forbidden")), "{violations:?}");
    assert!(violations.iter().any(|v| v.contains("runAsNonRoot")), "{violations:?}");
    assert!(remedy.contains("Localhost seccomp profile"), "{remedy}");
}

#[test]
fn unprivileged_sampler_in_a_restricted_namespace_needs_a_hardened_pod() {
    // The pod sets no seccomp profile: the sampler inherits none, which restricted forbids.
    let skip = run_in(
        &deployment_pod(json!({"spanprof.dev/inject": "true"})),
        "shop",
        &mode(CapabilityMode::None),
        Level::Restricted,
    )
    .unwrap_err();
    let Skip::PodSecurity { violations, remedy, level, .. } = &skip else { panic!("{skip:?}") };
    assert_eq!(*level, Level::Restricted);
    assert_eq!(violations, &["pod or container must set seccompProfile RuntimeDefault or Localhost"]);
    assert!(remedy.contains("seccompProfile"), "{remedy}");
    // The same pod is fine under baseline.
    assert!(
        run_in(
            &deployment_pod(json!({"spanprof.dev/inject": "true"})),
            "shop",
            &mode(CapabilityMode::None),
            Level::Baseline
        )
        .is_ok()
    );
}

#[test]
fn an_overriding_security_context_is_checked_too() {
    let own: k8s_openapi::api::core::v1::SecurityContext =
        serde_json::from_value(json!({"capabilities": {"add": ["SYS_ADMIN"]}})).unwrap();
    let sps = with_sidecar(spanprof_operator::crd::SidecarSpec { security_context: Some(own), ..Default::default() });
    let skip = run_in(&restricted_pod(), "shop", &sps, Level::Baseline).unwrap_err();
    let Skip::PodSecurity { violations, remedy, .. } = &skip else { panic!("{skip:?}") };
    assert_eq!(violations, &["adds capabilities SYS_ADMIN"]);
    assert!(remedy.contains("sidecar.securityContext"), "{remedy}");
    // A compliant override is injected as given, in a restricted namespace.
    let own = serde_json::from_value(json!({
        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": true,
        "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/spanprof-sampler.json"}
    }))
    .unwrap();
    let sps = with_sidecar(spanprof_operator::crd::SidecarSpec { security_context: Some(own), ..Default::default() });
    let (pod, warnings) = run_in(&restricted_pod(), "shop", &sps, Level::Restricted).expect("injected");
    assert!(pss(&pod, Level::Restricted).is_empty());
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn the_namespace_level_is_only_looked_up_for_pods_that_would_be_injected() {
    let sps = mode(CapabilityMode::Perfmon);
    let pod = deployment_pod(json!({}));
    let got =
        inject::decide(&parse(&pod), "shop", &sps, &defaults(), || panic!("looked up for a pod that did not opt in"));
    assert_eq!(got, Decision::Skip(Skip::NotRequested));
}

fn sampler_security(pod: &Value) -> Value {
    pod["spec"]["initContainers"][0]["securityContext"].clone()
}

#[test]
fn unprivileged_sampler_runs_as_the_apps_user() {
    let sps = mode(CapabilityMode::None);
    // Pod-level user and group.
    let (pod, warnings) = run_in(&restricted_pod(), "shop", &sps, Level::Restricted).unwrap();
    let sc = sampler_security(&pod);
    assert_eq!(
        (sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64(), sc["runAsNonRoot"].as_bool()),
        (Some(1000), Some(3000), Some(true))
    );
    assert!(sc.get("seccompProfile").is_none(), "inherited from the pod: {sc}");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("seccompProfile RuntimeDefault") && warnings[0].contains("perf_event_open"),
        "{warnings:?}"
    );

    // The app container's own user wins over the pod's.
    let mut p = restricted_pod();
    p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(2000);
    let sc = sampler_security(&run_in(&p, "shop", &sps, Level::Restricted).unwrap().0);
    assert_eq!((sc["runAsUser"].as_i64(), sc["runAsGroup"].as_i64()), (Some(2000), Some(3000)));

    // Selected containers that disagree: unknown, so the image's user, with a warning.
    p["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "envoy", "image": "envoy", "securityContext": {"runAsUser": 101}}));
    let (pod, warnings) = run_in(&p, "shop", &sps, Level::Privileged).unwrap();
    assert_eq!(sampler_security(&pod)["runAsUser"], 65532);
    assert!(warnings.iter().any(|w| w.contains("does not set runAsUser")), "{warnings:?}");
    // Selecting one of them settles it.
    p["metadata"]["annotations"]["spanprof.dev/container-names"] = json!("envoy");
    assert_eq!(sampler_security(&run_in(&p, "shop", &sps, Level::Privileged).unwrap().0)["runAsUser"], 101);

    // A root app: the sampler is root too (claiming non-root would stop it from starting).
    let mut p = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    p["spec"]["securityContext"] = json!({"runAsUser": 0});
    let (pod, warnings) = run_in(&p, "shop", &sps, Level::Baseline).unwrap();
    let sc = sampler_security(&pod);
    assert_eq!(sc["runAsUser"], 0);
    assert!(sc.get("runAsNonRoot").is_none(), "{sc}");
    assert!(warnings.iter().any(|w| w.contains("runs as root")), "{warnings:?}");
}

#[test]
fn env_from_sources_get_a_warning_naming_the_variables_that_override_them() {
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    let mut pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    pod["spec"]["containers"][0]["envFrom"] =
        json!([{"configMapRef": {"name": "ride-config"}}, {"secretRef": {"name": "ride-secrets"}}]);
    pod["spec"]["containers"][0]["env"] = json!([{"name": "SPANPROF_SERVICE_NAME", "value": "mine"}]);
    let (_, warnings) = run_in(&pod, "shop", &sps, Level::Privileged).unwrap();
    assert_eq!(
        warnings,
        [
            "spanprof: container ride takes variables from envFrom (ConfigMap ride-config, Secret ride-secrets); the injected \
          SPANPROF_CONTEXT_DIR, SPANPROF_PROFILE_URL, SPANPROF_CONTAINER_NAME override any of the same name there (env wins over envFrom). To use \
          your own values, set them in the container's env"
        ],
        "SPANPROF_SERVICE_NAME is already the user's, in env"
    );
    // A prefix no injected name starts with cannot collide.
    pod["spec"]["containers"][0]["envFrom"] = json!([{"prefix": "APP_", "configMapRef": {"name": "ride-config"}}]);
    assert!(run_in(&pod, "shop", &sps, Level::Privileged).unwrap().1.is_empty());
    pod["spec"]["containers"][0]["envFrom"] = json!([{"prefix": "SPANPROF_", "configMapRef": {"name": "ride-config"}}]);
    assert_eq!(run_in(&pod, "shop", &sps, Level::Privileged).unwrap().1.len(), 1);
    // Without envFrom, nothing to say.
    assert!(
        run_in(&deployment_pod(json!({"spanprof.dev/inject": "true"})), "shop", &sps, Level::Privileged)
            .unwrap()
            .1
            .is_empty()
    );
}

// --- Never an invalid pod ---

fn sidecar_json(sidecar: Value) -> [Arc<SpanProfiling>; 1] {
    with_sidecar(serde_json::from_value(sidecar).expect("a SidecarSpec"))
}

#[test]
fn a_sampler_the_api_server_would_reject_leaves_the_pod_unmodified_and_says_why() {
    let pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    for (sidecar, needle) in [
        (json!({"image": " "}), "image \" \" has leading or trailing whitespace"),
        (json!({"env": [{"name": "BAD=NAME", "value": "x"}]}), "env name \"BAD=NAME\""),
        (
            json!({"resources": {"requests": {"cpu": "2", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "64Mi"}}}),
            "the cpu request is above its limit",
        ),
        (json!({"resources": {"limits": {"memory": "lots"}}}), "resources.limits.memory \"lots\" is not a quantity"),
    ] {
        let skip = run(&pod, "shop", &sidecar_json(sidecar.clone())).expect_err("must not be injected");
        assert!(matches!(skip, Skip::InvalidSampler { .. }), "{sidecar}: {skip:?}");
        assert!(skip.is_problem(), "a warning and an Event tell the user");
        assert_eq!(skip.reason(), "InvalidSampler");
        let text = skip.to_string();
        assert!(text.contains(needle) && text.contains("shop/default"), "{sidecar}: {text}");
    }
    // Equal requests and limits in different notations are fine.
    let fine = json!({"resources": {"requests": {"cpu": "0.5"}, "limits": {"cpu": "500m"}}});
    run(&pod, "shop", &sidecar_json(fine)).expect("valid resources are injected");
}

#[test]
fn the_sampler_gets_a_metrics_port_no_container_of_the_pod_declares() {
    let listen = |pod: &Value, sps: &[Arc<SpanProfiling>]| -> Value {
        let got = run(pod, "shop", sps).expect("injected");
        let env = got["spec"]["initContainers"][0]["env"].as_array().unwrap().clone();
        env.into_iter().find(|e| e["name"] == "SPANPROF_SIDECAR_LISTEN").expect("listen address set")["value"].clone()
    };
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    let mut pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    assert_eq!(listen(&pod, &sps), "0.0.0.0:4041");
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 4041}, {"containerPort": 8080, "hostPort": 4042}]);
    assert_eq!(listen(&pod, &sps), "0.0.0.0:4043", "the app's port and a host port are both avoided");
    let probe =
        |pod: &Value| run(pod, "shop", &sps).expect("injected")["spec"]["initContainers"][0]["livenessProbe"].clone();
    assert_eq!(probe(&pod)["httpGet"], json!({"path": "/healthz", "port": 4043}), "the probe follows the port");
    pod["spec"]["hostNetwork"] = json!(true);
    assert_eq!(probe(&pod), Value::Null, "with hostNetwork another pod may hold the port: no probe");
    pod["spec"].as_object_mut().unwrap().remove("hostNetwork");
    let own = sidecar_json(json!({"env": [{"name": "SPANPROF_SIDECAR_LISTEN", "value": "127.0.0.1:9999"}]}));
    assert_eq!(listen(&pod, &own), "127.0.0.1:9999", "the SpanProfiling's own setting wins");
}

#[test]
fn the_sampler_never_gets_the_pods_api_token() {
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    let got = run(&deployment_pod(json!({"spanprof.dev/inject": "true"})), "shop", &sps).expect("injected");
    let mounts = got["spec"]["initContainers"][0]["volumeMounts"].as_array().unwrap().clone();
    let at_token_dir: Vec<&Value> =
        mounts.iter().filter(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount").collect();
    // The ServiceAccount admission plugin, re-run after the webhook, skips containers that
    // already mount something there.
    assert_eq!(
        at_token_dir,
        [
            &json!({"name": "spanprof-context", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true})
        ]
    );
}

#[test]
fn a_cronjobs_pods_keep_one_service_name_across_runs() {
    let sp = SpanProfiling::new("d", SpanProfilingSpec::default());
    let mut pod = deployment_pod(json!({}));
    pod["metadata"]["labels"] = json!({"job-name": "nightly-report-29420160"});
    pod["metadata"]["ownerReferences"][0]["kind"] = json!("Job");
    pod["metadata"]["ownerReferences"][0]["name"] = json!("nightly-report-29420160");
    assert_eq!(inject::service_name(&parse(&pod), &sp), "nightly-report");
    pod["metadata"]["ownerReferences"][0]["name"] = json!("backup-2");
    assert_eq!(inject::service_name(&parse(&pod), &sp), "backup-2", "a Job of its own keeps its name");
}

#[test]
fn a_service_name_the_webhook_cannot_read_gets_a_warning() {
    let mut pod = deployment_pod(json!({"spanprof.dev/inject": "true"}));
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "SPANPROF_SERVICE_NAME", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "service"}}}]);
    let sps = [profiling("shop", "default", SpanProfilingSpec::default())];
    let (got, warnings) = run_in(&pod, "shop", &sps, Level::Privileged).expect("injected");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("container ride takes SPANPROF_SERVICE_NAME from valueFrom") && w.contains("\"ride\"")),
        "{warnings:?}"
    );
    let env = got["spec"]["initContainers"][0]["env"].as_array().unwrap().clone();
    assert!(env.contains(&json!({"name": "SPANPROF_SERVICE_NAMES", "value": "ride=ride"})), "{env:?}");
}
