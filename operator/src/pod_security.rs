//! The Pod Security Standards as the API server's Pod Security admission enforces them (the
//! "latest" policy version): pure checks of a pod spec, so the webhook can tell before
//! injecting whether its additions would get a pod rejected, and the chart tests can check the
//! chart's own pods with the same rules.
//!
//! Pod Security admission runs after mutating webhooks and rejects a pod that violates the level
//! its namespace enforces (label `pod-security.kubernetes.io/enforce`). The checks here mirror
//! the upstream ones (k8s.io/pod-security-admission/policy) field by field; each violation names
//! the upstream check and the lowest level that forbids it. Where Kubernetes versions differ, the
//! strictest reading is taken, so "no violations" holds on every version: the relaxations for
//! user-namespaced pods (`hostUsers: false`), which depend on the version and feature gates, are
//! not applied.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EphemeralContainer, Lifecycle, LifecycleHandler, PodSpec, Probe, SecurityContext, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The namespace label whose value Pod Security admission enforces.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Capabilities a container may add under `baseline` (the container runtimes' default set).
pub const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls `baseline` allows: namespaced ones that cannot affect other pods.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// SELinux types `baseline` allows (empty: the runtime's default).
const SELINUX_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// Volume types `restricted` allows: the core ones, and what PersistentVolumes provide.
const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The beta AppArmor annotation per container; still checked by Pod Security admission.
const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// A Pod Security Standard level. Ordered from least to most restrictive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// No restrictions: the Kubernetes default for namespaces without the label.
    #[default]
    Privileged,
    /// Prevents known privilege escalations.
    Baseline,
    /// Current pod hardening best practice.
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }

    /// The level a label value names; `None` for anything else.
    pub fn parse(value: &str) -> Option<Level> {
        match value {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    /// The level a namespace's enforce label value makes the API server apply: an invalid value
    /// is treated as `restricted`, as Pod Security admission does.
    pub fn from_label(value: &str) -> Level {
        Level::parse(value).unwrap_or(Level::Restricted)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::parse(s).ok_or_else(|| format!("{s:?} is not privileged, baseline or restricted"))
    }
}

/// The level a namespace's labels enforce; `None` when it has no enforce label (the cluster's
/// default applies).
pub fn enforced_level(labels: &BTreeMap<String, String>) -> Option<Level> {
    labels.get(ENFORCE_LABEL).map(|v| Level::from_label(v))
}

/// One Pod Security Standard violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The upstream Pod Security admission check, e.g. `capabilities_baseline`.
    pub check: &'static str,
    /// The lowest level that forbids it.
    pub level: Level,
    /// What is wrong and where, e.g. `container "a": adds capability SYS_ADMIN`.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every violation of `level` in a pod (its metadata for annotations, and its spec).
pub fn pod_violations(metadata: &ObjectMeta, spec: &PodSpec, level: Level) -> Vec<Violation> {
    let mut out = pod_level_violations(metadata, spec, level);
    for v in spec.volumes.iter().flatten() {
        out.extend(volume_violations(v, level));
    }
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        out.extend(container_violations(c, spec, level));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        out.extend(checked(ContainerView::from(c), spec, level));
    }
    out
}

/// Violations of `level` by the pod-wide fields alone: host namespaces, the pod security
/// context, sysctls and AppArmor annotations. Containers and volumes are not looked at.
pub fn pod_level_violations(metadata: &ObjectMeta, spec: &PodSpec, level: Level) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut add = |check, lvl, message: String| out.push(Violation { check, level: lvl, message });
    let hosts: Vec<&str> = [("hostNetwork", spec.host_network), ("hostPID", spec.host_pid), ("hostIPC", spec.host_ipc)]
        .into_iter()
        .filter(|(_, on)| *on == Some(true))
        .map(|(name, _)| name)
        .collect();
    if !hosts.is_empty() {
        add(
            "hostNamespaces",
            Level::Baseline,
            format!("pod: host namespaces are forbidden ({}=true)", hosts.join("=true, ")),
        );
    }
    for (key, value) in metadata.annotations.iter().flatten() {
        if key.starts_with(APPARMOR_ANNOTATION_PREFIX)
            && !(value.is_empty() || value == "runtime/default" || value.starts_with("localhost/"))
        {
            add(
                "appArmorProfile",
                Level::Baseline,
                format!("pod: annotation {key}={value:?} is a forbidden AppArmor profile"),
            );
        }
    }
    let sc = spec.security_context.clone().unwrap_or_default();
    if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        add("hostProcess", Level::Baseline, "pod: windowsOptions.hostProcess is forbidden".into());
    }
    if let Some(o) = &sc.se_linux_options
        && let Some(why) = bad_selinux(o)
    {
        add("seLinuxOptions", Level::Baseline, format!("pod: seLinuxOptions {why}"));
    }
    if sc.app_armor_profile.as_ref().is_some_and(|p| p.type_ == "Unconfined") {
        add("appArmorProfile", Level::Baseline, "pod: appArmorProfile Unconfined is forbidden".into());
    }
    let unsafe_sysctls: Vec<&str> =
        sc.sysctls.iter().flatten().map(|s| s.name.as_str()).filter(|n| !SAFE_SYSCTLS.contains(n)).collect();
    if !unsafe_sysctls.is_empty() {
        add("sysctls", Level::Baseline, format!("pod: forbidden sysctls {}", unsafe_sysctls.join(", ")));
    }
    match sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
        Some("Unconfined") => {
            add("seccompProfile_baseline", Level::Baseline, "pod: seccompProfile Unconfined is forbidden".into())
        }
        Some("RuntimeDefault" | "Localhost") | None => {}
        Some(t) => add(
            "seccompProfile_restricted",
            Level::Restricted,
            format!("pod: seccompProfile {t} (must be RuntimeDefault or Localhost)"),
        ),
    }
    if sc.run_as_non_root == Some(false) {
        add("runAsNonRoot", Level::Restricted, "pod: must not set runAsNonRoot=false".into());
    }
    if sc.run_as_user == Some(0) {
        add("runAsUser", Level::Restricted, "pod: must not set runAsUser=0".into());
    }
    out.retain(|v| applies(v, level));
    out
}

/// Violations of `level` by one volume.
pub fn volume_violations(volume: &Volume, level: Level) -> Vec<Violation> {
    let name = &volume.name;
    let mut out = Vec::new();
    if volume.host_path.is_some() {
        // Under restricted this is also a forbidden type; Pod Security admission reports it once.
        out.push(Violation {
            check: "hostPathVolumes",
            level: Level::Baseline,
            message: format!("volume {name:?}: hostPath volumes are forbidden"),
        });
    } else {
        // The set fields of the VolumeSource are its types; serialising is the one way to list
        // them without naming every type k8s-openapi knows.
        let value = serde_json::to_value(volume).unwrap_or_default();
        let types: Vec<&String> =
            value.as_object().map(|m| m.keys().filter(|k| *k != "name").collect()).unwrap_or_default();
        for t in types {
            if !RESTRICTED_VOLUME_TYPES.contains(&t.as_str()) {
                out.push(Violation {
                    check: "restrictedVolumes",
                    level: Level::Restricted,
                    message: format!("volume {name:?}: type {t} is forbidden"),
                });
            }
        }
    }
    out.retain(|v| applies(v, level));
    out
}

/// Violations of `level` by one (init) container of the pod `spec`. The pod-level security
/// context counts where Kubernetes lets containers inherit it (runAsNonRoot, seccompProfile), but
/// the pod's own violations are not reported here (see [`pod_level_violations`]).
pub fn container_violations(container: &Container, spec: &PodSpec, level: Level) -> Vec<Violation> {
    checked(ContainerView::from(container), spec, level)
}

/// The parts of a container the checks read, shared by containers and ephemeral containers.
struct ContainerView<'a> {
    name: &'a str,
    security_context: Option<&'a SecurityContext>,
    ports: &'a [ContainerPort],
    probes: [Option<&'a Probe>; 3],
    lifecycle: Option<&'a Lifecycle>,
}

impl<'a> From<&'a Container> for ContainerView<'a> {
    fn from(c: &'a Container) -> Self {
        ContainerView {
            name: &c.name,
            security_context: c.security_context.as_ref(),
            ports: c.ports.as_deref().unwrap_or_default(),
            probes: [c.liveness_probe.as_ref(), c.readiness_probe.as_ref(), c.startup_probe.as_ref()],
            lifecycle: c.lifecycle.as_ref(),
        }
    }
}

impl<'a> From<&'a EphemeralContainer> for ContainerView<'a> {
    fn from(c: &'a EphemeralContainer) -> Self {
        ContainerView {
            name: &c.name,
            security_context: c.security_context.as_ref(),
            ports: c.ports.as_deref().unwrap_or_default(),
            probes: [c.liveness_probe.as_ref(), c.readiness_probe.as_ref(), c.startup_probe.as_ref()],
            lifecycle: c.lifecycle.as_ref(),
        }
    }
}

fn checked(c: ContainerView<'_>, spec: &PodSpec, level: Level) -> Vec<Violation> {
    let pod = spec.security_context.clone().unwrap_or_default();
    let sc = c.security_context.cloned().unwrap_or_default();
    let subject = format!("container {:?}", c.name);
    let mut out = Vec::new();
    let mut add =
        |check, lvl, what: String| out.push(Violation { check, level: lvl, message: format!("{subject}: {what}") });

    // Baseline.
    if sc.privileged == Some(true) {
        add("privileged", Level::Baseline, "privileged is forbidden".into());
    }
    if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        add("hostProcess", Level::Baseline, "windowsOptions.hostProcess is forbidden".into());
    }
    let added: Vec<&String> = sc.capabilities.iter().flat_map(|c| c.add.iter().flatten()).collect();
    let beyond_baseline: Vec<&str> =
        added.iter().map(|s| s.as_str()).filter(|cap| !BASELINE_CAPABILITIES.contains(cap)).collect();
    if !beyond_baseline.is_empty() {
        add("capabilities_baseline", Level::Baseline, format!("adds capabilities {}", beyond_baseline.join(", ")));
    }
    let host_ports: Vec<String> =
        c.ports.iter().filter_map(|p| p.host_port.filter(|h| *h != 0)).map(|h| h.to_string()).collect();
    if !host_ports.is_empty() {
        add("hostPorts", Level::Baseline, format!("hostPort {} is forbidden", host_ports.join(", ")));
    }
    if let Some(o) = &sc.se_linux_options
        && let Some(why) = bad_selinux(o)
    {
        add("seLinuxOptions", Level::Baseline, format!("seLinuxOptions {why}"));
    }
    if sc.app_armor_profile.as_ref().is_some_and(|p| p.type_ == "Unconfined") {
        add("appArmorProfile", Level::Baseline, "appArmorProfile Unconfined is forbidden".into());
    }
    if let Some(m) = sc.proc_mount.as_deref().filter(|m| *m != "Default") {
        add("procMount", Level::Baseline, format!("procMount {m} is forbidden"));
    }
    let hosts: Vec<&str> = probe_hosts(&c).collect();
    if !hosts.is_empty() {
        add(
            "hostProbesAndHostLifecycle",
            Level::Baseline,
            format!("probe or lifecycle host {} is forbidden", hosts.join(", ")),
        );
    }
    let seccomp = sc.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    if seccomp == Some("Unconfined") {
        add("seccompProfile_baseline", Level::Baseline, "seccompProfile Unconfined is forbidden".into());
    }

    // Restricted.
    if sc.allow_privilege_escalation != Some(false) {
        add("allowPrivilegeEscalation", Level::Restricted, "must set allowPrivilegeEscalation=false".into());
    }
    if !sc.capabilities.iter().flat_map(|c| c.drop.iter().flatten()).any(|d| d == "ALL") {
        add(
            "capabilities_restricted",
            Level::Restricted,
            "must drop ALL capabilities (capabilities.drop: [ALL])".into(),
        );
    }
    let beyond_restricted: Vec<&str> = added
        .iter()
        .map(|s| s.as_str())
        .filter(|cap| *cap != "NET_BIND_SERVICE" && BASELINE_CAPABILITIES.contains(cap))
        .collect();
    if !beyond_restricted.is_empty() {
        add(
            "capabilities_restricted",
            Level::Restricted,
            format!("adds capabilities {}", beyond_restricted.join(", ")),
        );
    }
    match seccomp {
        Some("RuntimeDefault" | "Localhost" | "Unconfined") => {}
        Some(t) => add(
            "seccompProfile_restricted",
            Level::Restricted,
            format!("seccompProfile {t} (must be RuntimeDefault or Localhost)"),
        ),
        // A container without a profile is covered only by a valid pod-level one.
        None if !matches!(
            pod.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault" | "Localhost")
        ) =>
        {
            add(
                "seccompProfile_restricted",
                Level::Restricted,
                "pod or container must set seccompProfile RuntimeDefault or Localhost".into(),
            )
        }
        None => {}
    }
    match sc.run_as_non_root {
        Some(true) => {}
        Some(false) => add("runAsNonRoot", Level::Restricted, "must not set runAsNonRoot=false".into()),
        None if pod.run_as_non_root == Some(true) => {}
        None => add("runAsNonRoot", Level::Restricted, "pod or container must set runAsNonRoot=true".into()),
    }
    if sc.run_as_user == Some(0) {
        add("runAsUser", Level::Restricted, "must not set runAsUser=0".into());
    }
    out.retain(|v| applies(v, level));
    out
}

fn applies(v: &Violation, level: Level) -> bool {
    level != Level::Privileged && v.level <= level
}

/// Why SELinux options are forbidden, if they are.
fn bad_selinux(o: &k8s_openapi::api::core::v1::SELinuxOptions) -> Option<String> {
    let mut why = Vec::new();
    if let Some(t) = o.type_.as_deref().filter(|t| !SELINUX_TYPES.contains(t)) {
        why.push(format!("type {t}"));
    }
    if o.user.as_deref().is_some_and(|u| !u.is_empty()) {
        why.push("user may not be set".to_owned());
    }
    if o.role.as_deref().is_some_and(|r| !r.is_empty()) {
        why.push("role may not be set".to_owned());
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// The `host` fields set in a container's probes and lifecycle handlers.
fn probe_hosts<'a>(c: &'a ContainerView<'a>) -> impl Iterator<Item = &'a str> + 'a {
    let probes = c.probes.iter().flatten().flat_map(|p| {
        [p.http_get.as_ref().and_then(|h| h.host.as_deref()), p.tcp_socket.as_ref().and_then(|t| t.host.as_deref())]
    });
    let handlers: Vec<&LifecycleHandler> =
        c.lifecycle.iter().flat_map(|l| [l.post_start.as_ref(), l.pre_stop.as_ref()]).flatten().collect();
    let lifecycle = handlers.into_iter().flat_map(|h| {
        [h.http_get.as_ref().and_then(|g| g.host.as_deref()), h.tcp_socket.as_ref().and_then(|t| t.host.as_deref())]
    });
    probes.chain(lifecycle).flatten().filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    /// A container and pod that pass restricted; tests break one field at a time.
    fn hardened() -> serde_json::Value {
        json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "tmp", "emptyDir": {}}],
            "containers": [{
                "name": "app",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
            }]
        })
    }

    fn checks(spec_json: serde_json::Value, level: Level) -> Vec<&'static str> {
        pod_violations(&ObjectMeta::default(), &spec(spec_json), level).iter().map(|v| v.check).collect()
    }

    #[test]
    fn levels_parse_and_unknown_label_values_are_restricted() {
        assert_eq!(Level::parse("baseline"), Some(Level::Baseline));
        assert_eq!(Level::parse("Baseline"), None);
        assert_eq!(Level::from_label("privileged"), Level::Privileged);
        assert_eq!(Level::from_label("restricted"), Level::Restricted);
        assert_eq!(Level::from_label("strict"), Level::Restricted);
        assert_eq!(Level::from_label(""), Level::Restricted);
        assert!("nope".parse::<Level>().is_err());
        assert_eq!("baseline".parse::<Level>(), Ok(Level::Baseline));
        assert!(Level::Privileged < Level::Baseline && Level::Baseline < Level::Restricted);
        let labels = BTreeMap::from([(ENFORCE_LABEL.to_owned(), "baseline".to_owned())]);
        assert_eq!(enforced_level(&labels), Some(Level::Baseline));
        assert_eq!(enforced_level(&BTreeMap::new()), None);
    }

    #[test]
    fn a_hardened_pod_passes_every_level() {
        for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
            assert_eq!(checks(hardened(), level), Vec::<&str>::new(), "{level}");
        }
    }

    #[test]
    fn privileged_forbids_nothing() {
        let everything = json!({
            "hostPID": true, "hostNetwork": true,
            "securityContext": {"runAsUser": 0, "sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}}]
        });
        assert!(checks(everything, Level::Privileged).is_empty());
    }

    #[test]
    fn baseline_rules() {
        let case = |patch: serde_json::Value| {
            let mut s = hardened();
            json_patch_merge(&mut s, patch);
            checks(s, Level::Baseline)
        };
        assert_eq!(case(json!({"hostPID": true})), ["hostNamespaces"]);
        assert_eq!(case(json!({"hostIPC": true})), ["hostNamespaces"]);
        assert_eq!(case(json!({"hostNetwork": true})), ["hostNamespaces"]);
        assert_eq!(case(json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]})), ["hostPathVolumes"]);
        let c = |sc: serde_json::Value| json!({"containers": [{"name": "app", "securityContext": sc}]});
        assert_eq!(case(c(json!({"privileged": true}))), ["privileged"]);
        assert_eq!(case(c(json!({"capabilities": {"add": ["PERFMON", "SYS_PTRACE"]}}))), ["capabilities_baseline"]);
        assert!(case(c(json!({"capabilities": {"add": ["CHOWN", "KILL", "NET_BIND_SERVICE"]}}))).is_empty());
        assert_eq!(case(c(json!({"seccompProfile": {"type": "Unconfined"}}))), ["seccompProfile_baseline"]);
        assert_eq!(case(c(json!({"procMount": "Unmasked"}))), ["procMount"]);
        assert_eq!(case(c(json!({"seLinuxOptions": {"type": "spc_t"}}))), ["seLinuxOptions"]);
        assert!(case(c(json!({"seLinuxOptions": {"type": "container_t", "level": "s0:c1"}}))).is_empty());
        assert_eq!(case(c(json!({"appArmorProfile": {"type": "Unconfined"}}))), ["appArmorProfile"]);
        assert_eq!(case(c(json!({"windowsOptions": {"hostProcess": true}}))), ["hostProcess"]);
        assert_eq!(
            case(json!({"containers": [{"name": "app", "ports": [{"containerPort": 80, "hostPort": 8080}]}]})),
            ["hostPorts"]
        );
        assert_eq!(
            case(
                json!({"containers": [{"name": "app", "livenessProbe": {"httpGet": {"port": 80, "host": "10.0.0.1"}}}]})
            ),
            ["hostProbesAndHostLifecycle"]
        );
        assert_eq!(
            case(json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}})),
            ["sysctls"]
        );
        assert!(
            case(json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}}))
                .is_empty()
        );
        assert_eq!(
            case(json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}})),
            ["seccompProfile_baseline"]
        );
        // Restricted-only rules do not count under baseline.
        assert!(case(json!({"securityContext": {"runAsNonRoot": false, "runAsUser": 0}})).is_empty());
        assert!(case(c(json!({}))).is_empty());
        let mut meta = ObjectMeta {
            annotations: Some([(format!("{APPARMOR_ANNOTATION_PREFIX}app"), "unconfined".to_owned())].into()),
            ..Default::default()
        };
        let v = pod_violations(&meta, &spec(hardened()), Level::Baseline);
        assert_eq!(v.iter().map(|v| v.check).collect::<Vec<_>>(), ["appArmorProfile"]);
        meta.annotations = Some([(format!("{APPARMOR_ANNOTATION_PREFIX}app"), "localhost/mine".to_owned())].into());
        assert!(pod_violations(&meta, &spec(hardened()), Level::Baseline).is_empty());
    }

    #[test]
    fn restricted_rules() {
        let case = |patch: serde_json::Value| {
            let mut s = hardened();
            json_patch_merge(&mut s, patch);
            checks(s, Level::Restricted)
        };
        let c = |sc: serde_json::Value| json!({"containers": [{"name": "app", "securityContext": sc}]});
        let base = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        let with = |extra: serde_json::Value| {
            let mut sc = base.clone();
            json_patch_merge(&mut sc, extra);
            c(sc)
        };
        assert_eq!(case(c(json!({"capabilities": {"drop": ["ALL"]}}))), ["allowPrivilegeEscalation"]);
        assert_eq!(case(c(json!({"allowPrivilegeEscalation": false}))), ["capabilities_restricted"]);
        assert_eq!(case(with(json!({"capabilities": {"add": ["CHOWN"]}}))), ["capabilities_restricted"]);
        assert!(case(with(json!({"capabilities": {"add": ["NET_BIND_SERVICE"]}}))).is_empty());
        // A capability beyond baseline is reported once, as the baseline violation.
        assert_eq!(case(with(json!({"capabilities": {"add": ["SYS_ADMIN"]}}))), ["capabilities_baseline"]);
        assert_eq!(case(with(json!({"runAsNonRoot": false}))), ["runAsNonRoot"]);
        assert_eq!(case(with(json!({"runAsUser": 0}))), ["runAsUser"]);
        assert_eq!(case(json!({"securityContext": {"runAsNonRoot": null}})), ["runAsNonRoot"]);
        assert!(case(json!({"securityContext": {"runAsNonRoot": null}, "containers": [{"name": "app", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": true}}]})).is_empty());
        assert_eq!(case(json!({"securityContext": {"seccompProfile": null}})), ["seccompProfile_restricted"]);
        assert_eq!(
            case(json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}})),
            ["seccompProfile_baseline", "seccompProfile_restricted"],
            "the pod's own violation, and its container is not covered"
        );
        assert!(case(json!({"securityContext": {"seccompProfile": null}, "containers": [{"name": "app", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}}]})).is_empty());
        assert_eq!(case(json!({"securityContext": {"runAsUser": 0}})), ["runAsUser"]);
        assert_eq!(
            case(json!({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]})),
            ["restrictedVolumes"]
        );
        assert_eq!(case(json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]})), ["hostPathVolumes"]);
        for ok in [
            json!({"configMap": {"name": "c"}}),
            json!({"secret": {"secretName": "s"}}),
            json!({"emptyDir": {"medium": "Memory"}}),
        ] {
            let mut v = ok;
            v["name"] = json!("v");
            assert!(case(json!({"volumes": [v]})).is_empty());
        }
        // User-namespaced pods are held to the strict reading (older API servers do not relax it).
        assert_eq!(case(json!({"hostUsers": false, "securityContext": {"runAsUser": 0}})), ["runAsUser"]);
    }

    #[test]
    fn container_checks_see_the_pod_level_context_but_not_the_pods_own_violations() {
        let s = spec(json!({
            "hostPID": true,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app"}]
        }));
        let sampler: Container = serde_json::from_value(json!({
            "name": "s", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
        }))
        .unwrap();
        assert!(container_violations(&sampler, &s, Level::Restricted).is_empty());
        let s = spec(json!({"containers": [{"name": "app"}]}));
        let v: Vec<_> = container_violations(&sampler, &s, Level::Restricted).into_iter().map(|v| v.message).collect();
        assert_eq!(
            v,
            [
                "container \"s\": pod or container must set seccompProfile RuntimeDefault or Localhost",
                "container \"s\": pod or container must set runAsNonRoot=true"
            ]
        );
    }

    /// RFC 7386 merge of `patch` into `doc` (null removes), to derive cases from one fixture.
    fn json_patch_merge(doc: &mut serde_json::Value, patch: serde_json::Value) {
        json_patch::merge(doc, &patch);
    }
}
