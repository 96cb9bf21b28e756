//! Generated manifests are committed; these tests fail when the Rust types or rules drift from
//! them. Regenerate with `spanprof-operator-gen` as each message says.

use std::path::PathBuf;

use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use spanprof_operator::{crd, rbac};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn assert_committed(path: &str, generated: &str, what: &str) {
    let committed = std::fs::read_to_string(repo_root().join(path)).unwrap_or_default();
    assert!(
        committed == generated,
        "{path} is out of date; run: cargo run -p spanprof-operator --bin spanprof-operator-gen -- {what} > {path}"
    );
}

#[test]
fn crd_yaml_matches_the_types() {
    assert_committed(crd::CRD_PATH, &crd::crd_yaml().unwrap(), "crd");
}

#[test]
fn rbac_yaml_matches_the_rules() {
    assert_committed(rbac::CLUSTER_ROLE_PATH, &rbac::cluster_role_yaml().unwrap(), "clusterrole");
    assert_committed(rbac::ROLE_PATH, &rbac::role_yaml().unwrap(), "role");
}

#[test]
fn crd_has_the_fixed_names_defaults_validation_and_columns() {
    let text = std::fs::read_to_string(repo_root().join(crd::CRD_PATH)).unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    assert_eq!(crd.metadata.name.as_deref(), Some("spanprofilings.spanprof.dev"));
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["sprof".to_owned()][..]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "status subresource");
    let columns: Vec<&str> = v.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["Ready", "Rate", "Injected", "Age"]);
    let schema = serde_json::to_value(&v.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(spec["sampleRateHz"]["default"], 100);
    assert_eq!(spec["sampleRateHz"]["maximum"], 1000.0);
    assert_eq!(spec["stackCopyBytes"]["multipleOf"], 8.0);
    assert_eq!(spec["uploadInterval"]["default"], "10s");
    assert_eq!(
        spec["sidecar"]["properties"]["capabilities"]["enum"],
        serde_json::json!(["perfmon", "privileged", "none"])
    );
    assert_eq!(spec["sidecar"]["properties"]["resources"]["default"]["requests"]["cpu"], "50m");
    // What the API server would reject in the sampler container is rejected at apply time.
    let sidecar = &spec["sidecar"]["properties"];
    assert_eq!(sidecar["image"]["pattern"], r"^\S+$");
    assert_eq!(
        sidecar["env"]["items"]["properties"]["name"]["pattern"],
        spanprof_operator::validation::ENV_VAR_NAME_PATTERN
    );
    assert_eq!(
        sidecar["env"]["items"]["x-kubernetes-validations"][0]["message"],
        "value and valueFrom cannot both be set"
    );
    assert!(sidecar["resources"]["properties"]["requests"]["additionalProperties"]["pattern"].is_string());
    // Descriptions read as prose in `kubectl explain`: no doc-comment line breaks.
    let server_url = spec["serverUrl"]["description"].as_str().unwrap();
    assert!(!server_url.contains('\n') && server_url.contains("pushes profiles to"), "{server_url}");
    let status = &schema["properties"]["status"]["properties"];
    assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
    // Every field has a description, so `kubectl explain` is useful.
    for (name, field) in spec.as_object().unwrap().iter().chain(status.as_object().unwrap()) {
        assert!(field["description"].as_str().is_some_and(|d| !d.is_empty()), "{name} has no description");
    }
}

#[test]
fn cluster_role_parses_and_grants_nothing_beyond_the_list() {
    let text = std::fs::read_to_string(repo_root().join(rbac::CLUSTER_ROLE_PATH)).unwrap();
    let role: ClusterRole = serde_yaml::from_str(&text).unwrap();
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), rbac::CLUSTER_RULES.len());
    for r in &rules {
        assert!(!r.verbs.iter().any(|v| v == "*" || v == "delete" || v == "update"), "{r:?}");
        assert!(!r.resources.iter().flatten().any(|x| x == "*" || x == "secrets"), "{r:?}");
    }
}
