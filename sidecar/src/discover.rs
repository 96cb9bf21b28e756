//! Which processes, threads and cgroups the sampler follows: finds targets in `/proc`, names
//! their profiles (service, container), opens their span-context channels, samples a container's
//! cgroup as a whole where it may and per thread otherwise, and detaches from what exited.
//!
//! The sampling loop ([`crate::agent`]) calls [`Discovery::pass`] once a second and
//! [`Discovery::adopt_child`] for a child process the kernel followed on its own; the naming rule
//! is the pure [`name_process`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::aggregate::Series;
use crate::error::Error;
use crate::join::{self, Channel, IndexedReader};
use crate::metrics::Metrics;
use crate::perf::{CgroupId, Sampler};
use crate::procfs::{self, ProcId};
use crate::unwind::Process;

/// Which processes to sample.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// Only these PIDs; empty: every process of the PID namespace but the sidecar's own.
    pub pids: Vec<u32>,
    /// Only processes that have a channel file.
    pub require_channel: bool,
}

/// How the kernel is asked to sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// A container whose processes are all targets is sampled through its cgroup (one event per
    /// CPU; no per-thread work at each context switch), when the sidecar may (CAP_PERFMON) and
    /// can reach the cgroup; anything else per thread.
    #[default]
    Auto,
    /// Always per thread (inherited events on every thread of every target).
    Thread,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "auto" => Ok(Scope::Auto),
            "thread" => Ok(Scope::Thread),
            _ => Err(format!("unknown sampling scope {s:?}: auto or thread")),
        }
    }
}

/// The variables of a target's own environment that label its profiles.
pub use spanprof_channel::pod::env::{CONTAINER_NAME as ENV_CONTAINER_NAME, SERVICE_NAME as ENV_SERVICE_NAME};

/// What discovery looks for and how it names what it finds.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub targets: Targets,
    /// The context volume (channel files, one directory per container).
    pub context_dir: Option<PathBuf>,
    /// The sidecar's own service name (`SPANPROF_SERVICE_NAME`).
    pub service_name: Option<String>,
    /// Each container's service name (`SPANPROF_SERVICE_NAMES`).
    pub service_names: Vec<(String, String)>,
    pub scope: Scope,
}

/// A process being sampled.
pub struct Proc {
    pub start_time: u64,
    /// Start time (clock ticks since boot) at which we attached: threads started later are
    /// followed by the kernel through inherited events.
    attached_at_ticks: u64,
    pub series: Arc<Series>,
    pub unwind: Process,
    pub channel: Option<Channel<IndexedReader>>,
    /// Passes over `/proc/<pid>/task` that attached every listed thread. After two, the kernel
    /// follows every new thread through inheritance and the listing is not read again.
    clean_thread_passes: u8,
    /// The cgroup sampled as a whole that this process is in; its threads have no events.
    pub cgroup: Option<CgroupId>,
}

/// The processes being sampled, by PID.
/// Looked up per sample: hashed with aHash, not SipHash (the keys are our own PIDs).
pub type Procs = ahash::AHashMap<u32, Proc>;

/// The labels of a process's profiles. The container: the directory of the context volume the
/// process sees (`by_volume`; needs nothing the sampler lacks), else where its channel file is
/// (`by_channel`), else its own environment (readable only to a sampler of the same user or a
/// privileged one). The service: the one the webhook recorded for the container (the app's own
/// when it sets one), else the process's environment, else the sidecar's, else the command name.
pub fn name_process<'e>(
    config: &Config,
    by_volume: Option<String>,
    by_channel: Option<String>,
    own_env: impl Fn(&str) -> Option<&'e str>,
    comm: String,
) -> Series {
    let own = |name| own_env(name).filter(|v| !v.is_empty());
    let container = by_volume.or(by_channel).or_else(|| own(ENV_CONTAINER_NAME).map(str::to_owned));
    let service = crate::pod::service_of(&config.service_names, container.as_deref())
        .or_else(|| own(ENV_SERVICE_NAME))
        .map(str::to_owned)
        .or_else(|| config.service_name.clone())
        .unwrap_or(comm);
    Series { service: Arc::from(service), container: container.map(Arc::from) }
}

/// Attach and detach lines logged one by one, at most; beyond, a summary a minute (processes
/// that fork short-lived children would otherwise write a line per child).
const CHURN_LINES: u64 = 20;

/// Processes attached and detached, for the per-minute summary.
struct Churn {
    attached: u64,
    detached: u64,
    reported: (u64, u64),
    since: Instant,
}

impl Default for Churn {
    fn default() -> Self {
        Churn { attached: 0, detached: 0, reported: (0, 0), since: Instant::now() }
    }
}

impl Churn {
    fn report(&mut self) {
        if self.since.elapsed() < Duration::from_secs(60) {
            return;
        }
        let (a, d) = (self.attached - self.reported.0, self.detached - self.reported.1);
        if (a > 0 || d > 0) && self.attached.max(self.detached) > CHURN_LINES {
            tracing::info!(attached = a, detached = d, "processes attached and detached in the last minute");
        }
        self.reported = (self.attached, self.detached);
        self.since = Instant::now();
    }
}

/// The identity of an open cgroup directory.
fn cgroup_id(dir: &std::fs::File) -> Option<CgroupId> {
    use std::os::unix::fs::MetadataExt;
    let m = dir.metadata().ok()?;
    Some(CgroupId { dev: m.dev(), ino: m.ino() })
}

fn uptime_ticks() -> u64 {
    let secs: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (secs * crate::perf::clock_ticks_per_second() as f64) as u64
}

/// Discovery's memory between passes.
pub struct Discovery {
    config: Config,
    metrics: Arc<Metrics>,
    own_pid: u32,
    /// Processes found not to be targets (kernel threads, `pause`, no channel yet…), so the next
    /// pass does not read their files again. Rebuilt on every pass.
    passed_over: HashSet<ProcId>,
    /// Cgroups sampled as a whole (the sampler's, mirrored for new processes), and their
    /// hierarchy.
    covered_cgroups: HashMap<CgroupId, procfs::Hierarchy>,
    /// Cgroup events were refused (no CAP_PERFMON): per-thread events from then on.
    cgroup_refused: bool,
    warned_permission: bool,
    warned_file_descriptors: bool,
    churn: Churn,
}

impl Discovery {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Discovery {
        Discovery {
            config,
            metrics,
            own_pid: std::process::id(),
            passed_over: HashSet::new(),
            covered_cgroups: HashMap::new(),
            cgroup_refused: false,
            warned_permission: false,
            warned_file_descriptors: false,
            churn: Churn::default(),
        }
    }

    /// A child process of a target that the kernel follows through inheritance (its first sample
    /// came before a pass found it). Every thread of it is followed by the kernel.
    pub fn adopt_child(&self, pid: u32) -> Option<Proc> {
        let mut p = self.new_proc(pid)?;
        p.attached_at_ticks = p.start_time;
        p.cgroup = self.covering_cgroup(pid);
        Some(p)
    }

    /// Attaches to new processes, follows threads the kernel does not, detaches from processes
    /// that exited, and handles PID reuse (same PID, other start time).
    pub fn pass(&mut self, sampler: &mut Sampler, procs: &mut Procs) {
        let mut seen = HashSet::new();
        let mut passed_over = HashSet::new();
        for pid in self.candidates() {
            let Some((start, comm)) = procfs::stat(pid) else {
                continue;
            };
            let id = ProcId { pid, start_time: start };
            match procs.get(&pid) {
                Some(p) if p.start_time == start => {}
                Some(_) => {
                    tracing::info!(pid, "PID reused by a new process: re-attaching");
                    self.forget(sampler, procs, pid);
                }
                None => {}
            }
            if !procs.contains_key(&pid) && procfs::is_runtime_init(pid, &comm) {
                // Not the app yet: attach once it has exec'd (not remembered as a non-target).
                continue;
            }
            if !procs.contains_key(&pid) {
                // A channel may be required and appear later: "not a target" is only final
                // when it does not depend on the channel.
                if self.passed_over.contains(&id) && !self.config.targets.require_channel {
                    passed_over.insert(id);
                    continue;
                }
                if !self.is_target(pid, &comm) {
                    passed_over.insert(id);
                    continue;
                }
                let Some(mut p) = self.new_proc(pid) else {
                    continue;
                };
                p.cgroup = self.cover_by_cgroup(sampler, procs, pid);
                if p.cgroup.is_none() && sampler.is_attached(pid) {
                    // Already followed through inheritance (a target's child).
                    p.attached_at_ticks = p.start_time;
                }
                self.churn.attached += 1;
                if self.churn.attached <= CHURN_LINES {
                    tracing::info!(
                        pid,
                        comm = %comm,
                        service = %p.series.service,
                        container = p.series.container.as_deref().unwrap_or(""),
                        channel = p.channel.is_some(),
                        scope = self.scope_of(&p),
                        "attaching"
                    );
                } else {
                    tracing::debug!(pid, comm = %comm, service = %p.series.service, "attaching");
                }
                procs.insert(pid, p);
            }
            seen.insert(pid);
            self.follow_threads(sampler, procs, pid);
            let Some(p) = procs.get_mut(&pid) else { continue };
            // An app that shrinks its channel file under the reader loses its span labels from
            // then on (the reader saw zeros, not a crash); a new file is picked up as one that
            // appears later.
            if p.channel.as_ref().is_some_and(|c| c.is_damaged()) {
                p.channel = None;
                tracing::warn!(pid, "the span-context channel file shrank under the reader: ignoring it");
            }
            // A channel file may appear after the process started.
            if p.channel.is_none()
                && let Some((c, _)) = self.channel_for(pid, p.start_time, p.series.container.as_deref())
            {
                tracing::info!(pid, "span-context channel found");
                p.channel = Some(c);
            }
        }
        self.passed_over = passed_over;
        // Processes seen above are alive; children followed through inheritance are checked here.
        let gone: Vec<u32> = procs
            .iter()
            .filter(|(pid, _)| !seen.contains(*pid))
            .filter(|(pid, p)| procfs::stat(**pid).is_none_or(|(s, _)| s != p.start_time))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.churn.detached += 1;
            if self.churn.detached <= CHURN_LINES {
                tracing::info!(pid, "process exited: detaching");
            } else {
                tracing::debug!(pid, "process exited: detaching");
            }
            self.forget(sampler, procs, pid);
        }
        sampler.prune(|pid, tid| procfs::proc_dir(pid).join("task").join(tid.to_string()).exists());
        self.churn.report();
        self.metrics.attached_processes.set(procs.len() as i64);
        let mut by_scope = [("cgroup_v2", 0i64), ("cgroup_v1", 0), ("thread", 0)];
        for p in procs.values() {
            let scope = self.scope_of(p);
            if let Some(n) = by_scope.iter_mut().find(|(s, _)| *s == scope) {
                n.1 += 1;
            }
        }
        for (scope, n) in by_scope {
            self.metrics.set_scope_processes(scope, n);
        }
        self.metrics.attached_threads.set(sampler.thread_count() as i64);
        self.metrics.attached_cgroups.set(sampler.cgroup_count() as i64);
    }

    /// How `p` is sampled: `cgroup_v2`, `cgroup_v1` (its cgroup as a whole, through that
    /// hierarchy) or `thread` (events of its own on each thread).
    fn scope_of(&self, p: &Proc) -> &'static str {
        match p.cgroup.and_then(|id| self.covered_cgroups.get(&id)) {
            Some(h) => h.as_str(),
            None => "thread",
        }
    }

    /// Stops sampling `pid`, and its cgroup once no other target is in it.
    fn forget(&mut self, sampler: &mut Sampler, procs: &mut Procs, pid: u32) {
        sampler.detach(pid);
        let Some(p) = procs.remove(&pid) else {
            return;
        };
        if let Some(id) = p.cgroup
            && !procs.values().any(|q| q.cgroup == Some(id))
        {
            tracing::info!(?id, "no target left in the cgroup: detaching it");
            sampler.detach_cgroup(id);
            self.covered_cgroups.remove(&id);
        }
    }

    /// Samples the cgroup of a new target `pid` as a whole, if it is sampled already or every
    /// process in it is one to sample (and none has per-thread events, which would count its
    /// samples twice); returns the cgroup, or `None` for per-thread events.
    fn cover_by_cgroup(&mut self, sampler: &mut Sampler, procs: &Procs, pid: u32) -> Option<CgroupId> {
        if self.config.scope != Scope::Auto || self.cgroup_refused {
            return None;
        }
        let procfs::CgroupDir { path: dir, hierarchy, members } = procfs::cgroup_of(pid)?;
        let file = std::fs::File::open(&dir).ok()?;
        let id = cgroup_id(&file)?;
        if sampler.samples_cgroup(id) {
            return Some(id);
        }
        let per_thread = |m: u32| sampler.is_attached(m) && procs.get(&m).is_none_or(|q| q.cgroup.is_none());
        let exclusive = members.iter().all(|&m| (m == pid || self.may_sample(procs, m)) && !per_thread(m));
        if !exclusive {
            tracing::debug!(pid, dir = %dir.display(), "cgroup shared with other processes: per-thread events");
            return None;
        }
        match sampler.attach_cgroup(id, &file) {
            Ok(()) => {
                tracing::info!(pid, dir = %dir.display(), hierarchy = hierarchy.as_str(), "sampling the target's cgroup");
                self.covered_cgroups.insert(id, hierarchy);
                Some(id)
            }
            Err(Error::PerfNotPermitted(hint)) => {
                tracing::info!(%hint, "cgroup events not permitted (they need CAP_PERFMON): per-thread events");
                self.cgroup_refused = true;
                None
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot sample the cgroup: per-thread events");
                None
            }
        }
    }

    /// Opens events for threads that existed before we attached and are not sampled yet.
    fn follow_threads(&mut self, sampler: &mut Sampler, procs: &mut Procs, pid: u32) {
        let Some(p) = procs.get_mut(&pid) else {
            return;
        };
        if p.clean_thread_passes >= 2 || p.cgroup.is_some() {
            return;
        }
        let first = !sampler.is_attached(pid);
        let tids = procfs::numeric_entries(&procfs::proc_dir(pid).join("task")).unwrap_or_default();
        let mut clean = true;
        for tid in tids {
            if sampler.covers(pid, tid) {
                continue;
            }
            if !first {
                // Threads started after we attached are inherited from their creator.
                let path = procfs::proc_dir(pid).join(format!("task/{tid}/stat"));
                let started = procfs::read_small(&path).and_then(|s| procfs::parse_stat(&s)).map(|s| s.0);
                if started.is_none_or(|t| t >= p.attached_at_ticks) {
                    continue;
                }
            }
            let attached = sampler.attach_thread(pid, tid);
            clean &= matches!(attached, Ok(()) | Err(Error::ThreadGone { .. }));
            match attached {
                Ok(()) => {}
                // Listed a moment ago, exited since: nothing was missed.
                Err(Error::ThreadGone { tid }) => {
                    tracing::debug!(pid, tid, "thread exited before it could be attached");
                }
                Err(Error::PerfNotPermitted(hint)) => {
                    self.metrics.attach_errors.inc();
                    if !self.warned_permission {
                        tracing::error!(pid, tid, %hint, "cannot sample the target");
                        self.warned_permission = true;
                    }
                }
                Err(e @ Error::FileDescriptors { .. }) => {
                    self.metrics.attach_errors.inc();
                    if !self.warned_file_descriptors {
                        tracing::error!(pid, tid, error = %e, "cannot sample every thread");
                        self.warned_file_descriptors = true;
                    }
                }
                Err(e) => {
                    self.metrics.attach_errors.inc();
                    tracing::debug!(pid, tid, error = %e, "cannot attach to thread (exited?)");
                }
            }
        }
        p.clean_thread_passes = if clean { p.clean_thread_passes + 1 } else { 0 };
    }

    fn channel_for(
        &self,
        pid: u32,
        start_time: u64,
        container: Option<&str>,
    ) -> Option<(Channel<IndexedReader>, Option<String>)> {
        let dir = self.config.context_dir.as_ref()?;
        join::find_channel(dir, pid, start_time, container).map(|(r, c)| (Channel::new(r), c))
    }

    fn new_proc(&self, pid: u32) -> Option<Proc> {
        let (start_time, comm) = procfs::stat(pid)?;
        let by_volume = self
            .config
            .context_dir
            .as_deref()
            .and_then(|dir| crate::pod::container_of(dir, &procfs::proc_dir(pid).join("root"), dir));
        let channel = self.channel_for(pid, start_time, by_volume.as_deref());
        let environ = procfs::environ(pid).unwrap_or_default();
        let by_channel = channel.as_ref().and_then(|(_, c)| c.clone());
        let series = name_process(&self.config, by_volume, by_channel, |name| procfs::env_var(&environ, name), comm);
        Some(Proc {
            start_time,
            attached_at_ticks: uptime_ticks(),
            series: Arc::new(series),
            unwind: Process::new(),
            channel: channel.map(|(c, _)| c),
            clean_thread_passes: 0,
            cgroup: None,
        })
    }

    /// The sampled cgroup `pid` is in, if any (a new process of a sampled container).
    fn covering_cgroup(&self, pid: u32) -> Option<CgroupId> {
        if self.covered_cgroups.is_empty() {
            return None;
        }
        let dir = procfs::cgroup_of(pid)?;
        let id = cgroup_id(&std::fs::File::open(dir.path).ok()?)?;
        self.covered_cgroups.contains_key(&id).then_some(id)
    }

    /// Whether `pid` is, or may become, a target (asked of every process in a cgroup before the
    /// cgroup is sampled as a whole).
    fn may_sample(&self, procs: &Procs, pid: u32) -> bool {
        if procs.contains_key(&pid) {
            return true;
        }
        if !self.config.targets.pids.is_empty() {
            return self.config.targets.pids.contains(&pid);
        }
        pid != self.own_pid && pid != 0 && procfs::stat(pid).is_some_and(|(_, comm)| self.is_target(pid, &comm))
    }

    /// The PIDs to look at: the configured ones, or every process of the namespace but ours.
    fn candidates(&self) -> Vec<u32> {
        if !self.config.targets.pids.is_empty() {
            return self.config.targets.pids.clone();
        }
        let mut pids = procfs::numeric_entries(std::path::Path::new("/proc")).unwrap_or_default();
        pids.retain(|&p| p != self.own_pid && p != 0);
        pids
    }

    /// Whether a process not attached yet is one to sample. Reads its files: asked once per
    /// process, the answer "no" is remembered in `passed_over`.
    fn is_target(&self, pid: u32, comm: &str) -> bool {
        let explicit = !self.config.targets.pids.is_empty();
        if !explicit && (comm == "pause" || !procfs::is_user_process(pid)) {
            return false;
        }
        if self.config.targets.require_channel {
            return self.config.context_dir.as_ref().is_some_and(|d| join::has_channel_file(d, pid));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'e>(vars: &'e [(&'e str, &'e str)]) -> impl Fn(&str) -> Option<&'e str> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    fn named(s: &Series) -> (&str, Option<&str>) {
        (&s.service, s.container.as_deref())
    }

    #[test]
    fn the_container_comes_from_the_volume_then_the_channel_then_the_environment() {
        let config = Config::default();
        let app_env = [(ENV_CONTAINER_NAME, "from-env")];
        let s = name_process(&config, Some("api".into()), Some("other".into()), env(&app_env), "demo".into());
        assert_eq!(named(&s), ("demo", Some("api")));
        let s = name_process(&config, None, Some("worker".into()), env(&app_env), "demo".into());
        assert_eq!(named(&s), ("demo", Some("worker")));
        let s = name_process(&config, None, None, env(&app_env), "demo".into());
        assert_eq!(named(&s), ("demo", Some("from-env")));
        let s = name_process(&config, None, None, env(&[(ENV_CONTAINER_NAME, "")]), "demo".into());
        assert_eq!(named(&s), ("demo", None), "an empty variable names nothing");
    }

    #[test]
    fn the_service_comes_from_the_webhook_then_the_app_then_the_sidecar_then_the_command() {
        let config = Config {
            service_name: Some("sidecar-default".into()),
            service_names: vec![("api".into(), "shop-api".into())],
            ..Config::default()
        };
        let app_env = [(ENV_SERVICE_NAME, "app-own")];
        let s = name_process(&config, Some("api".into()), None, env(&app_env), "demo".into());
        assert_eq!(named(&s), ("shop-api", Some("api")));
        let s = name_process(&config, Some("worker".into()), None, env(&app_env), "demo".into());
        assert_eq!(named(&s), ("app-own", Some("worker")));
        let s = name_process(&config, Some("worker".into()), None, env(&[]), "demo".into());
        assert_eq!(named(&s), ("sidecar-default", Some("worker")));
        let s = name_process(&Config::default(), None, None, env(&[(ENV_SERVICE_NAME, "")]), "demo".into());
        assert_eq!(named(&s), ("demo", None));
    }

    #[test]
    fn scopes_parse() {
        assert_eq!("auto".parse::<Scope>(), Ok(Scope::Auto));
        assert_eq!("thread".parse::<Scope>(), Ok(Scope::Thread));
        assert!("cgroup".parse::<Scope>().unwrap_err().contains("auto or thread"));
    }
}
