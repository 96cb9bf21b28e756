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

// The environment shared with the SDK and the sampler has its home in `spanprof_channel::pod::env`.
pub use spanprof_channel::pod::env::{
    APP_CPUS as ENV_APP_CPUS, CONTAINER_NAME as ENV_CONTAINER_NAME, CONTEXT_DIR as ENV_CONTEXT_DIR,
    PROFILE_URL as ENV_PROFILE_URL, SAMPLE_RATE_HZ as ENV_SAMPLE_RATE_HZ, SERVER_URL as ENV_SERVER_URL,
    SERVICE_NAME as ENV_SERVICE_NAME, SERVICE_NAMES as ENV_SERVICE_NAMES, SIDECAR_LISTEN as ENV_SIDECAR_LISTEN,
    STACK_COPY_BYTES as ENV_STACK_COPY_BYTES, UPLOAD_INTERVAL as ENV_UPLOAD_INTERVAL,
};
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
