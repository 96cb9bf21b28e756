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
    /// Panics when no cgroup v2 hierarchy is mounted (the tests that need one say so).
    pub fn new(name: &str) -> Cgroup {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = std::path::PathBuf::from(
            spanprof_sidecar::procfs::parse_cgroup2_mount(&mounts)
                .expect("a cgroup v2 hierarchy mounted (cgroup-scoped sampling is tested in one)"),
        );
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        Cgroup { root, dir }
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
