//! The `SpanProfiling` custom resource (`spanprof.dev/v1alpha1`): what to inject into opted-in
//! pods, and the status the controller reports.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, SecurityContext};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Configures the spanprof sampler that the operator injects into pods annotated
/// `spanprof.dev/inject`. The sampler samples the pod's processes with perf events and labels
/// every sample with the span active on its thread.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "spanprof.dev",
    version = "v1alpha1",
    kind = "SpanProfiling",
    plural = "spanprofilings",
    shortname = "sprof",
    namespaced,
    doc = "Injects the spanprof sampler into pods that opt in with the spanprof.dev/inject annotation, and reports how many it injected.",
    status = "SpanProfilingStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Rate","type":"integer","jsonPath":".spec.sampleRateHz","description":"Samples per second per thread"}"#,
    printcolumn = r#"{"name":"Injected","type":"integer","jsonPath":".status.injectedPods","description":"Existing pods (pending or running) injected with this configuration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SpanProfilingSpec {
    /// URL of the spanprof server (or any Pyroscope-compatible server) the sampler pushes
    /// profiles to, e.g. `http://spanprof-server.spanprof.svc:4040`. Unset: the operator's
    /// `--default-server-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/?#]+[^\s]*$"), length(max = 2048))]
    pub server_url: Option<String>,

    /// Samples per second per thread (CPU clock).
    #[serde(default = "default_sample_rate_hz")]
    #[schemars(range(min = 1, max = 1000))]
    pub sample_rate_hz: u32,

    /// Bytes of user stack copied with every sample for DWARF unwinding; a multiple of 8. Deeper
    /// stacks need more; the kernel caps it just under 64 KiB.
    #[serde(default = "default_stack_copy_bytes")]
    #[schemars(range(min = 1024, max = 65528), extend("multipleOf" = 8))]
    pub stack_copy_bytes: u32,

    /// How often the sampler pushes what it aggregated: a number and a unit, `s` or `m`
    /// (e.g. `10s`, `1m`).
    #[serde(default = "default_upload_interval")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,4}(s|m)$"))]
    pub upload_interval: String,

    /// Service name of the profiles (`service_name` label). Unset: the pod's
    /// `spanprof.dev/service-name` annotation, else its `app.kubernetes.io/name` or `app` label,
    /// else the name of the workload that owns it. The annotation wins over this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_name: Option<String>,

    /// Names of the app containers that get the span-context volume and the SDK's environment.
    /// Empty: all of them. The pod's `spanprof.dev/container-names` annotation wins over this.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,

    /// Base URL of the spanprof UI as users reach it; `SPANPROF_PROFILE_URL` becomes
    /// `<base>/profiles/{profile_id}` and is set on spans so trace UIs link to the flame graph.
    /// Unset: the server URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s]+$"), length(max = 2048))]
    pub profile_url_base: Option<String>,

    /// The injected `spanprof-sampler` container.
    #[serde(default)]
    #[schemars(extend("default" = {}))]
    pub sidecar: SidecarSpec,
}

/// Settings of the injected `spanprof-sampler` container.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Sampler image. Unset: the operator's `--sidecar-image` (the version matching the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), regex(pattern = r"^\S+$"))]
    pub image: Option<String>,

    /// Image pull policy of the sampler.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// Compute resources of the sampler. The defaults are explicit (not zero) so that a
    /// namespace's LimitRange does not pick them.
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,

    /// How the sampler gets permission to use perf events and read other processes: `perfmon`
    /// adds CAP_PERFMON and CAP_SYS_PTRACE and drops every other capability; `privileged` runs it
    /// privileged; `none` adds nothing (for nodes whose `kernel.perf_event_paranoid` allows it;
    /// the sampler then runs as the pod's user).
    #[serde(default)]
    pub capabilities: CapabilityMode,

    /// Replaces the sampler's security context that `capabilities` would produce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,

    /// Run the sampler as a native sidecar (an init container with `restartPolicy: Always`, so it
    /// starts before and stops after the app). Set false on clusters older than Kubernetes 1.29:
    /// the sampler is then added as a regular container.
    #[serde(default = "default_true")]
    pub native: bool,

    /// Extra environment of the sampler; an entry named like one the operator sets replaces it.
    /// Names use the portable rule every Kubernetes version accepts (letters, digits, `_`, `-`,
    /// `.`; not starting with a digit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
}

/// Image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// How the sampler is allowed to use `perf_event_open` and read `/proc/<pid>`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CapabilityMode {
    /// CAP_PERFMON + CAP_SYS_PTRACE, every other capability dropped.
    #[default]
    Perfmon,
    /// A privileged container.
    Privileged,
    /// No added capabilities.
    None,
}

/// What the controller observed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpanProfilingStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: the configuration is valid and the webhook injects it into opted-in pods.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Pods that currently exist and were injected with this configuration.
    #[serde(default)]
    pub injected_pods: u32,

    /// Creation time of the most recently injected pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_injection_time: Option<Time>,
}

fn default_sample_rate_hz() -> u32 {
    100
}

fn default_stack_copy_bytes() -> u32 {
    16 * 1024
}

fn default_upload_interval() -> String {
    "10s".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_resources() -> ResourceRequirements {
    let q = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements { requests: Some(q("50m", "64Mi")), limits: Some(q("500m", "256Mi")), ..Default::default() }
}

impl Default for SidecarSpec {
    fn default() -> Self {
        SidecarSpec {
            image: None,
            image_pull_policy: PullPolicy::default(),
            resources: default_resources(),
            capabilities: CapabilityMode::default(),
            security_context: None,
            native: true,
            env: Vec::new(),
        }
    }
}

impl Default for SpanProfilingSpec {
    fn default() -> Self {
        SpanProfilingSpec {
            server_url: None,
            sample_rate_hz: default_sample_rate_hz(),
            stack_copy_bytes: default_stack_copy_bytes(),
            upload_interval: default_upload_interval(),
            service_name: None,
            containers: Vec::new(),
            profile_url_base: None,
            sidecar: SidecarSpec::default(),
        }
    }
}

/// Where the generated CRD is committed, relative to the repository root.
pub const CRD_PATH: &str = "crds/spanprof.dev_spanprofilings.yaml";

/// The pattern the API server's quantity parser accepts (the one controller-gen emits).
const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// The CRD, with what derive macros cannot say: the API server's rules for the sampler container
/// (so `kubectl apply` refuses a SpanProfiling whose sampler would make pods invalid), and
/// descriptions as prose (doc comments wrap lines; `kubectl explain` wraps again).
pub fn crd() -> Result<CustomResourceDefinition, serde_json::Error> {
    let mut value = serde_json::to_value(SpanProfiling::crd())?;
    unwrap_descriptions(&mut value);
    for version in value["spec"]["versions"].as_array_mut().into_iter().flatten() {
        let sidecar =
            &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["sidecar"]["properties"];
        let env = &mut sidecar["env"]["items"];
        env["properties"]["name"]["pattern"] = json!(crate::validation::ENV_VAR_NAME_PATTERN);
        env["properties"]["name"]["description"] = json!(
            "Name of the variable: letters, digits, '_', '-' or '.', not starting with a digit (the rule every \
             supported Kubernetes version accepts)."
        );
        // size(), not a comparison with '': constant cost whatever the value's length, so the
        // API server's CEL cost estimate stays tiny.
        env["x-kubernetes-validations"] = json!([{
            "rule": "!has(self.valueFrom) || !has(self.value) || size(self.value) == 0",
            "message": "value and valueFrom cannot both be set",
        }]);
        // Requests above limits cannot be said without CEL's quantity functions, whose estimated
        // cost on int-or-string values the API server does not bound; the controller reports
        // such a SpanProfiling InvalidSpec and the webhook leaves pods alone instead.
        for map in ["requests", "limits"] {
            sidecar["resources"]["properties"][map]["additionalProperties"]["pattern"] = json!(QUANTITY_PATTERN);
        }
    }
    serde_json::from_value(value)
}

/// Joins the single line breaks of every description into spaces, keeping paragraphs.
fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(text) if key == "description" => {
                        let paragraphs: Vec<String> = text
                            .split("\n\n")
                            .map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join(" "))
                            .collect();
                        *text = paragraphs.join("\n\n");
                    }
                    _ => unwrap_descriptions(v),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// The CRD as the YAML committed under `crds/`.
pub fn crd_yaml() -> Result<String, crate::Error> {
    let crd = crd().map_err(|e| crate::Error::Config(format!("CRD: {e}")))?;
    let yaml = serde_yaml::to_string(&crd).map_err(|e| crate::Error::Config(format!("CRD: {e}")))?;
    Ok(format!(
        "# Generated from operator/src/crd.rs by `cargo run -p spanprof-operator --bin spanprof-operator-gen -- crd`; do not edit.\n{yaml}"
    ))
}
