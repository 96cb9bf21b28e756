//! Reading `/proc`: processes, threads, start times and memory maps. Parsing is pure.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub exec: bool,
    /// File offset of `start`.
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// File path, `[vdso]` and the like, or empty.
    pub path: String,
}

/// Parses `/proc/<pid>/maps`; malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines().filter_map(parse_map_line).collect()
}

fn parse_map_line(line: &str) -> Option<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let (range, perms, offset, dev, inode) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    let path = it.next().unwrap_or("").trim_start().to_owned();
    let (start, end) = range.split_once('-')?;
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        exec: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_owned(),
        inode: inode.parse().ok()?,
        path,
    })
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot) and field 2 (comm): the
/// channel's parser, which stamps the same start time into every channel file.
pub use spanprof_channel::layout::parse_stat;

/// A process as seen in `/proc`: PID plus start time identifies it across PID reuse.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProcId {
    pub pid: u32,
    pub start_time: u64,
}

pub fn proc_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// Start time and comm of `pid`, `None` when it is gone.
pub fn stat(pid: u32) -> Option<(u64, String)> {
    parse_stat(&read_small(&proc_dir(pid).join("stat"))?)
}

/// Reads a small `/proc` file in one `read` when it fits 1 KiB (`/proc/<pid>/stat` does): the
/// kernel generates such a file whole on the first read, and `read_to_string` would spend five
/// more system calls growing its buffer from 32 bytes, on every discovery pass.
pub fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 1024];
    let n = f.read(&mut buf).ok()?;
    let mut bytes = buf[..n].to_vec();
    if n == buf.len() {
        f.read_to_end(&mut bytes).ok()?;
    }
    // A comm may hold any bytes; the start time after it is what matters.
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Numeric entries of a `/proc` directory (`/proc` or `/proc/<pid>/task`).
pub fn numeric_entries(dir: &Path) -> Result<Vec<u32>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
}

pub fn maps(pid: u32) -> Result<Vec<MapEntry>> {
    let path = proc_dir(pid).join("maps");
    Ok(parse_maps(&std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?))
}

/// Whether `pid` is still runc's init, the container runtime's own code between clone and the
/// exec of the container's command (`runc:[2:INIT]`, run from a memfd copy of runc): not the app
/// yet, so not to attach to, nor to remember as a non-target.
pub fn is_runtime_init(pid: u32, comm: &str) -> bool {
    comm.starts_with("runc:[")
        || std::fs::read_link(proc_dir(pid).join("exe"))
            .is_ok_and(|exe| exe.to_string_lossy().starts_with("/memfd:runc"))
}

/// `path` (absolute) resolved inside `root` as a process whose root directory it is would
/// resolve it: symbolic links are followed, absolute ones from `root`, and `..` never climbs
/// above `root`. The kernel resolves an absolute link met under `/proc/<pid>/root` from the
/// *caller's* root, which would leave the target's filesystem (`/var/run` → `/run` in most
/// images). Returns the path under `root`, or `None` past 40 links.
pub fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = std::fs::read_link(&candidate).ok()?;
                if target.is_absolute() {
                    resolved.clear();
                }
                pending.extend(target.components().rev().filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_owned()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                }));
            }
            _ => resolved.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Some(out)
}

/// A user-space process (kernel threads have no memory map).
pub fn is_user_process(pid: u32) -> bool {
    std::fs::metadata(proc_dir(pid).join("exe")).is_ok()
        && std::fs::read(proc_dir(pid).join("cmdline")).is_ok_and(|c| !c.is_empty())
}

/// Reads `/proc/self/mem` at `[start, end)` (the sidecar's own vDSO, identical in every process).
pub fn read_own_memory(start: u64, end: u64) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let path = "/proc/self/mem";
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    f.seek(SeekFrom::Start(start)).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0; usize::try_from(end.saturating_sub(start)).unwrap_or(0)];
    f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// The environment `pid` was started with (`/proc/<pid>/environ`: NUL-separated `NAME=value`).
/// The file is mode 0400 of the process's user: a sampler of another user needs
/// CAP_DAC_READ_SEARCH (or to be privileged) besides ptrace access, so callers must not depend
/// on it.
pub fn environ(pid: u32) -> Option<Vec<u8>> {
    std::fs::read(proc_dir(pid).join("environ")).ok()
}

/// The value of `name` in an `environ` block; the first definition wins, as with `getenv`.
pub fn env_var<'a>(environ: &'a [u8], name: &str) -> Option<&'a str> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        std::str::from_utf8(value).ok()
    })
}

/// The cgroup v2 path in a `/proc/<pid>/cgroup` text (the `0::` line), relative to the reader's
/// cgroup namespace: `/../…` when the process is outside it.
pub fn parse_cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::trim)
}

/// Where a `/proc/<pid>/mountinfo` text has a cgroup v2 file system mounted at its cgroup
/// namespace's root (the mount's root field `/`): the mount point.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<&str> {
    mountinfo.lines().find_map(|l| {
        let (fields, fs) = l.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = fields.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        // Paths with spaces are escaped (`\040`): not a mount point we would find anyway.
        (root == "/" && !point.contains('\\')).then_some(point)
    })
}

/// PIDs in a `cgroup.procs` text (as the reader's PID namespace numbers them; 0: outside it).
pub fn parse_pid_list(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The cgroup v1 path of the `perf_event` controller in a `/proc/<pid>/cgroup` text (a line
/// `N:…perf_event…:/path`): present when `perf_event` is bound to a v1 hierarchy, and then
/// cgroup events go through that hierarchy's directories, not the v2 ones.
pub fn parse_cgroup_v1_perf_event_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "perf_event").then_some(path.trim())
    })
}

/// The mounts of a v1 `perf_event` hierarchy in a `/proc/<pid>/mountinfo` text: each mount's
/// root (the cgroup it shows, `/` for the whole hierarchy; a container's own cgroup where the
/// runtime bind-mounts it, as Kubernetes nodes on cgroup v1 do) and its mount point.
pub fn parse_perf_event_v1_mounts(mountinfo: &str) -> Vec<(&str, &str)> {
    mountinfo.lines().filter_map(perf_event_v1_mount).collect()
}

/// One mountinfo line's v1 `perf_event` mount: (root, mount point).
fn perf_event_v1_mount(l: &str) -> Option<(&str, &str)> {
    let (fields, fs) = l.split_once(" - ")?;
    let mut fs = fs.split_whitespace();
    if fs.next()? != "cgroup" {
        return None;
    }
    let options = fs.nth(1)?;
    if !options.split(',').any(|o| o == "perf_event") {
        return None;
    }
    let mut f = fields.split_whitespace();
    let root = f.nth(3)?;
    let point = f.next()?;
    // Paths with spaces are escaped (`\040`): not a cgroup or mount point we would find.
    (!root.contains('\\') && !point.contains('\\')).then_some((root, point))
}

/// Where the cgroup at `path` is under a mount of its hierarchy whose root is `root` and mount
/// point `point` (as the mount's owner sees it): `None` when the mount does not show it.
fn under_mount(root: &str, point: &str, path: &str) -> Option<PathBuf> {
    let rest = if root == "/" { path } else { path.strip_prefix(root)? };
    if !(rest.is_empty() || rest.starts_with('/')) || rest.split('/').any(|c| c == "..") {
        return None;
    }
    Some(Path::new(point).join(rest.trim_start_matches('/')))
}

/// The cgroup hierarchy perf events of a cgroup go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hierarchy {
    /// The unified hierarchy (`perf_event` is implicit there).
    V2,
    /// A v1 hierarchy with the `perf_event` controller.
    V1,
}

impl Hierarchy {
    pub fn as_str(self) -> &'static str {
        match self {
            Hierarchy::V2 => "cgroup_v2",
            Hierarchy::V1 => "cgroup_v1",
        }
    }
}

/// The cgroup a process is in, as perf events reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupDir {
    pub path: PathBuf,
    pub hierarchy: Hierarchy,
    /// The processes in it (as the sidecar's PID namespace numbers them; 0: outside it).
    pub members: Vec<u32>,
}

/// The directory of the cgroup `pid` is in for perf events, and the processes in it, when the
/// sidecar can reach it: in the v1 `perf_event` hierarchy when the controller is bound to one
/// (the process's `/proc/<pid>/cgroup` names it), else in the v2 hierarchy. Each through the
/// sidecar's own mount of the hierarchy (same cgroup namespace as the target, e.g. on a host), or
/// through the target's mount as the target sees it (`/proc/<pid>/root/sys/fs/cgroup…`: a
/// container's own cgroup, bind-mounted by the runtime on v1 or the root of its cgroup namespace
/// on v2). Checked by finding `pid` in its `cgroup.procs`.
pub fn cgroup_of(pid: u32) -> Option<CgroupDir> {
    let text = read_small(&proc_dir(pid).join("cgroup"))?;
    let own_mounts = || std::fs::read_to_string("/proc/self/mountinfo").ok();
    let target_mounts = || std::fs::read_to_string(proc_dir(pid).join("mountinfo")).ok();
    let in_target = |point: PathBuf| proc_dir(pid).join("root").join(point.strip_prefix("/").unwrap_or(&point));
    let (hierarchy, candidates): (Hierarchy, Vec<PathBuf>) = match parse_cgroup_v1_perf_event_path(&text) {
        Some(path) => {
            let under = |mounts: Option<String>| -> Vec<PathBuf> {
                let mounts = mounts.unwrap_or_default();
                let found = parse_perf_event_v1_mounts(&mounts);
                found.into_iter().filter_map(|(root, point)| under_mount(root, point, path)).collect()
            };
            let own = under(own_mounts());
            let target = under(target_mounts()).into_iter().map(in_target);
            (Hierarchy::V1, own.into_iter().chain(target).collect())
        }
        None => {
            let path = parse_cgroup_v2_path(&text)?;
            let own = own_mounts().and_then(|m| under_mount("/", parse_cgroup2_mount(&m)?, path));
            let target = target_mounts().and_then(|m| Some(in_target(PathBuf::from(parse_cgroup2_mount(&m)?))));
            (Hierarchy::V2, [own, target].into_iter().flatten().collect())
        }
    };
    candidates.into_iter().find_map(|path| {
        let members = parse_pid_list(&std::fs::read_to_string(path.join("cgroup.procs")).ok()?);
        members.contains(&pid).then_some(CgroupDir { path, hierarchy, members })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroup_paths_and_mounts() {
        let cgroup = "12:pids:/kubepods/x\n1:cpu:/\n0::/kubepods.slice/pod1/cri-containerd-abc.scope\n";
        assert_eq!(parse_cgroup_v2_path(cgroup), Some("/kubepods.slice/pod1/cri-containerd-abc.scope"));
        assert_eq!(parse_cgroup_v2_path("0::/../sibling\n"), Some("/../sibling"));
        assert_eq!(parse_cgroup_v2_path("4:memory:/a\n"), None);
        let mountinfo = "\
24 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
40 30 0:28 /pod1/ctr /sys/fs/cgroup/bound rw - cgroup2 cgroup2 rw
41 30 0:28 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
        // A bind of a subtree (root field not `/`) does not show the namespace's paths.
        assert_eq!(parse_cgroup2_mount(mountinfo), Some("/sys/fs/cgroup/unified"));
        assert_eq!(parse_cgroup2_mount("24 1 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
        assert_eq!(parse_pid_list("12\n0\n\n345\n"), [12, 0, 345]);
    }

    /// A Kubernetes node on cgroup v1: the container runtime bind-mounts each container's own
    /// cgroup at `/sys/fs/cgroup/<controller>` (the mount's root is that cgroup).
    #[test]
    fn reads_v1_perf_event_paths_and_mounts() {
        let ctr = "/kubepods/burstable/pod0d3f/4b1c9e";
        let cgroup = format!("12:pids:{ctr}\n6:cpu,cpuacct:{ctr}\n3:perf_event:{ctr}\n1:name=systemd:{ctr}\n0::/\n");
        assert_eq!(parse_cgroup_v1_perf_event_path(&cgroup), Some(ctr));
        assert_eq!(parse_cgroup_v1_perf_event_path("2:cpu,perf_event,cpuacct:/a\n"), Some("/a"));
        assert_eq!(parse_cgroup_v1_perf_event_path("0::/kubepods.slice/x\n"), None, "v2 only");
        assert_eq!(parse_cgroup_v1_perf_event_path("3:perf_event_x:/a\n"), None);
        let in_container = format!(
            "\
700 690 0:60 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs rw,mode=755
705 700 0:31 {ctr} /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
708 700 0:34 {ctr} /sys/fs/cgroup/perf_event ro,nosuid,nodev,noexec,relatime master:16 - cgroup cgroup rw,perf_event
"
        );
        let [(root, point)] = parse_perf_event_v1_mounts(&in_container)[..] else { panic!("one mount") };
        assert_eq!((root, point), (ctr, "/sys/fs/cgroup/perf_event"));
        assert_eq!(under_mount(root, point, ctr), Some(PathBuf::from("/sys/fs/cgroup/perf_event")));
        assert_eq!(
            under_mount(root, point, &format!("{ctr}/child")),
            Some(PathBuf::from("/sys/fs/cgroup/perf_event/child"))
        );
        assert_eq!(under_mount(root, point, "/kubepods/burstable/pod0d3f/other"), None, "a sibling is not shown");
        assert_eq!(under_mount(root, point, &format!("{ctr}x")), None, "a prefix is not a parent");
        let on_host = "35 25 0:34 / /sys/fs/cgroup/perf_event rw,nosuid - cgroup cgroup rw,perf_event\n";
        let [(root, point)] = parse_perf_event_v1_mounts(on_host)[..] else { panic!("one mount") };
        assert_eq!(under_mount(root, point, ctr), Some(PathBuf::from(format!("/sys/fs/cgroup/perf_event{ctr}"))));
        assert_eq!(parse_perf_event_v1_mounts("31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), []);
        assert_eq!(parse_perf_event_v1_mounts("41 30 0:28 / /u rw - cgroup2 cgroup2 rw,perf_event\n"), []);
        assert_eq!(parse_perf_event_v1_mounts(&format!("{on_host}{in_container}")).len(), 2);
    }

    #[test]
    fn our_own_cgroup_is_found_with_us_in_it() {
        let own = cgroup_of(std::process::id()).expect("the test's own cgroup is reachable");
        assert!(own.members.contains(&std::process::id()), "{own:?}");
    }

    #[test]
    fn finds_variables_in_an_environ_block() {
        let env = b"PATH=/bin\0SPANPROF_CONTAINER_NAME=api\0SPANPROF_CONTAINER_NAME_X=no\0EMPTY=\0SPANPROF_CONTAINER_NAME=later\0";
        assert_eq!(env_var(env, "SPANPROF_CONTAINER_NAME"), Some("api"));
        assert_eq!(env_var(env, "EMPTY"), Some(""));
        assert_eq!(env_var(env, "SPANPROF_CONTAINER"), None);
        assert_eq!(env_var(env, "PATH"), Some("/bin"));
        assert_eq!(env_var(b"", "PATH"), None);
        assert_eq!(env_var(b"PATH=\xff\0", "PATH"), None);
        // Our own environment, read back through /proc.
        let own = environ(std::process::id()).unwrap();
        let path = std::env::var("PATH").unwrap();
        assert_eq!(env_var(&own, "PATH"), Some(path.as_str()));
    }

    #[test]
    fn small_reads_match_whole_reads() {
        let own = proc_dir(std::process::id());
        let stat = read_small(&own.join("stat")).unwrap();
        assert_eq!(
            parse_stat(&stat).unwrap(),
            parse_stat(&std::fs::read_to_string(own.join("stat")).unwrap()).unwrap()
        );
        // Longer than the first read: the rest is read too.
        let maps = read_small(&own.join("maps")).unwrap();
        assert!(maps.len() > 1024, "{}", maps.len());
        assert_eq!(parse_maps(&maps).len(), maps.lines().count());
        assert!(read_small(Path::new("/proc/0/stat")).is_none());
    }

    #[test]
    fn parses_maps_lines() {
        let text = "55d0c0a00000-55d0c0a5b000 r--p 00000000 fd:01 1234   /usr/bin/demo app\n\
55d0c0a5b000-55d0c0c00000 r-xp 0005b000 fd:01 1234   /usr/bin/demo app\n\
7ffd1b9f0000-7ffd1b9f2000 r-xp 00000000 00:00 0                          [vdso]\n\
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n\
garbage\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[1],
            MapEntry {
                start: 0x55d0c0a5b000,
                end: 0x55d0c0c00000,
                exec: true,
                offset: 0x5b000,
                dev: "fd:01".into(),
                inode: 1234,
                path: "/usr/bin/demo app".into()
            }
        );
        assert!(!m[0].exec);
        assert_eq!(m[2].path, "[vdso]");
        assert_eq!(m[3].path, "");
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 200";
        assert_eq!(parse_stat(stat), Some((987654, "a) b (c)".into())));
        assert_eq!(parse_stat("12 (x) S 1"), None);
        let own = super::stat(std::process::id()).unwrap();
        assert!(own.0 > 0);
    }

    #[test]
    fn the_runtimes_init_is_not_the_app_yet() {
        let me = std::process::id();
        assert!(is_runtime_init(me, "runc:[2:INIT]"));
        assert!(is_runtime_init(me, "runc:[1:CHILD]"));
        assert!(!is_runtime_init(me, "spanprof-demo"), "a process that has exec'd its command");
    }
}
