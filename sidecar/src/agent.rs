//! The sampling loop: discovers target processes, drains the rings, unwinds and joins each
//! sample, aggregates, and hands each interval's aggregate to the symbolizer.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant, SystemTime};

use crate::aggregate::{Aggregate, Series};
use crate::error::Error;
use crate::join::{self, Attribution, Channel, IndexedReader};
use crate::metrics::Metrics;
use crate::modules::Registry;
use crate::perf::record::{self, Record};
use crate::perf::{CgroupId, Sampler};
use crate::procfs::{self, ProcId};
use crate::unwind::{FrameKey, Outcome, Process};

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
pub const ENV_SERVICE_NAME: &str = "SPANPROF_SERVICE_NAME";
pub const ENV_CONTAINER_NAME: &str = "SPANPROF_CONTAINER_NAME";

/// How often new processes and threads are looked for in `/proc`.
const DISCOVERY_EVERY: Duration = Duration::from_secs(1);

/// The longest the rings go undrained while the targets are idle. The first samples after a quiet
/// spell wait at most this long to be joined; the span-context channel keeps each thread's last
/// 1,024 transitions, so only a thread with more root-span changes than that in this time (and a
/// sample before them) loses its attribution (counted as `unknown`).
pub const IDLE_POLL_MAX: Duration = Duration::from_secs(1);

/// The pause before the next drain: `busy` after records came, else twice the last pause, up to
/// [`IDLE_POLL_MAX`].
fn next_pause(last: Duration, records_came: bool, busy: Duration) -> Duration {
    if records_came { busy } else { (last * 2).clamp(busy, IDLE_POLL_MAX.max(busy)) }
}

/// One interval's samples, on their way to the symbolizer.
pub struct Batch {
    pub aggregate: Aggregate,
    pub start: SystemTime,
    pub duration: Duration,
}

pub struct AgentConfig {
    pub targets: Targets,
    pub context_dir: Option<PathBuf>,
    pub service_name: Option<String>,
    /// Each container's service name (`SPANPROF_SERVICE_NAMES`).
    pub service_names: Vec<(String, String)>,
    pub upload_interval: Duration,
    pub poll_interval: Duration,
    pub scope: Scope,
}

struct Proc {
    start_time: u64,
    /// Start time (clock ticks since boot) at which we attached: threads started later are
    /// followed by the kernel through inherited events.
    attached_at_ticks: u64,
    series: Arc<Series>,
    unwind: Process,
    channel: Option<Channel<IndexedReader>>,
    /// Passes over `/proc/<pid>/task` that attached every listed thread. After two, the kernel
    /// follows every new thread through inheritance and the listing is not read again.
    clean_thread_passes: u8,
    /// The cgroup sampled as a whole that this process is in; its threads have no events.
    cgroup: Option<CgroupId>,
}

pub struct Agent {
    sampler: Sampler,
    state: State,
}

/// Everything of the agent but the sampler, so records can be handled while the sampler lends
/// out its rings.
struct State {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    config: AgentConfig,
    procs: HashMap<u32, Proc>,
    aggregate: Aggregate,
    interval_start: (Instant, SystemTime),
    own_pid: u32,
    frames: Vec<FrameKey>,
    warned_permission: bool,
    warned_file_descriptors: bool,
    /// FORK/EXIT records of the batch being handled, applied to the sampler after it.
    thread_events: Vec<ThreadEvent>,
    /// Processes found not to be targets (kernel threads, `pause`, no channel yet…), so the next
    /// discovery does not read their files again. Rebuilt on every pass.
    passed_over: HashSet<ProcId>,
    /// Cgroups sampled as a whole (the sampler's, mirrored for the record handler).
    covered_cgroups: HashSet<CgroupId>,
    /// Cgroup events were refused (no CAP_PERFMON): per-thread events from then on.
    cgroup_refused: bool,
    churn: Churn,
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

enum ThreadEvent {
    Fork { pid: u32, tid: u32 },
    Exit { pid: u32, tid: u32 },
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

impl Agent {
    pub fn new(sampler: Sampler, registry: Arc<Registry>, metrics: Arc<Metrics>, config: AgentConfig) -> Agent {
        metrics.kernel_excluded.set(i64::from(sampler.excludes_kernel()));
        Agent {
            sampler,
            state: State {
                registry,
                metrics,
                config,
                procs: HashMap::new(),
                aggregate: Aggregate::default(),
                interval_start: (Instant::now(), SystemTime::now()),
                own_pid: std::process::id(),
                frames: Vec::with_capacity(128),
                warned_permission: false,
                warned_file_descriptors: false,
                thread_events: Vec::new(),
                passed_over: HashSet::new(),
                churn: Churn::default(),
                covered_cgroups: HashSet::new(),
                cgroup_refused: false,
            },
        }
    }

    /// Runs until `stop` is set, then flushes what it has.
    ///
    /// Every wakeup costs the sidecar tens of microseconds (a VM timer and two context switches),
    /// so the rings are drained every `poll_interval` while records flow, and ever more rarely (up
    /// to [`IDLE_POLL_MAX`]) while the targets sleep. The kernel wakes the loop early when a ring
    /// is half full.
    pub fn run(mut self, stop: &AtomicBool, batches: SyncSender<Batch>) {
        let mut buf = Vec::new();
        let mut next_discovery = Instant::now();
        let mut pause = self.state.config.poll_interval;
        while !stop.load(Ordering::Acquire) {
            self.state.metrics.beat();
            let drained = self.drain(&mut buf);
            if Instant::now() >= next_discovery {
                self.discover();
                next_discovery = Instant::now() + DISCOVERY_EVERY;
            }
            let upload_interval = self.state.config.upload_interval;
            if self.state.interval_start.0.elapsed() >= upload_interval {
                self.state.flush(&batches);
            }
            pause = next_pause(pause, drained > 0, self.state.config.poll_interval);
            let until_flush = upload_interval.saturating_sub(self.state.interval_start.0.elapsed());
            let until_discovery = next_discovery.saturating_duration_since(Instant::now());
            self.sampler.wait(pause.min(until_flush).min(until_discovery));
        }
        self.drain(&mut buf);
        self.state.flush(&batches);
    }

    /// Handles every record in the rings; returns their size in bytes.
    fn drain(&mut self, scratch: &mut Vec<u8>) -> usize {
        let state = &mut self.state;
        let drained = self.sampler.drain_with(scratch, |bytes| {
            // Every sample in these bytes was taken before this point (the ring's head was read).
            for p in state.procs.values_mut() {
                if let Some(c) = p.channel.as_mut() {
                    c.refresh();
                }
            }
            if record::for_each(bytes, crate::perf::prefetch, |r| state.handle(r)).is_err() {
                state.metrics.malformed_records.inc();
            }
        });
        for e in state.thread_events.drain(..) {
            match e {
                // A cgroup's events cover its new threads; nothing to keep per thread.
                ThreadEvent::Fork { pid, .. } if state.procs.get(&pid).is_some_and(|p| p.cgroup.is_some()) => {}
                ThreadEvent::Fork { pid, tid } => self.sampler.note_fork(pid, tid),
                ThreadEvent::Exit { pid, tid } => self.sampler.note_exit(pid, tid),
            }
        }
        drained
    }
}

impl State {
    fn handle(&mut self, r: Record<'_>) {
        match r {
            Record::Sample(s) => self.sample(s),
            Record::Mmap { pid, exec: true } | Record::Exec { pid } => {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.unwind.invalidate();
                }
            }
            Record::Fork { pid, tid } => {
                self.thread_events.push(ThreadEvent::Fork { pid, tid });
            }
            Record::Exit { pid, tid } => {
                self.thread_events.push(ThreadEvent::Exit { pid, tid });
            }
            Record::Lost(n) => {
                self.metrics.lost_records.inc_by(n);
            }
            Record::Throttle => {
                self.metrics.throttled.inc();
            }
            Record::Mmap { .. } | Record::Other => {}
        }
    }

    fn sample(&mut self, s: record::Sample<'_>) {
        if !self.procs.contains_key(&s.pid) {
            // A child process of a target, followed through inheritance.
            let Some(mut p) = self.new_proc(s.pid) else {
                return;
            };
            // Every thread of such a process is followed by the kernel.
            p.attached_at_ticks = p.start_time;
            p.cgroup = self.covering_cgroup(s.pid);
            self.procs.insert(s.pid, p);
        }
        let Some(p) = self.procs.get_mut(&s.pid) else {
            return;
        };
        self.frames.clear();
        if s.kernel {
            self.frames.push(FrameKey::KERNEL);
        }
        match s.regs {
            Some(regs) => match p.unwind.unwind(&self.registry, regs, s.stack, &mut self.frames) {
                Outcome::Complete => {}
                Outcome::Truncated => {
                    self.metrics.unwind_truncated.inc();
                }
                Outcome::Failed => {
                    self.metrics.unwind_failures.inc();
                }
            },
            None => {
                self.metrics.unwind_failures.inc();
            }
        }
        let attribution = join::attribute(p.channel.as_mut(), s.tid, s.time_ns);
        let span = match attribution {
            Attribution::Span(l) => {
                self.metrics.sample("span");
                Some(l)
            }
            Attribution::NoSpan => {
                self.metrics.sample("no_span");
                None
            }
            Attribution::Unknown => {
                self.metrics.sample("unknown");
                self.metrics.unattributed.inc();
                None
            }
            Attribution::NoChannel => {
                self.metrics.sample("no_channel");
                self.metrics.unattributed.inc();
                None
            }
        };
        self.aggregate.add(&p.series, span, &self.frames);
    }

    fn flush(&mut self, batches: &SyncSender<Batch>) {
        let (started, wall) = std::mem::replace(&mut self.interval_start, (Instant::now(), SystemTime::now()));
        if self.aggregate.is_empty() {
            return;
        }
        let batch = Batch { aggregate: std::mem::take(&mut self.aggregate), start: wall, duration: started.elapsed() };
        if batches.try_send(batch).is_err() {
            // The symbolizer is behind: drop this interval rather than grow without bound.
            self.metrics.dropped_uploads.inc();
            tracing::warn!("symbolizer behind: dropped an interval of samples");
        }
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
        // Which container: the directory of the context volume the process sees (needs nothing
        // the sampler lacks), else where its channel file is, else its own environment (readable
        // only to a sampler of the same user or a privileged one).
        let by_volume = self
            .config
            .context_dir
            .as_deref()
            .and_then(|dir| crate::pod::container_of(dir, &procfs::proc_dir(pid).join("root"), dir));
        let channel = self.channel_for(pid, start_time, by_volume.as_deref());
        let environ = procfs::environ(pid).unwrap_or_default();
        let own = |name| procfs::env_var(&environ, name).filter(|v| !v.is_empty());
        let container = by_volume
            .or_else(|| channel.as_ref().and_then(|(_, c)| c.clone()))
            .or_else(|| own(ENV_CONTAINER_NAME).map(str::to_owned));
        // The service name: the one the webhook recorded for the container (the app's own when it
        // sets one), else the process's environment, else the sidecar's, else the command name.
        let service = crate::pod::service_of(&self.config.service_names, container.as_deref())
            .or_else(|| own(ENV_SERVICE_NAME))
            .map(str::to_owned)
            .or_else(|| self.config.service_name.clone())
            .unwrap_or(comm);
        let series = Arc::new(Series { service: Arc::from(service), container: container.map(Arc::from) });
        Some(Proc {
            start_time,
            attached_at_ticks: uptime_ticks(),
            series,
            unwind: Process::new(pid),
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
        let (dir, _) = procfs::cgroup_of(pid)?;
        let id = cgroup_id(&std::fs::File::open(dir).ok()?)?;
        self.covered_cgroups.contains(&id).then_some(id)
    }

    /// Whether `pid` is, or may become, a target (asked of every process in a cgroup before the
    /// cgroup is sampled as a whole).
    fn may_sample(&self, pid: u32) -> bool {
        if self.procs.contains_key(&pid) {
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

impl Agent {
    /// Attaches to new processes, follows threads the kernel does not, detaches from processes
    /// that exited, and handles PID reuse (same PID, other start time).
    pub fn discover(&mut self) {
        let mut seen = HashSet::new();
        let mut passed_over = HashSet::new();
        for pid in self.state.candidates() {
            let Some((start, comm)) = procfs::stat(pid) else {
                continue;
            };
            let id = ProcId { pid, start_time: start };
            match self.state.procs.get(&pid) {
                Some(p) if p.start_time == start => {}
                Some(_) => {
                    tracing::info!(pid, "PID reused by a new process: re-attaching");
                    self.forget(pid);
                }
                None => {}
            }
            if !self.state.procs.contains_key(&pid) && procfs::is_runtime_init(pid, &comm) {
                // Not the app yet: attach once it has exec'd (not remembered as a non-target).
                continue;
            }
            if !self.state.procs.contains_key(&pid) {
                // A channel may be required and appear later: "not a target" is only final
                // when it does not depend on the channel.
                if self.state.passed_over.contains(&id) && !self.state.config.targets.require_channel {
                    passed_over.insert(id);
                    continue;
                }
                if !self.state.is_target(pid, &comm) {
                    passed_over.insert(id);
                    continue;
                }
                let Some(mut p) = self.state.new_proc(pid) else {
                    continue;
                };
                p.cgroup = self.cover_by_cgroup(pid);
                if p.cgroup.is_none() && self.sampler.is_attached(pid) {
                    // Already followed through inheritance (a target's child).
                    p.attached_at_ticks = p.start_time;
                }
                self.state.churn.attached += 1;
                if self.state.churn.attached <= CHURN_LINES {
                    tracing::info!(
                        pid,
                        comm = %comm,
                        service = %p.series.service,
                        container = p.series.container.as_deref().unwrap_or(""),
                        channel = p.channel.is_some(),
                        scope = if p.cgroup.is_some() { "cgroup" } else { "thread" },
                        "attaching"
                    );
                } else {
                    tracing::debug!(pid, comm = %comm, service = %p.series.service, "attaching");
                }
                self.state.procs.insert(pid, p);
            }
            seen.insert(pid);
            self.follow_threads(pid);
            // An app that shrinks its channel file under the reader loses its span labels from
            // then on (the reader saw zeros, not a crash); a new file is picked up as one that
            // appears later.
            if let Some(p) = self.state.procs.get_mut(&pid)
                && p.channel.as_ref().is_some_and(|c| c.is_damaged())
            {
                p.channel = None;
                tracing::warn!(pid, "the span-context channel file shrank under the reader: ignoring it");
            }
            // A channel file may appear after the process started.
            if let Some(p) = self.state.procs.get(&pid)
                && p.channel.is_none()
                && let Some((c, _)) = self.state.channel_for(pid, p.start_time, p.series.container.as_deref())
                && let Some(p) = self.state.procs.get_mut(&pid)
            {
                tracing::info!(pid, "span-context channel found");
                p.channel = Some(c);
            }
        }
        self.state.passed_over = passed_over;
        // Processes seen above are alive; children followed through inheritance are checked here.
        let gone: Vec<u32> = self
            .state
            .procs
            .iter()
            .filter(|(pid, _)| !seen.contains(*pid))
            .filter(|(pid, p)| procfs::stat(**pid).is_none_or(|(s, _)| s != p.start_time))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.state.churn.detached += 1;
            if self.state.churn.detached <= CHURN_LINES {
                tracing::info!(pid, "process exited: detaching");
            } else {
                tracing::debug!(pid, "process exited: detaching");
            }
            self.forget(pid);
        }
        self.sampler.prune(|pid, tid| procfs::proc_dir(pid).join("task").join(tid.to_string()).exists());
        self.state.churn.report();
        self.state.metrics.attached_processes.set(self.state.procs.len() as i64);
        self.state.metrics.attached_threads.set(self.sampler.thread_count() as i64);
        self.state.metrics.attached_cgroups.set(self.sampler.cgroup_count() as i64);
    }

    /// Stops sampling `pid`, and its cgroup once no other target is in it.
    fn forget(&mut self, pid: u32) {
        self.sampler.detach(pid);
        let Some(p) = self.state.procs.remove(&pid) else {
            return;
        };
        if let Some(id) = p.cgroup
            && !self.state.procs.values().any(|q| q.cgroup == Some(id))
        {
            tracing::info!(?id, "no target left in the cgroup: detaching it");
            self.sampler.detach_cgroup(id);
            self.state.covered_cgroups.remove(&id);
        }
    }

    /// Samples the cgroup of a new target `pid` as a whole, if it is sampled already or every
    /// process in it is one to sample (and none has per-thread events, which would count its
    /// samples twice); returns the cgroup, or `None` for per-thread events.
    fn cover_by_cgroup(&mut self, pid: u32) -> Option<CgroupId> {
        if self.state.config.scope != Scope::Auto || self.state.cgroup_refused {
            return None;
        }
        let (dir, members) = procfs::cgroup_of(pid)?;
        let file = std::fs::File::open(&dir).ok()?;
        let id = cgroup_id(&file)?;
        if self.sampler.samples_cgroup(id) {
            return Some(id);
        }
        let per_thread =
            |m: u32| self.sampler.is_attached(m) && self.state.procs.get(&m).is_none_or(|q| q.cgroup.is_none());
        let exclusive = members.iter().all(|&m| (m == pid || self.state.may_sample(m)) && !per_thread(m));
        if !exclusive {
            tracing::debug!(pid, dir = %dir.display(), "cgroup shared with other processes: per-thread events");
            return None;
        }
        match self.sampler.attach_cgroup(id, &file) {
            Ok(()) => {
                tracing::info!(pid, dir = %dir.display(), "sampling the target's cgroup");
                self.state.covered_cgroups.insert(id);
                Some(id)
            }
            Err(Error::PerfNotPermitted(hint)) => {
                tracing::info!(%hint, "cgroup events not permitted (they need CAP_PERFMON): per-thread events");
                self.state.cgroup_refused = true;
                None
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot sample the cgroup: per-thread events");
                None
            }
        }
    }

    /// Opens events for threads that existed before we attached and are not sampled yet.
    fn follow_threads(&mut self, pid: u32) {
        let Some(p) = self.state.procs.get(&pid) else {
            return;
        };
        if p.clean_thread_passes >= 2 || p.cgroup.is_some() {
            return;
        }
        let first = !self.sampler.is_attached(pid);
        let attached_at = p.attached_at_ticks;
        let tids = procfs::numeric_entries(&procfs::proc_dir(pid).join("task")).unwrap_or_default();
        let mut clean = true;
        for tid in tids {
            if self.sampler.covers(pid, tid) {
                continue;
            }
            if !first {
                // Threads started after we attached are inherited from their creator.
                let path = procfs::proc_dir(pid).join(format!("task/{tid}/stat"));
                let started = procfs::read_small(&path).and_then(|s| procfs::parse_stat(&s)).map(|s| s.0);
                if started.is_none_or(|t| t >= attached_at) {
                    continue;
                }
            }
            let attached = self.sampler.attach_thread(pid, tid);
            clean &= attached.is_ok();
            match attached {
                Ok(()) => {}
                Err(Error::PerfNotPermitted(hint)) => {
                    self.state.metrics.attach_errors.inc();
                    if !self.state.warned_permission {
                        tracing::error!(pid, tid, %hint, "cannot sample the target");
                        self.state.warned_permission = true;
                    }
                }
                Err(e @ Error::FileDescriptors { .. }) => {
                    self.state.metrics.attach_errors.inc();
                    if !self.state.warned_file_descriptors {
                        tracing::error!(pid, tid, error = %e, "cannot sample every thread");
                        self.state.warned_file_descriptors = true;
                    }
                }
                Err(e) => {
                    self.state.metrics.attach_errors.inc();
                    tracing::debug!(pid, tid, error = %e, "cannot attach to thread (exited?)");
                }
            }
        }
        if let Some(p) = self.state.procs.get_mut(&pid) {
            p.clean_thread_passes = if clean { p.clean_thread_passes + 1 } else { 0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_while_idle_and_reset_when_records_come() {
        let busy = Duration::from_millis(250);
        let mut p = busy;
        let mut seen = Vec::new();
        for _ in 0..5 {
            p = next_pause(p, false, busy);
            seen.push(p.as_millis());
        }
        assert_eq!(seen, [500, 1000, 1000, 1000, 1000]);
        assert_eq!(next_pause(p, true, busy), busy);
        // A busy interval longer than the idle cap is kept as configured.
        let slow = Duration::from_secs(3);
        assert_eq!(next_pause(slow, false, slow), slow);
    }
}
