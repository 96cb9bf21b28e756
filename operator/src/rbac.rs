//! The one list of Kubernetes permissions the operator needs, rendered as the ClusterRole and
//! Role the chart ships. Every API call in this crate must be covered here.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// One RBAC rule.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub api_groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Restricts the rule to these objects (empty: all).
    pub resource_names: &'static [&'static str],
}

/// Name of the ClusterRole and Role.
pub const ROLE_NAME: &str = "spanprof-operator";
/// Default name of the MutatingWebhookConfiguration the chart installs (`--webhook-config-name`).
pub const DEFAULT_WEBHOOK_CONFIG: &str = "spanprof-operator";

/// Cluster-wide permissions.
pub const CLUSTER_RULES: &[Rule] = &[
    // The controller's watch and the webhook's cache of SpanProfilings.
    Rule {
        api_groups: &["spanprof.dev"],
        resources: &["spanprofilings"],
        verbs: &["list", "watch"],
        resource_names: &[],
    },
    // Status by server-side apply.
    Rule {
        api_groups: &["spanprof.dev"],
        resources: &["spanprofilings/status"],
        verbs: &["patch"],
        resource_names: &[],
    },
    // Metadata watch of injected pods (label selector), for the injected count; `get` of a bare
    // pod's metadata after admission, for the uid its Events need to show in `kubectl describe`.
    Rule { api_groups: &[""], resources: &["pods"], verbs: &["get", "list", "watch"], resource_names: &[] },
    // Metadata of a pod's ReplicaSet or Job, to put Events on the Deployment or CronJob users
    // look at.
    Rule { api_groups: &["apps"], resources: &["replicasets"], verbs: &["get"], resource_names: &[] },
    Rule { api_groups: &["batch"], resources: &["jobs"], verbs: &["get"], resource_names: &[] },
    // Metadata watch of namespaces: the webhook reads their Pod Security labels.
    Rule { api_groups: &[""], resources: &["namespaces"], verbs: &["list", "watch"], resource_names: &[] },
    // Events on SpanProfilings and on pods' owners; `patch` updates a repeated event's series.
    Rule { api_groups: &["events.k8s.io"], resources: &["events"], verbs: &["create", "patch"], resource_names: &[] },
    // Filling in the caBundle (server-side apply of that one field), and reading it back: the
    // status says whether the API server can call the webhook.
    Rule {
        api_groups: &["admissionregistration.k8s.io"],
        resources: &["mutatingwebhookconfigurations"],
        verbs: &["get", "patch"],
        resource_names: &[DEFAULT_WEBHOOK_CONFIG],
    },
];

/// Permissions in the operator's own namespace.
pub const NAMESPACE_RULES: &[Rule] = &[
    // The webhook TLS Secret, written by compare-and-swap.
    Rule { api_groups: &[""], resources: &["secrets"], verbs: &["get", "create", "update"], resource_names: &[] },
    // The leader election Lease, written by compare-and-swap.
    Rule {
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        verbs: &["get", "create", "update"],
        resource_names: &[],
    },
    // Whether the webhook Service has ready endpoints (the SpanProfiling's WebhookServing).
    Rule {
        api_groups: &["discovery.k8s.io"],
        resources: &["endpointslices"],
        verbs: &["list", "watch"],
        resource_names: &[],
    },
];

fn policy_rules(rules: &[Rule]) -> Vec<PolicyRule> {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    rules
        .iter()
        .map(|r| PolicyRule {
            api_groups: Some(strings(r.api_groups)),
            resources: Some(strings(r.resources)),
            verbs: strings(r.verbs),
            resource_names: (!r.resource_names.is_empty()).then(|| strings(r.resource_names)),
            non_resource_urls: None,
        })
        .collect()
}

fn labels() -> std::collections::BTreeMap<String, String> {
    [("app.kubernetes.io/name".to_owned(), "spanprof-operator".to_owned())].into()
}

/// The ClusterRole.
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta { name: Some(ROLE_NAME.to_owned()), labels: Some(labels()), ..Default::default() },
        rules: Some(policy_rules(CLUSTER_RULES)),
        aggregation_rule: None,
    }
}

/// The Role in the operator's namespace (the chart sets `metadata.namespace`).
pub fn role() -> Role {
    Role {
        metadata: ObjectMeta { name: Some(ROLE_NAME.to_owned()), labels: Some(labels()), ..Default::default() },
        rules: Some(policy_rules(NAMESPACE_RULES)),
    }
}

/// Where the generated manifests are committed, relative to the repository root.
pub const CLUSTER_ROLE_PATH: &str = "operator/rbac/clusterrole.yaml";
pub const ROLE_PATH: &str = "operator/rbac/role.yaml";

const HEADER: &str = "# Generated from operator/src/rbac.rs by `cargo run -p spanprof-operator --bin spanprof-operator-gen -- <what>`; do not edit.\n";

/// The ClusterRole as committed YAML.
pub fn cluster_role_yaml() -> Result<String, serde_yaml::Error> {
    Ok(format!("{HEADER}{}", serde_yaml::to_string(&cluster_role())?))
}

/// The Role as committed YAML.
pub fn role_yaml() -> Result<String, serde_yaml::Error> {
    Ok(format!("{HEADER}{}", serde_yaml::to_string(&role())?))
}
