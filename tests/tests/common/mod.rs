//! Process harness shared by the end-to-end tests and the sidecar benchmark: starts the real
//! server, sampler and demo launchers on free ports and reads their HTTP endpoints.
// Each user (a test file, the bench) needs a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM (graceful: the sidecar uploads what it has) and wait, bounded.
    pub fn terminate(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Waits until `url` answers 2xx; `what` names the process in the panic message.
pub fn wait_ready(url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http().get(url).send().map(|r| r.status().is_success()).ok() != Some(true) {
        assert!(Instant::now() < deadline, "{what} never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn start_server(port: u16, data: &Path) -> Proc {
    let p = Proc(
        Command::new(env!("CARGO_BIN_EXE_e2e-server")).arg(format!("127.0.0.1:{port}")).arg(data).spawn().unwrap(),
    );
    wait_ready(&format!("http://127.0.0.1:{port}/readyz"), "server");
    p
}

/// The sampler pushing to the server on `server_port`; `vars` are further `E2E_*` settings of
/// the launcher. Returns the process and its metrics port.
pub fn start_sidecar(server_port: u16, ctx: Option<&Path>, pid: Option<u32>, vars: &[(&str, &str)]) -> (Proc, u16) {
    start_sidecar_under(&[], server_port, ctx, pid, vars)
}

/// `program` run through `wrapper` (a command that execs its arguments, e.g. `prlimit`), or
/// directly when `wrapper` is empty.
pub fn command_under(wrapper: &[&str], program: &str) -> Command {
    match wrapper.split_first() {
        Some((first, args)) => {
            let mut c = Command::new(first);
            c.args(args).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// [`start_sidecar`] run through `wrapper` (a command that execs its arguments, e.g. `prlimit`).
pub fn start_sidecar_under(
    wrapper: &[&str],
    server_port: u16,
    ctx: Option<&Path>,
    pid: Option<u32>,
    vars: &[(&str, &str)],
) -> (Proc, u16) {
    let metrics = free_port();
    let mut cmd = command_under(wrapper, env!("CARGO_BIN_EXE_e2e-sidecar"));
    cmd.env("E2E_SERVER_URL", format!("http://127.0.0.1:{server_port}"))
        .env("E2E_CONTEXT_DIR", ctx.map(Path::as_os_str).unwrap_or_default())
        .env("E2E_PID", pid.map(|p| p.to_string()).unwrap_or_default())
        .env("E2E_LISTEN", format!("127.0.0.1:{metrics}"));
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let p = Proc(cmd.spawn().unwrap());
    wait_ready(&format!("http://127.0.0.1:{metrics}/readyz"), "sidecar (perf_event_open permitted?)");
    (p, metrics)
}

/// Sum of every series of the metrics on `port` whose line starts with `name`.
pub fn metric(port: u16, name: &str) -> u64 {
    let text = http().get(format!("http://127.0.0.1:{port}/metrics")).send().unwrap().text().unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

pub fn parse_folded(text: &str) -> Vec<(String, u64)> {
    text.lines().filter_map(|l| l.rsplit_once(' ')).map(|(s, n)| (s.to_owned(), n.parse().unwrap_or(0))).collect()
}

/// The samples of `service` outside spans over the last hour, as folded stacks.
pub fn process_folded(server: u16, service: &str) -> Vec<(String, u64)> {
    let r = http()
        .get(format!("http://127.0.0.1:{server}/api/v1/services/{service}/profile?format=folded&from=now-1h&until=now&spans=outside"))
        .send()
        .unwrap();
    if !r.status().is_success() {
        return Vec::new();
    }
    parse_folded(&r.text().unwrap())
}

/// A fresh cgroup v2 directory, as a container runtime makes one per container: processes moved
/// into it are moved back to the hierarchy's root, and it is removed, when this is dropped.
pub struct Cgroup {
    root: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Cgroup {
    /// A new cgroup in the v2 hierarchy. Panics when none is mounted (the tests that need one say
    /// so).
    pub fn new(name: &str) -> Cgroup {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = spanprof_sidecar::procfs::parse_cgroup2_mount(&mounts)
            .expect("a cgroup v2 hierarchy mounted (cgroup-scoped sampling is tested in one)");
        Cgroup::in_hierarchy(Path::new(root), name)
    }

    /// A new cgroup under the hierarchy mounted at `root`.
    pub fn in_hierarchy(root: &Path, name: &str) -> Cgroup {
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        Cgroup { root: root.to_owned(), dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves process `pid` (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// Moves `pid` back to the hierarchy's root.
    pub fn remove(&self, pid: u32) {
        let _ = std::fs::write(self.root.join("cgroup.procs"), pid.to_string());
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The v1 `perf_event` hierarchy of a cgroup v1 node, made on this machine: the controller bound
/// to a v1 hierarchy mounted at a temporary directory, while this lives. On drop its cgroups are
/// removed and it is unmounted, so `perf_event` goes back to the unified hierarchy that the other
/// tests sample through (waited for).
pub struct PerfEventV1 {
    mount: tempfile::TempDir,
    mounted: bool,
    /// `perf_event` was in no v1 hierarchy before (hierarchy 0 in `/proc/cgroups`).
    was_unified: bool,
}

/// The hierarchy `perf_event` is bound to (`/proc/cgroups`; 0: the unified one).
pub fn perf_event_hierarchy() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/cgroups").ok()?;
    text.lines().find_map(|l| l.strip_prefix("perf_event\t")?.split('\t').next()?.parse().ok())
}

impl PerfEventV1 {
    pub fn new() -> PerfEventV1 {
        let was_unified = perf_event_hierarchy() == Some(0);
        let mut v1 = PerfEventV1 { mount: tempfile::tempdir().unwrap(), mounted: false, was_unified };
        assert!(v1.try_mount(), "mounting a v1 perf_event hierarchy (needs root)");
        v1
    }

    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// A new cgroup in it (drop it before the hierarchy).
    pub fn cgroup(&self, name: &str) -> Cgroup {
        Cgroup::in_hierarchy(self.path(), name)
    }

    fn try_mount(&mut self) -> bool {
        let mounted = Command::new("mount")
            .args(["-t", "cgroup", "-o", "perf_event", "spanprof-e2e"])
            .arg(self.mount.path())
            .status()
            .is_ok_and(|s| s.success());
        self.mounted |= mounted;
        mounted
    }

    /// The host sees the hierarchy again (mounting it again finds the same one).
    pub fn mount_on_host(&mut self) {
        if !self.mounted {
            assert!(self.try_mount(), "mounting the v1 perf_event hierarchy again");
        }
    }

    /// The host stops seeing the hierarchy: only a process's own mount of it is left.
    pub fn unmount_from_host(&mut self) {
        assert!(Command::new("umount").arg(self.mount.path()).status().unwrap().success());
        self.mounted = false;
    }
}

impl Drop for PerfEventV1 {
    fn drop(&mut self) {
        if !self.mounted && !self.try_mount() {
            return;
        }
        // Cgroups left by a failed test: their processes back to the root, then removed (a
        // process may take a moment to leave after it is killed).
        let deadline = Instant::now() + Duration::from_secs(20);
        let children = || -> Vec<std::path::PathBuf> {
            let entries =
                std::fs::read_dir(self.mount.path()).map(|d| d.flatten().collect()).unwrap_or_else(|_| Vec::new());
            entries.into_iter().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
        };
        while !children().is_empty() && Instant::now() < deadline {
            for dir in children() {
                for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
                    let _ = std::fs::write(self.mount.path().join("cgroup.procs"), pid);
                }
                let _ = std::fs::remove_dir(&dir);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The kernel frees an unmounted hierarchy only if it had no child at the unmount — a
        // removed child lingers while the sampler's events still hold it — and asynchronously:
        // unmount, and mount again to retry, until `perf_event` is back on the unified hierarchy.
        loop {
            let _ = Command::new("umount").arg(self.mount.path()).status();
            let retry = Instant::now() + Duration::from_millis(500);
            while self.was_unified && perf_event_hierarchy() != Some(0) && Instant::now() < retry {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !self.was_unified || perf_event_hierarchy() == Some(0) || Instant::now() >= deadline {
                break;
            }
            let _ = self.try_mount();
        }
    }
}
