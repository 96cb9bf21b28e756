//! Whether and how to inject the sampler into a pod: pure functions from the admitted pod and the
//! SpanProfiling to a JSON patch, so every case is tested without a cluster.

use std::fmt;
use std::sync::Arc;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod,
    PodSpec, Probe, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::crd::{CapabilityMode, SpanProfiling};
use crate::names::*;
use crate::pod_security::{self, Level};

/// The sampler image's user (distroless `nonroot`): what `capabilities: none` runs the sampler as
/// when the pod does not say which user its app runs as.
pub const SAMPLER_IMAGE_UID: i64 = 65532;

/// Operator-wide settings the injection falls back to.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Server URL for SpanProfilings that set none.
    pub server_url: String,
    /// Sampler image for SpanProfilings that set none.
    pub sidecar_image: String,
    /// The operator's own namespace: its pods are never injected.
    pub operator_namespace: String,
    /// The Pod Security level enforced in namespaces without the
    /// `pod-security.kubernetes.io/enforce` label (Kubernetes' default is `privileged`; a
    /// cluster's AdmissionConfiguration can make it stricter).
    pub pod_security_default: Level,
}

/// Why a pod was admitted unmodified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// No `spanprof.dev/inject` annotation, or `"false"`.
    NotRequested,
    /// The pod runs in the operator's own namespace.
    OperatorNamespace,
    /// `spanprof.dev/injected` is already set (re-invocation, or a pod copied from an injected one).
    AlreadyInjected(String),
    /// A container named `spanprof-sampler` already exists.
    SidecarExists,
    /// The annotation value is none of the accepted forms.
    InvalidAnnotation(String),
    /// `"true"`, but the namespace has no SpanProfiling.
    NoProfiling { namespace: String },
    /// `"true"`, but the namespace has several SpanProfilings.
    AmbiguousProfiling { namespace: String, names: Vec<String> },
    /// The named SpanProfiling does not exist.
    ProfilingNotFound { namespace: String, name: String },
    /// The pod set `shareProcessNamespace: false`; the sampler could not see the app.
    ProcessNamespaceDisabled,
    /// The pod uses the host's PID namespace, which excludes `shareProcessNamespace`.
    HostPid,
    /// The container selection names none of the pod's containers.
    NoContainersSelected { requested: Vec<String> },
    /// The sampler would violate the Pod Security level the namespace enforces, so the API server
    /// (whose Pod Security admission runs after this webhook) would reject the injected pod.
    PodSecurity {
        namespace: String,
        level: Level,
        /// What the sampler would violate.
        violations: Vec<String>,
        /// What the user can do about it.
        remedy: String,
    },
    /// The sampler container, as the SpanProfiling configures it, is one the API server would
    /// reject, and the whole pod with it.
    InvalidSampler { profiling: String, problems: Vec<String> },
    /// Building the patch failed (a bug); the pod must still be admitted.
    Internal(String),
}

impl Skip {
    /// Whether the user asked for injection and did not get it: answered with a warning and an Event.
    pub fn is_problem(&self) -> bool {
        !matches!(self, Skip::NotRequested | Skip::OperatorNamespace | Skip::AlreadyInjected(_))
    }

    /// Short stable tag: the Event reason and (snake-cased) the metric outcome.
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::NotRequested => "NotRequested",
            Skip::OperatorNamespace => "OperatorNamespace",
            Skip::AlreadyInjected(_) => "AlreadyInjected",
            Skip::SidecarExists => "SidecarExists",
            Skip::InvalidAnnotation(_) => "InvalidAnnotation",
            Skip::NoProfiling { .. } => "NoSpanProfiling",
            Skip::AmbiguousProfiling { .. } => "AmbiguousSpanProfiling",
            Skip::ProfilingNotFound { .. } => "SpanProfilingNotFound",
            Skip::ProcessNamespaceDisabled => "ProcessNamespaceDisabled",
            Skip::HostPid => "HostPID",
            Skip::NoContainersSelected { .. } => "NoContainersSelected",
            Skip::PodSecurity { .. } => "PodSecurity",
            Skip::InvalidSampler { .. } => "InvalidSampler",
            Skip::Internal(_) => "InternalError",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = "spanprof: not injected:";
        match self {
            Skip::NotRequested => write!(f, "{p} no {ANNOTATION_INJECT} annotation"),
            Skip::OperatorNamespace => write!(f, "{p} pods of the operator's namespace are never injected"),
            Skip::AlreadyInjected(by) => write!(f, "{p} already injected by {by}"),
            Skip::SidecarExists => write!(f, "{p} the pod already has a {SIDECAR_NAME} container"),
            Skip::InvalidAnnotation(v) => write!(
                f,
                "{p} {ANNOTATION_INJECT}={v:?} is not \"true\", \"false\", \"<name>\" or \"<namespace>/<name>\""
            ),
            Skip::NoProfiling { namespace } => {
                write!(f, "{p} {ANNOTATION_INJECT}=true but namespace {namespace} has no SpanProfiling")
            }
            Skip::AmbiguousProfiling { namespace, names } => write!(
                f,
                "{p} {ANNOTATION_INJECT}=true but namespace {namespace} has several SpanProfilings ({}); name one",
                names.join(", ")
            ),
            Skip::ProfilingNotFound { namespace, name } => write!(f, "{p} SpanProfiling {namespace}/{name} not found"),
            Skip::ProcessNamespaceDisabled => {
                write!(f, "{p} the pod sets shareProcessNamespace: false, so the sampler could not see its processes")
            }
            Skip::HostPid => write!(f, "{p} the pod uses hostPID, which cannot be combined with shareProcessNamespace"),
            Skip::NoContainersSelected { requested } => {
                write!(f, "{p} no container of the pod is named {}", requested.join(", "))
            }
            Skip::PodSecurity { namespace, level, violations, remedy } => write!(
                f,
                "{p} namespace {namespace} enforces Pod Security \"{level}\" and the sampler would violate it ({}), \
                 so the API server would reject the pod. {remedy}",
                violations.join("; ")
            ),
            Skip::InvalidSampler { profiling, problems } => write!(
                f,
                "{p} the sampler container SpanProfiling {profiling} configures would make the pod invalid ({}); \
                 fix the SpanProfiling's sidecar settings",
                problems.join("; ")
            ),
            Skip::Internal(e) => write!(f, "{p} internal error: {e}"),
        }
    }
}

/// What to do with an admitted pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Apply `patch`; `profiling` is `"<namespace>/<name>"` of the SpanProfiling used; `warnings`
    /// are admission warnings about the injected pod (it is injected all the same).
    Inject { profiling: String, patch: Patch, warnings: Vec<String> },
    /// Admit unmodified.
    Skip(Skip),
}

/// An injection: the patch and the warnings that go with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub patch: Patch,
    pub warnings: Vec<String>,
}

/// Decides for a pod being created in `namespace`, given every SpanProfiling the operator knows.
/// `pod_security` gives the Pod Security level the namespace enforces; it is only asked for pods
/// that would be injected.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    profilings: &[Arc<SpanProfiling>],
    defaults: &Defaults,
    pod_security: impl FnOnce() -> Level,
) -> Decision {
    match resolve(pod, namespace, profilings, defaults) {
        Ok(sp) => match plan(pod, namespace, sp, defaults, pod_security) {
            Ok(Plan { patch, warnings }) => Decision::Inject { profiling: profiling_key(sp), patch, warnings },
            Err(skip) => Decision::Skip(skip),
        },
        Err(skip) => Decision::Skip(skip),
    }
}

/// `"<namespace>/<name>"` of a SpanProfiling, as written into `spanprof.dev/injected`.
pub fn profiling_key(sp: &SpanProfiling) -> String {
    format!("{}/{}", sp.namespace().unwrap_or_default(), sp.name_any())
}

/// Picks the SpanProfiling the pod asks for, or says why none applies.
pub fn resolve<'a>(
    pod: &Pod,
    namespace: &str,
    profilings: &'a [Arc<SpanProfiling>],
    defaults: &Defaults,
) -> Result<&'a SpanProfiling, Skip> {
    let annotations = pod.annotations();
    let Some(value) = annotations.get(ANNOTATION_INJECT).map(|v| v.trim()) else {
        return Err(Skip::NotRequested);
    };
    if value.eq_ignore_ascii_case("false") {
        return Err(Skip::NotRequested);
    }
    if namespace == defaults.operator_namespace {
        return Err(Skip::OperatorNamespace);
    }
    if let Some(by) = annotations.get(ANNOTATION_INJECTED) {
        return Err(Skip::AlreadyInjected(by.clone()));
    }
    let in_ns = |ns: &str| -> Vec<&'a Arc<SpanProfiling>> {
        profilings.iter().filter(|p| p.namespace().as_deref() == Some(ns)).collect()
    };
    if value.eq_ignore_ascii_case("true") {
        let mut found = in_ns(namespace);
        return match found.len() {
            1 => Ok(found[0]),
            0 => Err(Skip::NoProfiling { namespace: namespace.to_owned() }),
            _ => {
                found.sort_by_key(|p| p.name_any());
                Err(Skip::AmbiguousProfiling {
                    namespace: namespace.to_owned(),
                    names: found.iter().map(|p| p.name_any()).collect(),
                })
            }
        };
    }
    let (ns, name) = match value.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (namespace, value),
    };
    if !is_dns_name(ns) || !is_dns_name(name) {
        return Err(Skip::InvalidAnnotation(value.to_owned()));
    }
    in_ns(ns)
        .into_iter()
        .find(|p| p.name_any() == name)
        .map(|p| p.as_ref())
        .ok_or_else(|| Skip::ProfilingNotFound { namespace: ns.to_owned(), name: name.to_owned() })
}

/// A lowercase RFC 1123 subdomain, what namespace and object names are.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The JSON patch that injects `sp` into `pod` (in `namespace`, which enforces the Pod Security
/// level `pod_security` returns), with its warnings; or why it must not be injected.
pub fn plan(
    pod: &Pod,
    namespace: &str,
    sp: &SpanProfiling,
    defaults: &Defaults,
    pod_security: impl FnOnce() -> Level,
) -> Result<Plan, Skip> {
    let spec = pod.spec.clone().unwrap_or_default();
    match spec.share_process_namespace {
        Some(false) => return Err(Skip::ProcessNamespaceDisabled),
        _ if spec.host_pid == Some(true) => return Err(Skip::HostPid),
        _ => {}
    }
    let has_sidecar =
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == SIDECAR_NAME);
    if has_sidecar {
        return Err(Skip::SidecarExists);
    }
    let selected = selected_containers(pod, sp)?;
    let service = service_name(pod, sp);
    let server_url = sp.spec.server_url.clone().unwrap_or_else(|| defaults.server_url.clone());
    let url_base = sp.spec.profile_url_base.clone().unwrap_or_else(|| server_url.clone());
    let profile_url = format!("{}/profiles/{{profile_id}}", url_base.trim_end_matches('/'));
    let user = AppUser::of(&spec, &selected);
    let mut warnings = Vec::new();
    let mut sampler = sampler_container(sp, defaults, &server_url, &service, user);
    // Each container's service name, as its app reports it: a value the container already sets
    // wins, so the app and the sampler agree.
    let mut services = Vec::new();
    for c in spec.containers.iter().filter(|c| selected.contains(&c.name)) {
        let (own, warning) = container_service(c, &service);
        warnings.extend(warning);
        services.push((c.name.clone(), own));
    }
    let listed = services.iter().filter(|(_, s)| !s.contains(',')).map(|(c, s)| (c.as_str(), s.as_str()));
    if let Ok(names) = spanprof_channel::pod::format_service_names(listed) {
        add_env_unless_set(&mut sampler, plain_env(ENV_SERVICE_NAMES, &names));
    }
    if let Some(cpus) = app_cpus(&spec, &selected) {
        add_env_unless_set(&mut sampler, plain_env(ENV_APP_CPUS, &cpus));
    }
    let port = sampler_metrics_port(&spec);
    add_env_unless_set(&mut sampler, plain_env(ENV_SIDECAR_LISTEN, &format!("0.0.0.0:{port}")));
    // A stalled sampling loop fails /healthz; the kubelet then restarts the sampler alone. Not
    // with hostNetwork, where another pod on the node may hold the port; nor when the
    // SpanProfiling moved the address itself.
    let own_listen = sp.spec.sidecar.env.iter().any(|e| e.name == ENV_SIDECAR_LISTEN);
    if spec.host_network != Some(true) && !own_listen {
        sampler.liveness_probe = Some(liveness_probe(port));
    }
    let problems = crate::validation::container_problems(&sampler);
    if !problems.is_empty() {
        return Err(Skip::InvalidSampler { profiling: profiling_key(sp), problems });
    }
    let add_volume = !spec.volumes.iter().flatten().any(|v| v.name == VOLUME_NAME);

    // Pod Security admission runs after mutating webhooks: a sampler that violates the
    // namespace's level would get the whole pod rejected, so the pod is better left alone.
    let level = pod_security();
    let violations = sampler_violations(&spec, &sampler, add_volume, level);
    if !violations.is_empty() {
        return Err(Skip::PodSecurity {
            namespace: namespace.to_owned(),
            level,
            violations,
            remedy: remedy(sp, level),
        });
    }
    if sp.spec.sidecar.security_context.is_none() && sp.spec.sidecar.capabilities == CapabilityMode::None {
        warnings.extend(unprivileged_warnings(&spec, &sampler, user));
    }

    let mut ops = Ops::default();
    // Metadata first: the annotation makes a re-invocation a no-op, the label lets the controller
    // select injected pods.
    let key = profiling_key(sp);
    ops.add_to_map(&["metadata", "annotations"], pod.metadata.annotations.is_some(), ANNOTATION_INJECTED, json!(key));
    ops.add_to_map(&["metadata", "labels"], pod.metadata.labels.is_some(), LABEL_INJECTED, json!("true"));
    if spec.share_process_namespace != Some(true) {
        ops.add(&["spec", "shareProcessNamespace"], json!(true));
    }
    // A volume the user already declared under our name is theirs and wins.
    if add_volume {
        ops.add_to_list(&["spec", "volumes"], spec.volumes.is_some(), false, to_value(&context_volume())?);
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if !selected.contains(&c.name) {
            continue;
        }
        // The sampler serves every container of the pod; it tells them apart by the context
        // volume's subdirectory each one sees (see `spanprof_channel::pod`), and by
        // SPANPROF_CONTAINER_NAME where it may read a process's environment.
        let app_env = [
            plain_env(ENV_CONTEXT_DIR, CONTEXT_DIR),
            plain_env(ENV_SERVICE_NAME, &service),
            plain_env(ENV_PROFILE_URL, &profile_url),
            plain_env(ENV_CONTAINER_NAME, &c.name),
        ];
        let idx = i.to_string();
        let env_path = ["spec", "containers", idx.as_str(), "env"];
        let existing = c.env.as_deref().unwrap_or_default();
        let missing: Vec<&EnvVar> = app_env.iter().filter(|e| !existing.iter().any(|x| x.name == e.name)).collect();
        warnings.extend(env_from_warning(c, &missing));
        if c.env.is_none() {
            ops.add(&env_path, to_value(&missing)?);
        } else {
            for e in missing {
                ops.add_to_list(&env_path, true, false, to_value(e)?);
            }
        }
        let mounts = c.volume_mounts.as_deref().unwrap_or_default();
        if !mounts.iter().any(|m| m.name == VOLUME_NAME || m.mount_path.trim_end_matches('/') == CONTEXT_DIR) {
            let mounts_path = ["spec", "containers", idx.as_str(), "volumeMounts"];
            ops.add_to_list(&mounts_path, c.volume_mounts.is_some(), false, to_value(&app_context_mount(&c.name))?);
        }
    }
    if sp.spec.sidecar.native {
        // First, so it runs before (and samples) the pod's other init containers, as Istio and
        // Linkerd place their native sidecars.
        ops.add_to_list(&["spec", "initContainers"], spec.init_containers.is_some(), true, to_value(&sampler)?);
    } else {
        ops.add_to_list(&["spec", "containers"], true, false, to_value(&sampler)?);
    }
    Ok(Plan { patch: Patch(ops.0), warnings })
}

/// The Pod Security violations the injection would add to `spec` under `level`: the sampler's,
/// and the context volume's (an emptyDir, allowed everywhere). The pod's own violations are not
/// ours to report: the API server rejects such a pod with or without the sampler.
pub fn sampler_violations(spec: &PodSpec, sampler: &Container, adds_volume: bool, level: Level) -> Vec<String> {
    let prefix = format!("container {SIDECAR_NAME:?}: ");
    let mut out: Vec<String> = pod_security::container_violations(sampler, spec, level)
        .into_iter()
        .map(|v| v.message.strip_prefix(&prefix).map(str::to_owned).unwrap_or(v.message))
        .collect();
    if adds_volume {
        out.extend(pod_security::volume_violations(&context_volume(), level).into_iter().map(|v| v.message));
    }
    out
}

/// What a user can change when the sampler would violate the namespace's Pod Security `level`.
fn remedy(sp: &SpanProfiling, level: Level) -> String {
    let label = "label the namespace pod-security.kubernetes.io/enforce=privileged";
    if sp.spec.sidecar.security_context.is_some() {
        return format!("Change the SpanProfiling's sidecar.securityContext to meet \"{level}\", or {label}.");
    }
    match (sp.spec.sidecar.capabilities, level) {
        (CapabilityMode::None, _) => format!(
            "Give the pod a securityContext with runAsNonRoot: true, a non-zero runAsUser and seccompProfile \
             RuntimeDefault or Localhost, set the SpanProfiling's sidecar.securityContext, or {label}."
        ),
        (_, Level::Restricted) => format!(
            "Either {label}, or set the SpanProfiling's sidecar.capabilities: none (nodes with \
             kernel.perf_event_paranoid <= 2; the pod must set runAsNonRoot, runAsUser and a seccompProfile, and \
             the sampler needs a Localhost seccomp profile that allows perf_event_open: see the README)."
        ),
        _ => format!(
            "Either {label}, or set the SpanProfiling's sidecar.capabilities: none (nodes with \
             kernel.perf_event_paranoid <= 2; the sampler then runs as the app's user: see the README)."
        ),
    }
}

/// The user and group the selected app containers run as, when the pod spec says so (a user
/// the image picks is unknown here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppUser {
    pub uid: Option<i64>,
    pub gid: Option<i64>,
}

impl AppUser {
    /// The effective runAsUser/runAsGroup of the `selected` containers when they all agree.
    pub fn of(spec: &PodSpec, selected: &[String]) -> AppUser {
        let pod = spec.security_context.clone().unwrap_or_default();
        let containers: Vec<&Container> = spec.containers.iter().filter(|c| selected.contains(&c.name)).collect();
        let agreed = |field: fn(&SecurityContext) -> Option<i64>, pod_value: Option<i64>| -> Option<i64> {
            let mut values = containers.iter().map(|c| c.security_context.as_ref().and_then(field).or(pod_value));
            let first = values.next()??;
            values.all(|v| v == Some(first)).then_some(first)
        };
        AppUser {
            uid: agreed(|sc| sc.run_as_user, pod.run_as_user),
            gid: agreed(|sc| sc.run_as_group, pod.run_as_group),
        }
    }
}

/// Warnings about a `capabilities: none` sampler that will likely not be able to sample.
fn unprivileged_warnings(spec: &PodSpec, sampler: &Container, user: AppUser) -> Vec<String> {
    let p = "spanprof: sidecar.capabilities none:";
    let mut out = Vec::new();
    match user.uid {
        None => out.push(format!(
            "{p} the pod does not set runAsUser for its app containers, so the sampler runs as {SAMPLER_IMAGE_UID} \
             and can only profile processes of that user; set the pod's securityContext.runAsUser and runAsGroup"
        )),
        Some(0) => out.push(format!(
            "{p} the app runs as root; without capabilities the sampler cannot profile it (use capabilities: perfmon, \
             or run the app as a non-root user)"
        )),
        Some(_) => {}
    }
    let own = sampler.security_context.as_ref().and_then(|sc| sc.seccomp_profile.as_ref());
    let inherited = spec.security_context.as_ref().and_then(|sc| sc.seccomp_profile.as_ref());
    if own.or(inherited).is_some_and(|p| p.type_ == "RuntimeDefault") {
        out.push(format!(
            "{p} the sampler inherits the pod's seccompProfile RuntimeDefault, whose containerd and CRI-O versions allow \
             perf_event_open only with CAP_PERFMON; give it a Localhost profile that allows perf_event_open in the \
             SpanProfiling's sidecar.securityContext"
        ));
    }
    out
}

/// A warning when the injected variables would shadow values the container takes from
/// ConfigMaps or Secrets through `envFrom`: Kubernetes gives `env` precedence, and the webhook
/// cannot read those sources to tell whether they really set them.
fn env_from_warning(c: &Container, injected: &[&EnvVar]) -> Option<String> {
    let sources = c.env_from.as_deref().unwrap_or_default();
    // A source's variables are named `<prefix><key>`: only names with its prefix can collide.
    let shadowed: Vec<&str> = injected
        .iter()
        .map(|e| e.name.as_str())
        .filter(|name| sources.iter().any(|s| name.starts_with(s.prefix.as_deref().unwrap_or_default())))
        .collect();
    if shadowed.is_empty() {
        return None;
    }
    let names: Vec<String> = sources
        .iter()
        .filter_map(|s| {
            let (kind, name) = match (&s.config_map_ref, &s.secret_ref) {
                (Some(cm), _) => ("ConfigMap", cm.name.as_str()),
                (None, Some(secret)) => ("Secret", secret.name.as_str()),
                (None, None) => return None,
            };
            Some(format!("{kind} {name}"))
        })
        .collect();
    Some(format!(
        "spanprof: container {} takes variables from envFrom ({}); the injected {} override any of the same name there \
         (env wins over envFrom). To use your own values, set them in the container's env",
        c.name,
        names.join(", "),
        shadowed.join(", ")
    ))
}

/// Names of the app containers to configure: the annotation's list, else the spec's, else all.
/// How many CPUs the `selected` containers may use together, for [`ENV_APP_CPUS`] (it sizes the
/// sampler's rings): the sum of their CPU limits, or `None` when one has none (it may use every
/// CPU of the node) or a limit is not a plain quantity.
fn app_cpus(spec: &PodSpec, selected: &[String]) -> Option<String> {
    let mut millis = 0u64;
    for c in spec.containers.iter().filter(|c| selected.contains(&c.name)) {
        let limit = c.resources.as_ref()?.limits.as_ref()?.get("cpu")?;
        millis = millis.checked_add(cpu_millis(&limit.0)?)?;
    }
    (millis > 0).then(|| format!("{}", millis as f64 / 1000.0))
}

/// A CPU quantity in millicores: `2`, `1.5`, `500m` (Kubernetes rounds CPU up to 1m). `None` for
/// other forms (exponents, binary suffixes), which CPU limits do not use in practice.
fn cpu_millis(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let (number, scale) = match q.strip_suffix('m') {
        Some(n) => (n, 1.0),
        None => (q, 1000.0),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let millis = (value * scale).ceil();
    (millis.is_finite() && millis <= u64::MAX as f64).then_some(millis as u64)
}

fn selected_containers(pod: &Pod, sp: &SpanProfiling) -> Result<Vec<String>, Skip> {
    let all: Vec<String> = pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect();
    let requested: Vec<String> = match pod.annotations().get(ANNOTATION_CONTAINER_NAMES) {
        Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        None => sp.spec.containers.clone(),
    };
    if requested.is_empty() {
        return Ok(all);
    }
    let selected: Vec<String> = requested.iter().filter(|r| all.contains(r)).cloned().collect();
    if selected.is_empty() {
        return Err(Skip::NoContainersSelected { requested });
    }
    Ok(selected)
}

/// The `service_name` of the pod's profiles: annotation, spec, well-known labels, owner workload,
/// then the pod's own name.
pub fn service_name(pod: &Pod, sp: &SpanProfiling) -> String {
    if let Some(s) = pod.annotations().get(ANNOTATION_SERVICE_NAME).filter(|s| !s.trim().is_empty()) {
        return s.trim().to_owned();
    }
    if let Some(s) = &sp.spec.service_name {
        return s.clone();
    }
    let labels = pod.labels();
    for key in ["app.kubernetes.io/name", "app"] {
        if let Some(v) = labels.get(key).filter(|v| !v.is_empty()) {
            return v.clone();
        }
    }
    let owners = pod.owner_references();
    if let Some(owner) = owners.iter().find(|o| o.controller == Some(true)).or(owners.first()) {
        // A Deployment's pods are owned by a ReplicaSet named `<deployment>-<pod-template-hash>`.
        if owner.kind == "ReplicaSet"
            && let Some(hash) = labels.get("pod-template-hash")
            && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
        {
            return deployment.to_owned();
        }
        // A CronJob's Jobs are named `<cronjob>-<scheduled minute since the epoch>`.
        if owner.kind == "Job"
            && let Some((cronjob, minute)) = owner.name.rsplit_once('-')
            && minute.len() >= 8
            && minute.bytes().all(|b| b.is_ascii_digit())
            && !cronjob.is_empty()
        {
            return cronjob.to_owned();
        }
        return owner.name.clone();
    }
    if let Some(name) = pod.metadata.name.as_deref().filter(|n| !n.is_empty()) {
        return name.to_owned();
    }
    match pod.metadata.generate_name.as_deref().map(|g| g.trim_end_matches('-')) {
        Some(g) if !g.is_empty() => g.to_owned(),
        _ => "unknown".to_owned(),
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.to_owned()), ..Default::default() }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: field_path.to_owned(), api_version: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn context_volume() -> Volume {
    Volume {
        name: VOLUME_NAME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource { medium: Some("Memory".to_owned()), ..Default::default() }),
        ..Default::default()
    }
}

/// The sampler's view of the context volume: all of it.
fn context_mount() -> VolumeMount {
    VolumeMount { name: VOLUME_NAME.to_owned(), mount_path: CONTEXT_DIR.to_owned(), ..Default::default() }
}

/// An app container's view of the context volume: its own subdirectory, which tells the sampler
/// which container a process runs in (the kubelet creates it with the volume's mode).
fn app_context_mount(container: &str) -> VolumeMount {
    VolumeMount { sub_path: Some(container.to_owned()), ..context_mount() }
}

/// A mount where the ServiceAccount admission plugin would put the pod's API token: it skips
/// containers that already mount something there, and the sampler never talks to the API server.
/// The context volume, read-only, is the cheapest thing to mount (no extra volume).
fn token_blocker_mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME_NAME.to_owned(),
        mount_path: SERVICE_ACCOUNT_TOKEN_DIR.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The service name container `c`'s profiles get: its own literal SPANPROF_SERVICE_NAME if it
/// sets one, else `pod_service`; with a warning when it sets one the webhook cannot read.
fn container_service(c: &Container, pod_service: &str) -> (String, Option<String>) {
    match c.env.iter().flatten().find(|e| e.name == ENV_SERVICE_NAME) {
        Some(EnvVar { value: Some(v), value_from: None, .. }) if !v.trim().is_empty() => (v.trim().to_owned(), None),
        Some(EnvVar { value_from: Some(_), .. }) => (
            pod_service.to_owned(),
            Some(format!(
                "spanprof: container {} takes {ENV_SERVICE_NAME} from valueFrom, which the webhook cannot read; the \
                 sampler labels its profiles {pod_service:?}. Set a literal value or the {ANNOTATION_SERVICE_NAME} \
                 annotation so both agree",
                c.name
            )),
        ),
        _ => (pod_service.to_owned(), None),
    }
}

/// The first port from [`SAMPLER_METRICS_PORT`] up that no container of the pod declares (with
/// `hostNetwork`, ports of other pods on the node can still collide; the sampler then keeps
/// sampling without metrics).
fn sampler_metrics_port(spec: &PodSpec) -> i32 {
    let declared: Vec<i32> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .flat_map(|p| [Some(p.container_port), p.host_port])
        .flatten()
        .collect();
    (SAMPLER_METRICS_PORT..=65535).find(|p| !declared.contains(p)).unwrap_or(SAMPLER_METRICS_PORT)
}

/// `GET /healthz` on the sampler's metrics port: failing for a minute means its loop is stuck
/// (it fails after 30 s without progress).
fn liveness_probe(port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        failure_threshold: Some(6),
        ..Default::default()
    }
}

/// Adds `env` to the sampler unless the SpanProfiling's `sidecar.env` already set it.
fn add_env_unless_set(sampler: &mut Container, env: EnvVar) {
    let list = sampler.env.get_or_insert_with(Vec::new);
    if !list.iter().any(|e| e.name == env.name) {
        list.push(env);
    }
}

/// The security context a capability mode gives the sampler; `user` is who the app runs as.
pub fn security_context(mode: CapabilityMode, user: AppUser) -> SecurityContext {
    let caps = |add: &[&str]| Capabilities {
        add: (!add.is_empty()).then(|| add.iter().map(|s| (*s).to_owned()).collect()),
        drop: Some(vec!["ALL".to_owned()]),
    };
    match mode {
        // Added capabilities only become effective for root (Kubernetes sets no ambient
        // capabilities), so the sampler runs as UID 0 with nothing but these two.
        CapabilityMode::Perfmon => SecurityContext {
            capabilities: Some(caps(&["PERFMON", "SYS_PTRACE"])),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        },
        CapabilityMode::Privileged => SecurityContext {
            privileged: Some(true),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        },
        // Without capabilities the kernel lets the sampler read /proc/<pid>/root and perf-sample a
        // process only when both run as the same user and group (ptrace access rules), so it runs
        // as the app's user: the pod's or the selected containers' runAsUser/runAsGroup, else the
        // image's non-root user. runAsNonRoot plus a non-zero runAsUser meets `restricted`; the
        // seccomp profile is inherited from the pod on purpose: the runtimes' RuntimeDefault
        // blocks perf_event_open without CAP_PERFMON, so forcing it would disable the sampler,
        // while `baseline` allows leaving it unset.
        CapabilityMode::None => {
            let uid = user.uid.unwrap_or(SAMPLER_IMAGE_UID);
            SecurityContext {
                capabilities: Some(caps(&[])),
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_user: Some(uid),
                run_as_group: user.uid.and(user.gid),
                // A root app keeps root here too; claiming non-root would stop the kubelet from
                // starting the sampler, and a native sidecar that cannot start holds up the pod.
                run_as_non_root: (uid != 0).then_some(true),
                ..Default::default()
            }
        }
    }
}

/// The `spanprof-sampler` container.
pub fn sampler_container(
    sp: &SpanProfiling,
    defaults: &Defaults,
    server_url: &str,
    service: &str,
    user: AppUser,
) -> Container {
    let s = &sp.spec;
    let mut env = vec![
        plain_env(ENV_SERVER_URL, server_url),
        plain_env(ENV_SAMPLE_RATE_HZ, &s.sample_rate_hz.to_string()),
        plain_env(ENV_UPLOAD_INTERVAL, &s.upload_interval),
        plain_env(ENV_STACK_COPY_BYTES, &s.stack_copy_bytes.to_string()),
        plain_env(ENV_CONTEXT_DIR, CONTEXT_DIR),
        plain_env(ENV_SERVICE_NAME, service),
        field_env(ENV_POD_NAME, "metadata.name"),
        field_env(ENV_POD_NAMESPACE, "metadata.namespace"),
        field_env(ENV_NODE_NAME, "spec.nodeName"),
    ];
    for extra in &s.sidecar.env {
        match env.iter_mut().find(|e| e.name == extra.name) {
            Some(slot) => *slot = extra.clone(),
            None => env.push(extra.clone()),
        }
    }
    Container {
        name: SIDECAR_NAME.to_owned(),
        image: Some(s.sidecar.image.clone().unwrap_or_else(|| defaults.sidecar_image.clone())),
        image_pull_policy: Some(s.sidecar.image_pull_policy.as_str().to_owned()),
        env: Some(env),
        resources: Some(s.sidecar.resources.clone()),
        security_context: Some(
            s.sidecar.security_context.clone().unwrap_or_else(|| security_context(s.sidecar.capabilities, user)),
        ),
        volume_mounts: Some(vec![context_mount(), token_blocker_mount()]),
        restart_policy: s.sidecar.native.then(|| "Always".to_owned()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, Skip> {
    serde_json::to_value(v).map_err(|e| Skip::Internal(e.to_string()))
}

/// JSON patch operations, built with paths from tokens so keys like `spanprof.dev/injected`
/// are escaped (`~1`) correctly.
#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    fn add(&mut self, path: &[&str], value: Value) {
        self.0.push(PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(path.iter().copied()), value }));
    }

    /// Sets `key` in the map at `path`, creating the map when the pod has none.
    fn add_to_map(&mut self, path: &[&str], exists: bool, key: &str, value: Value) {
        if exists {
            let mut full = path.to_vec();
            full.push(key);
            self.add(&full, value);
        } else {
            self.add(path, json!({ key: value }));
        }
    }

    /// Appends to (or with `first`, prepends to) the list at `path`, creating it when absent.
    fn add_to_list(&mut self, path: &[&str], exists: bool, first: bool, value: Value) {
        if exists {
            let mut full = path.to_vec();
            full.push(if first { "0" } else { "-" });
            self.add(&full, value);
        } else {
            self.add(path, Value::Array(vec![value]));
        }
    }
}
