//! The API server's validation rules for the container the webhook adds, so an injection never
//! makes a pod invalid: a pod the API server would reject is worse than a pod without the sampler
//! (a Deployment gets `FailedCreate` and no pods at all).
//!
//! The rules follow `k8s.io/kubernetes/pkg/apis/core/validation` for the fields a SpanProfiling
//! controls: the image, the environment, the resources and the security context. The CRD schema
//! rejects the same things at `kubectl apply` time (see `crd.rs`); this check also covers objects
//! stored before the schema said so, and the operator's own `--sidecar-image`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The `fieldRef` paths the API server accepts in a container's environment (labels and
/// annotations take a key in brackets).
const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// What the API server would reject in `c`, one message per problem (empty: valid).
pub fn container_problems(c: &Container) -> Vec<String> {
    let mut out = Vec::new();
    match c.image.as_deref() {
        None | Some("") => out.push("image is empty".to_owned()),
        Some(image) if image.trim() != image => {
            out.push(format!("image {image:?} has leading or trailing whitespace"));
        }
        Some(_) => {}
    }
    for e in c.env.iter().flatten() {
        out.extend(env_problem(e));
    }
    if let Some(resources) = &c.resources {
        out.extend(resource_problems(resources.requests.as_ref(), resources.limits.as_ref()));
    }
    if let Some(sc) = &c.security_context
        && sc.allow_privilege_escalation == Some(false)
    {
        if sc.privileged == Some(true) {
            out.push("securityContext: privileged: true with allowPrivilegeEscalation: false".to_owned());
        }
        let adds_sys_admin = sc.capabilities.iter().flat_map(|c| c.add.iter().flatten()).any(|c| {
            let c = c.strip_prefix("CAP_").unwrap_or(c);
            c == "SYS_ADMIN"
        });
        if adds_sys_admin {
            out.push("securityContext: capability SYS_ADMIN with allowPrivilegeEscalation: false".to_owned());
        }
    }
    out
}

/// Whether `name` is a valid environment variable name for every supported Kubernetes version
/// (newer ones accept more, behind `RelaxedEnvironmentVariableValidation`).
pub fn is_env_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'-' || b == b'.' || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// The regular expression of [`is_env_var_name`], for the CRD schema.
pub const ENV_VAR_NAME_PATTERN: &str = "^[-._a-zA-Z][-._a-zA-Z0-9]*$";

fn env_problem(e: &EnvVar) -> Option<String> {
    let name = &e.name;
    if !is_env_var_name(name) {
        return Some(format!(
            "env name {name:?} must consist of letters, digits, '_', '-' or '.' and not start with a digit"
        ));
    }
    let source = e.value_from.as_ref()?;
    if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
        return Some(format!("env {name}: value and valueFrom are both set"));
    }
    let sources = [
        source.field_ref.is_some(),
        source.resource_field_ref.is_some(),
        source.config_map_key_ref.is_some(),
        source.secret_key_ref.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Some(format!("env {name}: valueFrom must name exactly one source"));
    }
    if let Some(field) = &source.field_ref {
        let path = field.field_path.as_str();
        let keyed = ["metadata.labels['", "metadata.annotations['"]
            .iter()
            .any(|p| path.strip_prefix(p).is_some_and(|rest| rest.len() > 2 && rest.ends_with("']")));
        if !ENV_FIELD_PATHS.contains(&path) && !keyed {
            return Some(format!("env {name}: fieldRef {path:?} is not a supported field"));
        }
    }
    None
}

fn resource_problems(
    requests: Option<&BTreeMap<String, Quantity>>,
    limits: Option<&BTreeMap<String, Quantity>>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut parsed = |kind: &str, map: Option<&BTreeMap<String, Quantity>>| -> BTreeMap<String, Nanos> {
        let mut values = BTreeMap::new();
        for (resource, q) in map.into_iter().flatten() {
            match parse_quantity(&q.0) {
                Some(v) if v.0 < 0 => out.push(format!("resources.{kind}.{resource} {:?} is negative", q.0)),
                Some(v) => {
                    values.insert(resource.clone(), v);
                }
                None => out.push(format!("resources.{kind}.{resource} {:?} is not a quantity", q.0)),
            }
        }
        values
    };
    let requests = parsed("requests", requests);
    let limits = parsed("limits", limits);
    for (resource, request) in &requests {
        if let Some(limit) = limits.get(resource)
            && request.cmp(limit) == Ordering::Greater
        {
            out.push(format!("resources: the {resource} request is above its limit"));
        }
    }
    out
}

/// A quantity in units of 10⁻⁹, rounded up as Kubernetes rounds (saturating far beyond any
/// real resource amount).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Nanos(pub i128);

/// Parses a Kubernetes quantity (`<sign><digits>[.<digits>]<suffix>`, where the suffix is a
/// binary `Ki`…`Ei`, a decimal `n u m k M G T P E`, or an exponent `e<n>`/`E<n>`), exactly.
pub fn parse_quantity(text: &str) -> Option<Nanos> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    // An exponent's own sign and digits belong to the suffix.
    let (number, suffix) = text.split_at(split);
    let (negative, digits) = match number.as_bytes().first()? {
        b'-' => (true, &number[1..]),
        b'+' => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let valid_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !valid_digits(whole) || !valid_digits(fraction) {
        return None;
    }
    // value = mantissa × 10^exp10 × 2^exp2, with the mantissa an integer.
    let mut exp10: i32 = -i32::try_from(fraction.len()).ok()?;
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            exp2 = 10 * (1 + "KMGTPE".find(suffix.chars().next()?)? as u32);
        }
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        s if s.starts_with(['e', 'E']) => {
            let e = &s[1..];
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if unsigned.is_empty() || !valid_digits(unsigned) {
                return None;
            }
            exp10 = exp10.checked_add(e.parse::<i32>().ok()?)?;
        }
        _ => return None,
    }
    let mut mantissa: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa.saturating_mul(10).saturating_add(i128::from(b - b'0'));
    }
    mantissa = mantissa.saturating_mul(1i128 << exp2.min(100));
    // To nano units: multiply by 10^(exp10 + 9), rounding a remainder up.
    let shift = exp10.saturating_add(9);
    let mut value = mantissa;
    if shift >= 0 {
        for _ in 0..shift.min(60) {
            value = value.saturating_mul(10);
        }
    } else {
        for _ in 0..(-shift).min(60) {
            let rounded_up = value % 10 != 0;
            value = value / 10 + i128::from(rounded_up);
        }
    }
    Some(Nanos(if negative { -value } else { value }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Capabilities, EnvVarSource, ObjectFieldSelector, ResourceRequirements, SecretKeySelector, SecurityContext,
    };

    fn q(s: &str) -> i128 {
        parse_quantity(s).unwrap_or_else(|| panic!("{s} should parse")).0
    }

    #[test]
    fn quantities_parse_exactly_in_every_notation() {
        assert_eq!(q("1"), 1_000_000_000);
        assert_eq!(q("100m"), 100_000_000);
        assert_eq!(q("0.1"), q("100m"));
        assert_eq!(q(".5"), q("500m"));
        assert_eq!(q("1Ki"), 1024 * 1_000_000_000);
        assert_eq!(q("64Mi"), 64 * (1 << 20) * 1_000_000_000);
        assert_eq!(q("1k"), q("1000"));
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("1E-3"), q("1m"));
        assert_eq!(q("+2"), q("2"));
        assert_eq!(q("-1"), -1_000_000_000);
        assert_eq!(q("1n"), 1);
        assert_eq!(q("0.1n"), 1, "below a nano rounds up, as Kubernetes does");
        assert!(q("1Ei") > q("1E"));
        assert!(q("999999999999Ei") > 0, "huge values saturate instead of overflowing");
        for bad in
            ["0.5e-2147483648", "", "m", "1.2.3", "1x", "1mi", "1KiB", "1e", "1e+", "--1", "1 ", " 1", "1e3.5", "Mi"]
        {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
    }

    fn sampler() -> Container {
        Container {
            name: "spanprof-sampler".into(),
            image: Some("ghcr.io/spanprof/spanprof-sidecar:0.1.0".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_sampler_has_no_problems() {
        let mut c = sampler();
        c.env = Some(vec![
            EnvVar { name: "SPANPROF_X".into(), value: Some("1".into()), ..Default::default() },
            EnvVar {
                name: "POD".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels['app']".into(),
                        api_version: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        c.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), Quantity("0.5".into()))])),
            limits: Some(BTreeMap::from([("cpu".into(), Quantity("500m".into()))])),
            ..Default::default()
        });
        assert_eq!(container_problems(&c), Vec::<String>::new());
    }

    #[test]
    fn what_the_api_server_rejects_is_named() {
        let mut c = sampler();
        c.image = Some(" ".into());
        c.env = Some(vec![
            EnvVar { name: "BAD=NAME".into(), ..Default::default() },
            EnvVar { name: "1ST".into(), ..Default::default() },
            EnvVar {
                name: "BOTH".into(),
                value: Some("x".into()),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector { name: "s".into(), key: "k".into(), optional: None }),
                    ..Default::default()
                }),
            },
            EnvVar { name: "NONE".into(), value_from: Some(EnvVarSource::default()), ..Default::default() },
            EnvVar {
                name: "FIELD".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector { field_path: "spec.containers".into(), api_version: None }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        c.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("2".into())),
                ("memory".into(), Quantity("lots".into())),
            ])),
            limits: Some(BTreeMap::from([("cpu".into(), Quantity("1500m".into()))])),
            ..Default::default()
        });
        c.security_context = Some(SecurityContext {
            privileged: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { add: Some(vec!["CAP_SYS_ADMIN".into()]), drop: None }),
            ..Default::default()
        });
        let problems = container_problems(&c);
        for needle in [
            "image \" \" has leading or trailing whitespace",
            "env name \"BAD=NAME\"",
            "env name \"1ST\"",
            "env BOTH: value and valueFrom",
            "env NONE: valueFrom must name exactly one source",
            "env FIELD: fieldRef \"spec.containers\"",
            "resources.requests.memory \"lots\" is not a quantity",
            "the cpu request is above its limit",
            "privileged: true with allowPrivilegeEscalation: false",
            "SYS_ADMIN with allowPrivilegeEscalation: false",
        ] {
            assert!(problems.iter().any(|p| p.contains(needle)), "{needle:?} missing from {problems:#?}");
        }
        assert_eq!(problems.len(), 10, "{problems:#?}");
    }

    #[test]
    fn env_names_follow_the_portable_rule() {
        for ok in ["A", "_x", "a.b-c", "-x", ".x", "X1"] {
            assert!(is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A=B", "A B", "é"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }
}
