//! Which container of the pod a process runs in, and the service name its profiles carry, from
//! the context volume's layout (see `spanprof_channel::pod`): no privilege beyond the ptrace-read
//! access sampling needs anyway, so it works for a non-root app whose environment the sampler may
//! not read.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::procfs;

/// The container whose directory of the context volume is what the process with root `root`
/// (its `/proc/<pid>/root`) sees at `mount_path`: the subdirectory of `volume` (the sampler's
/// view of the volume) with the same device and inode. The webhook mounts the volume at the same
/// path in the sampler and the apps, so production calls pass the context directory twice.
/// `None` for a process that sees no such directory (not configured by the webhook, or a flat
/// layout).
pub fn container_of(volume: &Path, root: &Path, mount_path: &Path) -> Option<String> {
    let seen = std::fs::metadata(procfs::resolve_in_root(root, mount_path)?).ok()?;
    for entry in std::fs::read_dir(volume).ok()?.flatten() {
        // Real directories only: a link would name something else than what the kubelet made.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(m) = entry.metadata() else { continue };
        if m.dev() == seen.dev() && m.ino() == seen.ino() {
            return entry.file_name().into_string().ok();
        }
    }
    None
}

/// The service name of `container`'s profiles in `service_names` (`SPANPROF_SERVICE_NAMES`).
pub fn service_of<'a>(service_names: &'a [(String, String)], container: Option<&str>) -> Option<&'a str> {
    let container = container?;
    service_names.iter().find(|(c, _)| c == container).map(|(_, s)| s.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A volume with two container directories, seen from a process root through an absolute
    /// `/var/run` → `/run` link as Debian images have. (Relative links stand in for the kubelet's
    /// bind mounts, so the volume lives inside the root here.)
    #[test]
    fn a_process_is_in_the_container_whose_directory_it_sees() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let volume = root.join("volume");
        for c in ["api", "worker"] {
            std::fs::create_dir_all(volume.join(c)).unwrap();
        }
        std::fs::write(volume.join("1234.spanctx"), b"").unwrap();
        for d in ["var", "run", "opt", "srv/spanprof"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../volume/api", root.join("run/spanprof")).unwrap();
        std::os::unix::fs::symlink("../volume/worker", root.join("opt/spanprof")).unwrap();
        let api_mount = Path::new("/var/run/spanprof");
        assert_eq!(
            procfs::resolve_in_root(root, api_mount),
            Some(volume.join("api")),
            "the absolute link stays inside the root"
        );
        assert_eq!(container_of(&volume, root, api_mount).as_deref(), Some("api"));
        assert_eq!(container_of(&volume, root, Path::new("/opt/spanprof")).as_deref(), Some("worker"));
        assert_eq!(container_of(&volume, root, Path::new("/srv/spanprof")), None, "another directory");
        assert_eq!(container_of(&volume, &root.join("missing"), api_mount), None);
    }

    #[test]
    fn resolving_inside_a_root_never_leaves_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("usr/lib/up")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("usr/lib/abs")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(procfs::resolve_in_root(&root, Path::new("/usr/lib/up/x")), Some(root.join("x")));
        assert_eq!(procfs::resolve_in_root(&root, Path::new("/usr/lib/abs/passwd")), Some(root.join("etc/passwd")));
        assert_eq!(procfs::resolve_in_root(&root, Path::new("/../../x")), Some(root.join("x")));
        assert_eq!(procfs::resolve_in_root(&root, Path::new("/loop/x")), None, "link loops end");
    }

    #[test]
    fn service_names_are_looked_up_by_container() {
        let names = vec![("api".to_owned(), "shop-api".to_owned())];
        assert_eq!(service_of(&names, Some("api")), Some("shop-api"));
        assert_eq!(service_of(&names, Some("worker")), None);
        assert_eq!(service_of(&names, None), None);
    }
}
