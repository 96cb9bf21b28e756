//! The fixed names of `design.md` that the webhook, the controller and the chart agree on.

/// API group of the CRD.
pub const GROUP: &str = "spanprof.dev";
/// Pod opt-in annotation: `"true"`, `"<name>"`, `"<namespace>/<name>"` or `"false"`.
pub const ANNOTATION_INJECT: &str = "spanprof.dev/inject";
/// Comma list of the app containers to configure (default: all).
pub const ANNOTATION_CONTAINER_NAMES: &str = "spanprof.dev/container-names";
/// Overrides the service name of the pod's profiles.
pub const ANNOTATION_SERVICE_NAME: &str = "spanprof.dev/service-name";
/// Written by the webhook: `"<namespace>/<name>"` of the SpanProfiling used.
pub const ANNOTATION_INJECTED: &str = "spanprof.dev/injected";
/// Label written next to [`ANNOTATION_INJECTED`] so the controller can watch injected pods with a
/// server-side label selector (annotations cannot be selected on).
pub const LABEL_INJECTED: &str = "spanprof.dev/injected";
/// The injected sampler container.
pub const SIDECAR_NAME: &str = "spanprof-sampler";
/// The shared memory volume carrying the span-context channel.
pub const VOLUME_NAME: &str = "spanprof-context";
/// Where [`VOLUME_NAME`] is mounted, in the sampler and in the app containers.
pub const CONTEXT_DIR: &str = "/var/run/spanprof";

pub const ENV_CONTEXT_DIR: &str = "SPANPROF_CONTEXT_DIR";
pub const ENV_SERVICE_NAME: &str = "SPANPROF_SERVICE_NAME";
pub const ENV_PROFILE_URL: &str = "SPANPROF_PROFILE_URL";
/// Set in each configured app container to its own name; the sampler labels that container's
/// profiles with it (`container` series label).
pub const ENV_CONTAINER_NAME: &str = "SPANPROF_CONTAINER_NAME";
pub const ENV_SERVER_URL: &str = "SPANPROF_SERVER_URL";
pub const ENV_SAMPLE_RATE_HZ: &str = "SPANPROF_SAMPLE_RATE_HZ";
pub const ENV_UPLOAD_INTERVAL: &str = "SPANPROF_UPLOAD_INTERVAL";
/// Not in design.md's table: the sampler's user stack copy size (issue 4: "configurable").
pub const ENV_STACK_COPY_BYTES: &str = "SPANPROF_STACK_COPY_BYTES";
/// The sampler's metrics and probes address; the webhook picks a port no container of the pod
/// declares.
pub const ENV_SIDECAR_LISTEN: &str = "SPANPROF_SIDECAR_LISTEN";
/// The sampler's default metrics port, the first the webhook tries.
pub const SAMPLER_METRICS_PORT: i32 = 4041;
/// Where the kubelet mounts a ServiceAccount token; the sampler gets a mount there so none is added.
pub const SERVICE_ACCOUNT_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
pub const ENV_POD_NAME: &str = "POD_NAME";
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const ENV_NODE_NAME: &str = "NODE_NAME";

/// The Lease in the operator's namespace whose holder is the leader (status and Events).
pub const LEASE_NAME: &str = "spanprof-operator";
/// Field manager of every server-side apply and the reporting controller of Events.
pub const MANAGER: &str = "spanprof-operator";
/// Name of our webhook inside the MutatingWebhookConfiguration (the chart uses the same).
pub const WEBHOOK_NAME: &str = "inject.spanprof.dev";
/// Path the webhook serves.
pub const WEBHOOK_PATH: &str = "/mutate-pods";
