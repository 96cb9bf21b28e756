//! How one sampler serves every container of a pod: where each container's channel files sit in
//! the shared volume, and which service name each container's profiles carry. The webhook writes
//! this configuration and the sampler reads it; both call this module.
//!
//! # Volume layout
//!
//! The context volume is mounted whole in the sampler at its context directory, and in each app
//! container at the same path with `subPath: <container name>`. An app therefore writes
//! `<dir>/<pid>.spanctx` in its own view, which the sampler sees as
//! `<dir>/<container>/<pid>.spanctx`; and a process belongs to the container whose subdirectory
//! is the very directory (same device and inode) the process sees at `<dir>`, which the sampler
//! can check through `/proc/<pid>/root` with nothing more than ptrace-read access (a process's
//! environment, mode 0400, is not readable across users without more privileges).
//!
//! # Service names
//!
//! [`env::SERVICE_NAMES`] holds `container=service` pairs separated by commas. Container names are
//! DNS labels (no `=` or `,`); a service name may contain `=` but not `,`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment the webhook gives the app containers and the sampler, spelled once for the
/// operator that writes it and the SDK and sampler that read it (the sampler's flags take the
/// same names through clap's `env`).
pub mod env {
    /// Apps and sampler: the directory of the span-context channel (the shared volume).
    pub const CONTEXT_DIR: &str = "SPANPROF_CONTEXT_DIR";
    /// Apps: profile URL template containing `{profile_id}` (the SDK's span attribute).
    pub const PROFILE_URL: &str = "SPANPROF_PROFILE_URL";
    /// Apps (their own, read by the sampler from their environment) and sampler (its default).
    pub const SERVICE_NAME: &str = "SPANPROF_SERVICE_NAME";
    /// Apps: each configured container's own name (the `container` series label).
    pub const CONTAINER_NAME: &str = "SPANPROF_CONTAINER_NAME";
    /// Sampler: each container's service name, `container=service,...` (see the module docs).
    pub const SERVICE_NAMES: &str = "SPANPROF_SERVICE_NAMES";
    /// Sampler: where profiles are pushed.
    pub const SERVER_URL: &str = "SPANPROF_SERVER_URL";
    pub const SAMPLE_RATE_HZ: &str = "SPANPROF_SAMPLE_RATE_HZ";
    pub const UPLOAD_INTERVAL: &str = "SPANPROF_UPLOAD_INTERVAL";
    /// Sampler: bytes of user stack copied with each sample.
    pub const STACK_COPY_BYTES: &str = "SPANPROF_STACK_COPY_BYTES";
    /// Sampler: its metrics and probes address.
    pub const SIDECAR_LISTEN: &str = "SPANPROF_SIDECAR_LISTEN";
    /// Sampler: how many CPUs the sampled containers may use together (the sum of their CPU
    /// limits, a decimal such as `2.5`), which sizes its ring buffers. Unset: no limit.
    pub const APP_CPUS: &str = "SPANPROF_APP_CPUS";
}

/// The directory, in the sampler's view of the context volume, where `container` writes.
pub fn container_dir(context_dir: &Path, container: &str) -> PathBuf {
    context_dir.join(container)
}

/// `container=service,...` for [`env::SERVICE_NAMES`]. Fails on a container name that is not a
/// DNS label or a service name that is empty or contains a comma.
pub fn format_service_names<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<String> {
    let mut out = Vec::new();
    for (container, service) in pairs {
        check_pair(container, service)?;
        out.push(format!("{container}={service}"));
    }
    Ok(out.join(","))
}

/// Parses [`env::SERVICE_NAMES`]: empty means no pairs; whitespace around names is ignored.
pub fn parse_service_names(text: &str) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((container, service)) = item.split_once('=') else {
            return Err(Error::ServiceNames(format!("{item:?} is not container=service")));
        };
        let (container, service) = (container.trim(), service.trim());
        check_pair(container, service)?;
        if out.iter().any(|(c, _)| c == container) {
            return Err(Error::ServiceNames(format!("container {container:?} is named twice")));
        }
        out.push((container.to_owned(), service.to_owned()));
    }
    Ok(out)
}

fn check_pair(container: &str, service: &str) -> Result<()> {
    if !is_dns_label(container) {
        return Err(Error::ServiceNames(format!("{container:?} is not a container name (a DNS label)")));
    }
    if service.trim().is_empty() || service.contains(',') {
        return Err(Error::ServiceNames(format!(
            "service name {service:?} of container {container} is empty or contains a comma"
        )));
    }
    Ok(())
}

/// An RFC 1123 label, what container names are.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_round_trip() {
        let text = format_service_names([("api", "shop-api"), ("worker", "jobs=v2")]).unwrap();
        assert_eq!(text, "api=shop-api,worker=jobs=v2");
        let parsed = parse_service_names(&text).unwrap();
        assert_eq!(parsed, [("api".to_owned(), "shop-api".to_owned()), ("worker".to_owned(), "jobs=v2".to_owned())]);
        assert_eq!(parse_service_names("").unwrap(), []);
        assert_eq!(parse_service_names(" api = a , ").unwrap(), [("api".to_owned(), "a".to_owned())]);
    }

    #[test]
    fn bad_service_names_are_refused_with_the_offending_part() {
        for (text, needle) in [
            ("api", "\"api\" is not container=service"),
            ("API=x", "not a container name"),
            ("api=", "empty"),
            ("api=a,api=b", "named twice"),
        ] {
            let e = parse_service_names(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert!(format_service_names([("api", "a,b")]).is_err());
    }

    #[test]
    fn a_container_writes_into_its_own_subdirectory() {
        assert_eq!(container_dir(Path::new("/var/run/spanprof"), "api"), Path::new("/var/run/spanprof/api"));
    }
}
