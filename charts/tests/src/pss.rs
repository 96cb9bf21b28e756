//! The `restricted` Pod Security Standard (Kubernetes "latest" version of the policy), checked on a
//! pod spec, plus this chart's own rule that root filesystems are read-only.

use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};

const ALLOWED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Every violation of the restricted profile (and of read-only root filesystems) in `spec`.
pub fn violations(spec: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    let pod = spec.security_context.clone().unwrap_or_default();
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        out.push("host namespaces (hostNetwork/hostPID/hostIPC) are forbidden".to_owned());
    }
    if pod.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        out.push("hostProcess is forbidden".to_owned());
    }
    if pod.run_as_user == Some(0) {
        out.push("pod runAsUser 0".to_owned());
    }
    if pod.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        out.push("sysctls are not allowed by this chart".to_owned());
    }
    if let Some(t) = pod
        .se_linux_options
        .as_ref()
        .and_then(|o| o.type_.as_deref())
        && ![
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ]
        .contains(&t)
    {
        out.push(format!("pod seLinuxOptions.type {t}"));
    }
    if pod
        .app_armor_profile
        .as_ref()
        .is_some_and(|p| p.type_ == "Unconfined")
    {
        out.push("pod AppArmor Unconfined".to_owned());
    }
    let pod_seccomp = pod.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    if let Some(t) = pod_seccomp
        && t != "RuntimeDefault"
        && t != "Localhost"
    {
        out.push(format!("pod seccompProfile {t}"));
    }
    for volume in spec.volumes.iter().flatten() {
        let value = serde_json::to_value(volume).unwrap_or_default();
        let kinds: Vec<&String> = value
            .as_object()
            .map(|m| m.keys().filter(|k| *k != "name").collect())
            .unwrap_or_default();
        for kind in kinds {
            if !ALLOWED_VOLUMES.contains(&kind.as_str()) {
                out.push(format!("volume {} has forbidden type {kind}", volume.name));
            }
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        out.push("ephemeral containers are not expected in a chart".to_owned());
    }
    for c in containers {
        container(c, pod.run_as_non_root, pod_seccomp.is_some(), &mut out);
    }
    out
}

fn container(c: &Container, pod_non_root: Option<bool>, pod_seccomp: bool, out: &mut Vec<String>) {
    let name = &c.name;
    let sc: SecurityContext = c.security_context.clone().unwrap_or_default();
    if sc.privileged == Some(true) {
        out.push(format!("container {name}: privileged"));
    }
    if sc.allow_privilege_escalation != Some(false) {
        out.push(format!(
            "container {name}: allowPrivilegeEscalation must be false"
        ));
    }
    match sc.run_as_non_root.or(pod_non_root) {
        Some(true) => {}
        _ => out.push(format!(
            "container {name}: runAsNonRoot must be true (pod or container)"
        )),
    }
    if sc.run_as_user == Some(0) {
        out.push(format!("container {name}: runAsUser 0"));
    }
    match sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
        Some("RuntimeDefault" | "Localhost") => {}
        None if pod_seccomp => {}
        Some(t) => out.push(format!("container {name}: seccompProfile {t}")),
        None => out.push(format!(
            "container {name}: seccompProfile must be RuntimeDefault or Localhost"
        )),
    }
    let caps = sc.capabilities.clone().unwrap_or_default();
    if !caps.drop.iter().flatten().any(|d| d == "ALL") {
        out.push(format!("container {name}: capabilities must drop ALL"));
    }
    for add in caps.add.iter().flatten() {
        if add != "NET_BIND_SERVICE" {
            out.push(format!("container {name}: adds capability {add}"));
        }
    }
    if sc.proc_mount.as_deref().is_some_and(|p| p != "Default") {
        out.push(format!("container {name}: procMount"));
    }
    if sc
        .app_armor_profile
        .as_ref()
        .is_some_and(|p| p.type_ == "Unconfined")
    {
        out.push(format!("container {name}: AppArmor Unconfined"));
    }
    for port in c.ports.iter().flatten() {
        if port.host_port.is_some_and(|p| p != 0) {
            out.push(format!(
                "container {name}: hostPort {}",
                port.container_port
            ));
        }
    }
    if sc.read_only_root_filesystem != Some(true) {
        out.push(format!(
            "container {name}: readOnlyRootFilesystem must be true (this chart's rule)"
        ));
    }
}
