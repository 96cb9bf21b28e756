//! The `restricted` Pod Security Standard on the chart's pod specs — the operator's checker
//! (`spanprof_operator::pod_security`, the one the webhook uses), so the chart and the webhook
//! agree on the rules — plus this chart's own rules: read-only root filesystems, no sysctls and
//! no ephemeral containers.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use spanprof_operator::pod_security::{Level, pod_violations};

/// Every violation of the restricted profile (and of the chart's own rules) in `spec`.
pub fn violations(spec: &PodSpec) -> Vec<String> {
    let mut out: Vec<String> =
        pod_violations(&ObjectMeta::default(), spec, Level::Restricted).into_iter().map(|v| v.message).collect();
    let sysctls = spec.security_context.as_ref().and_then(|s| s.sysctls.as_ref());
    if sysctls.is_some_and(|s| !s.is_empty()) {
        out.push("pod: sysctls are not allowed by this chart".to_owned());
    }
    if spec.ephemeral_containers.as_ref().is_some_and(|e| !e.is_empty()) {
        out.push("ephemeral containers are not expected in a chart".to_owned());
    }
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        let read_only = c.security_context.as_ref().and_then(|s| s.read_only_root_filesystem);
        if read_only != Some(true) {
            out.push(format!("container {:?}: readOnlyRootFilesystem must be true (this chart's rule)", c.name));
        }
    }
    out
}
