//! The Helm chart `charts/spanprof`, rendered by the real helm (from `tests/k8s-tools`, see
//! `spanprof_chart_tests::helm`): lint, typed parsing of every manifest, agreement with the
//! operator's flags, names and RBAC rules, restricted Pod Security, and the values schema.

use std::collections::BTreeSet;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, PodSpec, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use spanprof_chart_tests::{Manifest, chart_dir, flag_default, pss, repo_root, run_helm, strict, template};
use spanprof_operator::crd::SpanProfiling;
use spanprof_operator::{names, rbac};

const NS: &str = "spanprof";

fn values_file(name: &str) -> String {
    repo_root().join("charts/tests/values").join(name).to_string_lossy().into_owned()
}

/// The value sets every structural test runs with: (label, helm args).
fn value_sets() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("default values", vec![]),
        ("non-default.yaml", vec!["-f".into(), values_file("non-default.yaml")]),
        ("persistent.yaml", vec!["-f".into(), values_file("persistent.yaml")]),
    ]
}

fn render(namespace: &str, args: &[String]) -> Vec<(Value, Manifest)> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let docs = template("spanprof", namespace, &args).unwrap_or_else(|e| panic!("{e}"));
    docs.into_iter()
        .map(|v| {
            let m = Manifest::parse(&v).unwrap_or_else(|e| panic!("{e}"));
            (v, m)
        })
        .collect()
}

fn render_default() -> Vec<(Value, Manifest)> {
    render(NS, &[])
}

fn render_file(name: &str) -> Vec<(Value, Manifest)> {
    render("observability", &["-f".into(), values_file(name)])
}

fn deployment(ms: &[(Value, Manifest)], name: &str) -> Deployment {
    ms.iter()
        .find_map(|(_, m)| match m {
            Manifest::Deployment(d) if d.metadata.name.as_deref() == Some(name) => Some(d.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

fn statefulset(ms: &[(Value, Manifest)], name: &str) -> StatefulSet {
    ms.iter()
        .find_map(|(_, m)| match m {
            Manifest::StatefulSet(s) if s.metadata.name.as_deref() == Some(name) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no StatefulSet {name}"))
}

fn service(ms: &[(Value, Manifest)], name: &str) -> Service {
    ms.iter()
        .find_map(|(_, m)| match m {
            Manifest::Service(s) if s.metadata.name.as_deref() == Some(name) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Service {name}"))
}

fn webhook_config(ms: &[(Value, Manifest)]) -> MutatingWebhookConfiguration {
    let all: Vec<_> = ms
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::MutatingWebhookConfiguration(w) => Some(w.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(all.len(), 1, "exactly one MutatingWebhookConfiguration");
    all[0].clone()
}

fn pod_spec(d: &Deployment) -> PodSpec {
    d.spec.template.spec.clone().expect("pod spec")
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
}

/// The value of `--<flag>=` in a container's args.
fn arg(c: &Container, flag: &str) -> Option<String> {
    let prefix = format!("--{flag}=");
    c.args.iter().flatten().find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
}

fn port_of(listen: &str) -> i32 {
    listen.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("no port in {listen:?}"))
}

fn container_port(c: &Container, name: &str) -> i32 {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
        .unwrap_or_else(|| panic!("no port {name}"))
}

fn kinds(ms: &[(Value, Manifest)]) -> BTreeSet<String> {
    ms.iter().map(|(v, _)| Manifest::kind_name(v).0).collect()
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let list = |dir: std::path::PathBuf| -> Vec<(String, String)> {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
            .collect();
        files.sort();
        files
    };
    let generated = list(repo_root().join("crds"));
    let chart = list(chart_dir().join("crds"));
    assert!(!generated.is_empty());
    let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&chart), names(&generated), "charts/spanprof/crds/ must hold exactly the files of crds/");
    for ((name, a), (_, b)) in generated.iter().zip(&chart) {
        assert!(
            a == b,
            "charts/spanprof/crds/{name} drifted from crds/{name}; run: cp crds/*.yaml charts/spanprof/crds/"
        );
    }
}

#[test]
fn helm_lint_passes_with_every_value_set() {
    for (label, args) in value_sets() {
        let chart = chart_dir().to_string_lossy().into_owned();
        let mut all = vec!["lint", "--strict", chart.as_str(), "--namespace", NS];
        all.extend(args.iter().map(String::as_str));
        let out = run_helm(&all).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(out.contains("0 chart(s) failed"), "{label}: {out}");
    }
}

#[test]
fn every_rendered_manifest_parses_into_its_type() {
    for (label, args) in value_sets() {
        let ms = render(NS, &args);
        let k = kinds(&ms);
        for want in [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
            "MutatingWebhookConfiguration",
            "StatefulSet",
        ] {
            assert!(k.contains(want), "{label}: no {want} rendered: {k:?}");
        }
        for (value, m) in &ms {
            let (kind, name) = Manifest::kind_name(value);
            if let Manifest::SpanProfiling(v) = m {
                strict::<SpanProfiling>(v).unwrap_or_else(|e| panic!("{label}: {e}"));
            }
            // Namespaced objects of the release live in the release namespace.
            let cluster_scoped =
                ["ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"].contains(&kind.as_str());
            let ns = value["metadata"]["namespace"].as_str();
            if cluster_scoped {
                assert_eq!(ns, None, "{label}: {kind} {name} is cluster-scoped");
            } else if kind != "SpanProfiling" {
                assert_eq!(ns, Some(NS), "{label}: {kind} {name}");
            }
        }
    }
    assert!(kinds(&render_default()).contains("PodDisruptionBudget"));
    let k = kinds(&render_file("non-default.yaml"));
    assert!(k.contains("ServiceMonitor") && k.contains("SpanProfiling"), "{k:?}");
    assert!(!kinds(&render_file("persistent.yaml")).contains("PodDisruptionBudget"));
}

#[test]
fn unknown_fields_fail_the_typed_round_trip() {
    let good =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 1}]}});
    strict::<Service>(&good).expect("a valid Service");
    let typo =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"prots": [{"port": 1}]}});
    let err = strict::<Service>(&typo).expect_err("misspelled field").to_string();
    assert!(err.contains(".spec.prots"), "{err}");
    let misplaced = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "ports": []}});
    assert!(strict::<Service>(&misplaced).is_err());
}

#[test]
fn webhook_matches_the_operators_flags_and_names() {
    let ms = render_default();
    let cfg = webhook_config(&ms);
    // The name the operator patches caBundle on, and the name its RBAC rule allows.
    assert_eq!(
        cfg.metadata.name.as_deref(),
        Some(flag_default("operator", "SPANPROF_WEBHOOK_CONFIG_NAME").unwrap().as_str())
    );
    assert_eq!(cfg.metadata.name.as_deref(), Some(rbac::DEFAULT_WEBHOOK_CONFIG));
    let hooks = cfg.webhooks.clone().unwrap_or_default();
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert_eq!(hook.name, names::WEBHOOK_NAME);
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.side_effects, "None");
    assert!(hook.timeout_seconds.is_some_and(|t| (1..=5).contains(&t)), "{:?}", hook.timeout_seconds);
    assert_eq!(hook.admission_review_versions, ["v1"]);
    assert!(hook.client_config.ca_bundle.is_none(), "the operator fills in caBundle");
    assert!(hook.client_config.url.is_none());
    let svc = hook.client_config.service.clone().expect("service reference");
    assert_eq!(svc.path.as_deref(), Some(names::WEBHOOK_PATH));
    assert_eq!(svc.namespace, NS);
    assert_eq!(svc.name, flag_default("operator", "SPANPROF_WEBHOOK_SERVICE").unwrap());
    let default_port = port_of(&flag_default("operator", "SPANPROF_WEBHOOK_LISTEN").unwrap());
    assert_eq!(svc.port, Some(default_port), "webhook port == the operator's --webhook-listen default");

    // Only pod creations, only pods that carry the annotation.
    let rules = hook.rules.clone().unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].resources.as_deref(), Some(&["pods".to_owned()][..]));
    assert_eq!(rules[0].operations.as_deref(), Some(&["CREATE".to_owned()][..]));
    assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
    let conditions = hook.match_conditions.clone().unwrap_or_default();
    assert_eq!(conditions.len(), 1);
    assert!(
        conditions[0].expression.contains(&format!("'{}'", names::ANNOTATION_INJECT)),
        "{}",
        conditions[0].expression
    );
    assert!(conditions[0].expression.contains("has(object.metadata.annotations)"), "guards pods without annotations");

    // Never the release namespace nor kube-system.
    let selector = hook.namespace_selector.clone().expect("namespaceSelector");
    let exprs = selector.match_expressions.unwrap_or_default();
    let not_in = exprs
        .iter()
        .find(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
        .expect("NotIn on kubernetes.io/metadata.name");
    let excluded = not_in.values.clone().unwrap_or_default();
    assert!(excluded.contains(&NS.to_owned()) && excluded.contains(&"kube-system".to_owned()), "{excluded:?}");

    // The Service routes the webhook port to the operator's --webhook-listen port.
    let op = deployment(&ms, "spanprof-operator");
    let spec = pod_spec(&op);
    let c = container(&spec, "operator");
    let listen = arg(c, "webhook-listen").expect("--webhook-listen");
    assert_eq!(port_of(&listen), default_port);
    assert_eq!(container_port(c, "webhook"), default_port);
    let s = service(&ms, &svc.name);
    let p = s
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.port == default_port)
        .expect("Service port = webhook port");
    assert_eq!(p.target_port, Some(IntOrString::String("webhook".into())));
    // The operator is told the names the chart uses.
    assert_eq!(arg(c, "namespace").as_deref(), Some(NS));
    assert_eq!(arg(c, "webhook-service"), Some(svc.name.clone()));
    assert_eq!(arg(c, "webhook-config-name").as_deref(), cfg.metadata.name.as_deref());
    assert_eq!(arg(c, "default-server-url"), Some(flag_default("operator", "SPANPROF_DEFAULT_SERVER_URL").unwrap()));
    let metrics = port_of(&flag_default("operator", "SPANPROF_METRICS_LISTEN").unwrap());
    assert_eq!(container_port(c, "metrics"), metrics);
    assert_eq!(
        arg(c, "pod-security-default-level"),
        Some(flag_default("operator", "SPANPROF_POD_SECURITY_DEFAULT_LEVEL").unwrap())
    );
}

#[test]
fn webhook_and_operator_follow_non_default_values() {
    let ms = render_file("non-default.yaml");
    let cfg = webhook_config(&ms);
    let hook = &cfg.webhooks.clone().unwrap()[0];
    assert_eq!(hook.timeout_seconds, Some(3));
    let svc = hook.client_config.service.clone().unwrap();
    assert_eq!(svc.namespace, "observability");
    assert_eq!(svc.port, Some(10443));
    let excluded = hook.namespace_selector.clone().unwrap().match_expressions.unwrap()[0].values.clone().unwrap();
    assert_eq!(
        excluded,
        ["observability", "kube-system", "monitoring"],
        "release namespace, kube-system, then the extra ones once"
    );
    let op = deployment(&ms, "spanprof-operator");
    assert_eq!(op.spec.replicas, Some(3));
    let spec = pod_spec(&op);
    let c = container(&spec, "operator");
    assert_eq!(arg(c, "webhook-listen").as_deref(), Some("0.0.0.0:10443"));
    assert_eq!(arg(c, "metrics-listen").as_deref(), Some("0.0.0.0:9090"));
    assert_eq!(container_port(c, "webhook"), 10443);
    assert_eq!(arg(c, "namespace").as_deref(), Some("observability"));
    assert_eq!(arg(c, "default-server-url").as_deref(), Some("http://spanprof-server.observability.svc:4040"));
    assert!(c.args.iter().flatten().any(|a| a == "--log-json"));
    assert_eq!(arg(c, "pod-security-default-level").as_deref(), Some("baseline"));
    let s = service(&ms, "spanprof-operator");
    assert!(s.spec.unwrap().ports.unwrap().iter().any(|p| p.port == 10443));
    let pdb = ms.iter().find_map(|(_, m)| match m {
        Manifest::PodDisruptionBudget(p) if p.metadata.name.as_deref() == Some("spanprof-operator") => Some(p.clone()),
        _ => None,
    });
    assert_eq!(pdb.and_then(|p| p.spec).and_then(|s| s.max_unavailable), Some(IntOrString::Int(2)));
}

#[test]
fn operator_deployment_defaults_are_highly_available() {
    let ms = render_default();
    let op = deployment(&ms, "spanprof-operator");
    assert_eq!(op.spec.replicas, Some(2), "2 replicas by default");
    let spec = pod_spec(&op);
    assert_eq!(spec.service_account_name.as_deref(), Some("spanprof-operator"));
    let c = container(&spec, "operator");
    assert_eq!(
        c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.as_deref()),
        Some("/readyz")
    );
    assert_eq!(
        c.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.as_deref()),
        Some("/healthz")
    );
    let env = c.env.clone().unwrap_or_default();
    let pod_name = env.iter().find(|e| e.name == "POD_NAME").expect("POD_NAME");
    assert_eq!(
        pod_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str()),
        Some("metadata.name")
    );
    let pdb = ms
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::PodDisruptionBudget(p) if p.metadata.name.as_deref() == Some("spanprof-operator") => {
                Some(p.clone())
            }
            _ => None,
        })
        .expect("PodDisruptionBudget");
    let selector = pdb.spec.and_then(|s| s.selector).and_then(|s| s.match_labels).unwrap();
    let labels = op.spec.template.metadata.unwrap().labels.unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the PDB selects the operator's pods");
}

#[test]
fn rbac_is_the_operators_generated_rules() {
    for (label, args) in value_sets() {
        let ms = render(NS, &args);
        let cluster_roles: Vec<ClusterRole> = ms
            .iter()
            .filter_map(|(_, m)| match m {
                Manifest::ClusterRole(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        let roles: Vec<Role> = ms
            .iter()
            .filter_map(|(_, m)| match m {
                Manifest::Role(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(cluster_roles.len(), 1, "{label}");
        assert_eq!(roles.len(), 1, "{label}");
        assert_eq!(
            cluster_roles[0].rules,
            rbac::cluster_role().rules,
            "{label}: ClusterRole rules != operator/src/rbac.rs CLUSTER_RULES"
        );
        assert_eq!(roles[0].rules, rbac::role().rules, "{label}: Role rules != operator/src/rbac.rs NAMESPACE_RULES");
        assert_eq!(cluster_roles[0].metadata.name.as_deref(), Some(rbac::ROLE_NAME));
        assert_eq!(roles[0].metadata.name.as_deref(), Some(rbac::ROLE_NAME));
        // Bound to the operator's ServiceAccount.
        for (_, m) in &ms {
            let (role_ref, subjects) = match m {
                Manifest::ClusterRoleBinding(b) => (&b.role_ref, &b.subjects),
                Manifest::RoleBinding(b) => (&b.role_ref, &b.subjects),
                _ => continue,
            };
            assert_eq!(role_ref.name, rbac::ROLE_NAME, "{label}");
            let subjects = subjects.clone().unwrap_or_default();
            assert_eq!(subjects.len(), 1);
            assert_eq!((subjects[0].kind.as_str(), subjects[0].name.as_str()), ("ServiceAccount", "spanprof-operator"));
            assert_eq!(subjects[0].namespace.as_deref(), Some(NS));
        }
    }
}

#[test]
fn every_workload_meets_the_restricted_pod_security_standard() {
    for (label, args) in value_sets() {
        let ms = render(NS, &args);
        let mut templates = 0;
        for (value, m) in &ms {
            let Some(t) = m.pod_template() else { continue };
            templates += 1;
            let (kind, name) = Manifest::kind_name(value);
            let spec = t.spec.as_ref().unwrap_or_else(|| panic!("{kind} {name} has no pod spec"));
            let v = pss::violations(spec);
            assert!(v.is_empty(), "{label}: {kind} {name} violates restricted PSS:\n  {}", v.join("\n  "));
            let pod_sc = spec.security_context.clone().unwrap_or_default();
            assert_eq!(pod_sc.seccomp_profile.map(|p| p.type_).as_deref(), Some("RuntimeDefault"), "{kind} {name}");
            assert_eq!(pod_sc.run_as_non_root, Some(true), "{kind} {name}");
            for c in spec.containers.iter() {
                let r = c.resources.clone().unwrap_or_default();
                assert!(
                    r.requests.is_some_and(|m| m.contains_key("memory")),
                    "{label}: {kind} {name}/{}: memory request",
                    c.name
                );
                assert!(
                    r.limits.is_some_and(|m| m.contains_key("memory")),
                    "{label}: {kind} {name}/{}: memory limit",
                    c.name
                );
            }
        }
        assert_eq!(templates, 2, "{label}: the operator Deployment and the server StatefulSet");
    }
    // The checks can fail.
    let bad: PodSpec = serde_json::from_value(json!({
        "hostPID": true,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}}]
    }))
    .unwrap();
    let v = pss::violations(&bad).join("\n");
    for want in [
        "host namespaces",
        "hostPath",
        "privileged",
        "SYS_ADMIN",
        "allowPrivilegeEscalation",
        "runAsNonRoot",
        "seccompProfile",
        "drop ALL",
        "readOnlyRootFilesystem",
    ] {
        assert!(v.contains(want), "missing {want:?} in:\n{v}");
    }
}

#[test]
fn server_statefulset_service_probes_and_storage() {
    let ms = render_default();
    let sts = statefulset(&ms, "spanprof-server");
    let spec = sts.spec.clone();
    assert_eq!(spec.replicas, Some(1), "one writer of the embedded store");
    let pod = spec.template.spec.clone().unwrap();
    let c = container(&pod, "server");
    let default_port = port_of(&flag_default("server", "SPANPROF_LISTEN").unwrap());
    assert_eq!(default_port, 4040);
    assert_eq!(arg(c, "listen").map(|l| port_of(&l)), Some(default_port));
    assert_eq!(container_port(c, "http"), default_port);
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| (h.path.clone().unwrap_or_default(), h.port.clone()))
    };
    assert_eq!(probe_path(&c.liveness_probe), Some(("/healthz".into(), IntOrString::String("http".into()))));
    assert_eq!(probe_path(&c.readiness_probe), Some(("/readyz".into(), IntOrString::String("http".into()))));
    let r = c.resources.clone().unwrap();
    for key in ["cpu", "memory"] {
        assert!(r.requests.as_ref().is_some_and(|m| m.contains_key(key)), "request {key}");
        assert!(r.limits.as_ref().is_some_and(|m| m.contains_key(key)), "limit {key}");
    }
    // The data dir is on the PVC.
    let data_dir = arg(c, "data-dir").expect("--data-dir");
    let mount = c.volume_mounts.iter().flatten().find(|m| m.mount_path == data_dir).expect("a volume at --data-dir");
    let claims = spec.volume_claim_templates.clone().unwrap_or_default();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].metadata.name.as_deref(), Some(mount.name.as_str()));
    let req = claims[0].spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.clone()).unwrap();
    assert_eq!(req.get("storage").map(|q| q.0.as_str()), Some("10Gi"));
    assert!(!pod.volumes.iter().flatten().any(|v| v.name == mount.name), "data comes from the claim, not a pod volume");
    // Service spanprof-server on 4040, selecting the StatefulSet's pods.
    let svc = service(&ms, "spanprof-server").spec.unwrap();
    let ports = svc.ports.clone().unwrap();
    assert!(ports.iter().any(|p| p.port == 4040 && p.target_port == Some(IntOrString::String("http".into()))));
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    assert!(svc.selector.unwrap().iter().all(|(k, v)| labels.get(k) == Some(v)));
    let headless = service(&ms, &spec.service_name.clone().expect("serviceName")).spec.unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));

    // No object store by default; the pod's name names its blocks when there is one.
    assert_eq!(arg(c, "object-store"), None);
    assert_eq!(arg(c, "peers"), None);
    assert!(!ms.iter().any(
        |(_, m)| matches!(m, Manifest::PodDisruptionBudget(p) if p.metadata.name.as_deref() == Some("spanprof-server"))
    ));
    assert!(c.env_from.is_none());
    assert!(c.env.iter().flatten().any(|e| e.name == "POD_NAME"
        && e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).is_some_and(|f| f.field_path == "metadata.name")));
    // With one: its URL and block settings as flags, its credentials from the Secret as env.
    let sts = statefulset(&render_file("non-default.yaml"), "spanprof-server").spec;
    let pod = sts.template.spec.unwrap();
    let c = container(&pod, "server");
    assert_eq!(arg(c, "object-store").as_deref(), Some("s3://profiles/prod/spanprof"));
    assert_eq!(arg(c, "block-interval").as_deref(), Some("2m"));
    assert_eq!(arg(c, "block-cache-mb").as_deref(), Some("64"));
    let from = c.env_from.clone().unwrap_or_default();
    assert_eq!(from.len(), 1);
    assert_eq!(from[0].secret_ref.as_ref().map(|s| s.name.as_str()), Some("spanprof-s3"));
    // Several replicas: peers through the headless Service, one down at a time.
    assert_eq!(sts.replicas, Some(3));
    assert_eq!(arg(c, "peers"), Some(format!("dns+{}.observability.svc:4040", sts.service_name.clone().unwrap())));
    let non_default = render_file("non-default.yaml");
    let pdb = non_default
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::PodDisruptionBudget(p) if p.metadata.name.as_deref() == Some("spanprof-server") => {
                Some(p.clone())
            }
            _ => None,
        })
        .expect("a PodDisruptionBudget for the server replicas");
    let selector = pdb.spec.and_then(|s| s.selector).and_then(|s| s.match_labels).unwrap();
    let labels = sts.template.metadata.clone().unwrap().labels.unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    // More than one replica without an object store is refused by the values schema.
    let err = template("spanprof", NS, &["--set", "server.replicas=2"]).expect_err("replicas without an object store");
    assert!(err.to_string().contains("url"), "{err}");

    // Without persistence: an emptyDir at the same place. With a StorageClass: it is used.
    let sts = statefulset(&render_file("non-default.yaml"), "spanprof-server").spec;
    assert!(sts.volume_claim_templates.is_none_or(|v| v.is_empty()));
    let pod = sts.template.spec.unwrap();
    assert!(pod.volumes.iter().flatten().any(|v| v.name == mount.name && v.empty_dir.is_some()));
    let sts = statefulset(&render_file("persistent.yaml"), "spanprof-server").spec;
    let claim = &sts.volume_claim_templates.unwrap()[0];
    let claim_spec = claim.spec.clone().unwrap();
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast-ssd"));
    assert_eq!(claim_spec.access_modes.as_deref(), Some(&["ReadWriteOncePod".to_owned()][..]));
}

#[test]
fn images_are_set_in_one_place() {
    let version = env!("CARGO_PKG_VERSION");
    let ms = render_default();
    let op = pod_spec(&deployment(&ms, "spanprof-operator"));
    let c = container(&op, "operator");
    assert_eq!(c.image.as_deref(), Some(format!("ghcr.io/spanprof/spanprof-operator:{version}").as_str()));
    // The sampler image the operator injects is the operator's own default.
    assert_eq!(arg(c, "sidecar-image"), Some(format!("ghcr.io/spanprof/spanprof-sidecar:{version}")));
    let sts = statefulset(&ms, "spanprof-server").spec.template.spec.unwrap();
    assert_eq!(
        container(&sts, "server").image.as_deref(),
        Some(format!("ghcr.io/spanprof/spanprof-server:{version}").as_str())
    );

    let ms = render_file("non-default.yaml");
    let op = pod_spec(&deployment(&ms, "spanprof-operator"));
    let c = container(&op, "operator");
    assert_eq!(c.image.as_deref(), Some("registry.example.com:5000/team/spanprof-operator:v9.9.9-rc.1"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(arg(c, "sidecar-image").as_deref(), Some("registry.example.com:5000/team/spanprof-sidecar:v9.9.9-rc.1"));
    assert_eq!(op.image_pull_secrets.unwrap()[0].name, "regcred");
    let sts = statefulset(&ms, "spanprof-server").spec.template.spec.unwrap();
    assert_eq!(
        container(&sts, "server").image.as_deref(),
        Some("registry.example.com:5000/team/spanprof-server:v9.9.9-rc.1")
    );
    // The chart's appVersion is the workspace version (the images' default tag).
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    assert!(chart.contains(&format!("appVersion: \"{version}\"")), "Chart.yaml appVersion must be {version}");
}

#[test]
fn default_spanprofiling_points_at_the_release_server() {
    assert!(!kinds(&render_default()).contains("SpanProfiling"), "off by default");
    let ms = render_file("non-default.yaml");
    let (v, _) = ms.iter().find(|(v, _)| v["kind"] == "SpanProfiling").expect("SpanProfiling");
    let sp: SpanProfiling = strict(v).unwrap();
    assert_eq!(sp.metadata.name.as_deref(), Some("shop-profiling"));
    assert_eq!(sp.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(sp.spec.server_url.as_deref(), Some("http://spanprof-server.observability.svc:4040"));
    assert_eq!(sp.spec.sample_rate_hz, 49);
    assert_eq!(sp.spec.upload_interval, "5s");
    // A serverUrl in values wins.
    let ms = render(
        NS,
        &[
            "--set".into(),
            "defaultSpanProfiling.enabled=true".into(),
            "--set".into(),
            "defaultSpanProfiling.spec.serverUrl=http://pyroscope.monitoring.svc:4040".into(),
        ],
    );
    let (v, _) = ms.iter().find(|(v, _)| v["kind"] == "SpanProfiling").expect("SpanProfiling");
    assert_eq!(v["spec"]["serverUrl"], "http://pyroscope.monitoring.svc:4040");
    assert_eq!(v["metadata"]["namespace"], "default");
}

#[test]
fn service_monitors_scrape_metrics() {
    let ms = render_file("non-default.yaml");
    let monitors: Vec<_> = ms
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::ServiceMonitor(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(monitors.len(), 2);
    for m in monitors {
        let name = m.metadata.name.clone().unwrap();
        assert_eq!(m.metadata.labels.as_ref().and_then(|l| l.get("release")).map(String::as_str), Some("prometheus"));
        let svc = service(&ms, &name);
        let port_names: Vec<String> = svc.spec.unwrap().ports.unwrap().into_iter().filter_map(|p| p.name).collect();
        assert!(port_names.contains(&m.spec.endpoints[0].port), "{name}: endpoint port is a port of the Service");
        assert_eq!(m.spec.endpoints[0].path, "/metrics");
        assert_eq!(m.spec.endpoints[0].interval, "15s");
    }
}

#[test]
fn values_schema_rejects_wrong_values_clearly() {
    // (helm args, text the error must contain)
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "webhook.timeoutSeconds=10"], "/webhook/timeoutSeconds"),
        (&["--set", "webhook.timeoutSeconds=0"], "/webhook/timeoutSeconds"),
        (&["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (&["--set", "operator.replicas=0"], "/operator/replicas"),
        (&["--set", "operator.webhookPort=70000"], "/operator/webhookPort"),
        (&["--set", "server.port=http"], "/server/port"),
        (&["--set", "server.persistence.size=lots"], "/server/persistence/size"),
        (&["--set", "server.persistence.accessModes[0]=ReadWriteSometimes"], "/server/persistence/accessModes/0"),
        (&["--set", "server.retentionAge=7 days"], "/server/retentionAge"),
        (&["--set", "operator.certValidity=forever"], "/operator/certValidity"),
        (&["--set", "webhook.podSecurityDefaultLevel=strict"], "/webhook/podSecurityDefaultLevel"),
        (&["--set", "webhook.excludeNamespaces[0]=Not_A_Namespace"], "/webhook/excludeNamespaces/0"),
        (&["--set", "defaultSpanProfiling.namespace=UPPER"], "/defaultSpanProfiling/namespace"),
        (&["--set", "image.tag=has space"], "/image/tag"),
        (&["--set", "replicas=3"], "additional properties 'replicas' not allowed"),
        (&["--set", "operator.replica=3"], "additional properties 'replica' not allowed"),
        (&["--set", "webhook.failurePolicy=Fail"], "additional properties 'failurePolicy' not allowed"),
        (&["--set-json", "operator.resources={\"requests\":{\"gpu\":1}}"], "additional properties 'gpu' not allowed"),
        (&["--set", "serviceMonitor.enabled=yes"], "/serviceMonitor/enabled"),
    ];
    let mut failures = Vec::new();
    for (args, want) in cases {
        match template("spanprof", NS, args) {
            Ok(_) => failures.push(format!("{args:?} was accepted")),
            Err(e) => {
                let msg = e.to_string();
                if !msg.contains("values don't meet the specifications of the schema") || !msg.contains(want) {
                    failures.push(format!("{args:?}: the error does not name {want:?}:\n{msg}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn notes_print_the_port_forward_and_how_to_opt_in() {
    let chart = chart_dir().to_string_lossy().into_owned();
    let out = run_helm(&["install", "spanprof", &chart, "--namespace", NS, "--dry-run=client"])
        .unwrap_or_else(|e| panic!("{e}"));
    let notes = out.split_once("NOTES:").map(|(_, n)| n).expect("NOTES printed");
    assert!(notes.contains("kubectl port-forward svc/spanprof-server 4040 -n spanprof"), "{notes}");
    assert!(notes.contains(&format!("\"{}\":\"true\"", names::ANNOTATION_INJECT)), "{notes}");
    assert!(notes.contains("rollout"), "{notes}");
    assert!(notes.contains("kind: SpanProfiling"), "{notes}");
}

#[test]
fn grafana_data_source_points_at_the_server_service() {
    assert!(!kinds(&render_default()).contains("ConfigMap"), "off by default");
    let ms = render_file("non-default.yaml");
    let cm = ms
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::ConfigMap(c) if c.metadata.name.as_deref() == Some("spanprof-grafana-datasource") => {
                Some(c.clone())
            }
            _ => None,
        })
        .expect("the data source ConfigMap");
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("grafana_datasource").map(String::as_str), Some("1"), "the Grafana sidecar's label");
    assert_eq!(labels.get("team").map(String::as_str), Some("platform"));
    let data = cm.data.clone().unwrap_or_default();
    let provisioning: Value = serde_yaml::from_str(&data["spanprof-datasource.yaml"]).expect("provisioning YAML");
    assert_eq!(provisioning["apiVersion"], 1);
    let ds = &provisioning["datasources"][0];
    assert_eq!(ds["type"], "grafana-pyroscope-datasource");
    assert_eq!((ds["name"].as_str(), ds["uid"].as_str()), (Some("Span profiles"), Some("spanprof-prod")));
    assert_eq!(ds["jsonData"]["minStep"], "30s");
    // The URL names the server's Service, in the release namespace, on its port.
    let svc = service(&ms, "spanprof-server");
    let port = svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
    assert_eq!(ds["url"].as_str().unwrap(), format!("http://spanprof-server.observability.svc:{port}"));
}
