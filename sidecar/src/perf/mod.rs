//! perf_event sampling of target processes: one ring buffer per CPU, and CPU-clock events
//! redirected into those rings — one per (cgroup, CPU) for a container whose processes are all
//! targets (the kernel keeps no per-thread state: cheapest for the app), else one inherited event
//! per (thread, CPU), so the kernel follows threads created later. Side-band records (MMAP2, COMM
//! with exec, FORK, EXIT) come through the same rings.

pub mod record;
mod sys;

use std::collections::{HashMap, HashSet};
use std::io;

use crate::error::{Error, Result};
use sys::{EventFd, EventKind, Ring, SoftLimit};
pub use sys::{clock_ticks_per_second, prefetch, release_free_memory};

/// How to sample.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub freq_hz: u64,
    /// User-stack bytes copied per sample (multiple of 8, below 64 KiB).
    pub stack_bytes: u32,
    /// How many CPUs the targets may use together (their CPU limits); `None`: every CPU.
    pub app_cpus: Option<f64>,
}

/// The least a ring holds, in seconds of one busy CPU's samples: the kernel wakes the loop at
/// half a ring, so a smaller ring means more wakeups (each costs tens of microseconds) on a CPU
/// the targets keep busy.
const RING_SECONDS_MIN: f64 = 0.25;

/// How many seconds of one busy CPU's samples each of `rings` per-CPU rings holds: together a
/// second of samples for every CPU the targets can use (`app_cpus`, all when unknown), at most a
/// second and at least [`RING_SECONDS_MIN`] each. Samples of a target land in the ring of the CPU
/// it ran on, at most one CPU's worth each, so a limit of 2 CPUs on a 64-CPU node needs no 64
/// full rings.
pub fn ring_seconds(app_cpus: Option<f64>, rings: usize) -> f64 {
    match app_cpus {
        Some(cpus) if cpus.is_finite() && cpus > 0.0 && rings > 0 => (cpus / rings as f64).clamp(RING_SECONDS_MIN, 1.0),
        _ => 1.0,
    }
}

#[derive(Default)]
struct Target {
    /// Events per thread (one per CPU).
    threads: HashMap<u32, Vec<EventFd>>,
    /// Threads the kernel follows through inheritance (seen in FORK records).
    inherited: HashSet<u32>,
}

/// The sampler: rings per CPU and the events of every attached process.
pub struct Sampler {
    rings: Vec<(i32, Ring)>,
    /// Bytes of all rings together.
    ring_bytes: usize,
    targets: HashMap<u32, Target>,
    settings: Settings,
    exclude_kernel: bool,
    /// This process's limit on open files after raising it, if it could be read.
    open_file_limit: Option<u64>,
    /// Cgroups sampled as a whole: one event per CPU each.
    cgroups: HashMap<CgroupId, Vec<EventFd>>,
}

/// A cgroup: the device and inode of its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupId {
    pub dev: u64,
    pub ino: u64,
}

/// The actionable explanation of a refused `perf_event_open`.
pub fn permission_hint(e: &io::Error) -> String {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => format!(
            "{e}: this kernel has no perf events (CONFIG_PERF_EVENTS) or /proc/sys/kernel/perf_event_paranoid is missing"
        ),
        _ => format!(
            "{e}. kernel.perf_event_paranoid is {paranoid}. Sampling other processes needs CAP_PERFMON (kernel >= 5.8; \
             CAP_SYS_ADMIN before) and ptrace access to the target (CAP_SYS_PTRACE or the same user), or \
             perf_event_paranoid <= 2 for a same-user target; a seccomp profile must allow perf_event_open \
             (Docker's default blocks it; Kubernetes RuntimeDefault allows it with CAP_PERFMON). In Kubernetes: \
             securityContext.capabilities.add [PERFMON, SYS_PTRACE] on the sidecar and shareProcessNamespace: true."
        ),
    }
}

/// Why a CPU's ring could not be set up.
enum RingFailure {
    /// The ring-owner event could not be opened.
    Open { cpu: i32, source: io::Error },
    /// The ring could not be mapped (often: over the locked-memory limit).
    Map { cpu: i32, source: io::Error },
}

/// A ring owner event and a ring of `pages` data pages per CPU.
fn map_rings(cpus: &[i32], pages: usize) -> std::result::Result<Vec<(i32, Ring)>, RingFailure> {
    let mut rings = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        let owner = EventFd::open(EventKind::RingOwner, 0, cpu).map_err(|source| RingFailure::Open { cpu, source })?;
        let ring = Ring::map(owner, pages).map_err(|source| RingFailure::Map { cpu, source })?;
        rings.push((cpu, ring));
    }
    Ok(rings)
}

/// How the kernel refuses a ring beyond the locked-memory limit.
fn is_lock_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOMEM))
}

fn online_cpus() -> Vec<i32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let cpus = parse_cpu_list(&text);
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        (0..n as i32).collect()
    } else {
        cpus
    }
}

/// Parses a kernel CPU list such as `0-3,5,7-8`.
pub fn parse_cpu_list(text: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<i32>().ok()),
        }
    }
    out
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

impl Sampler {
    /// Opens a ring per online CPU and checks that sampling is permitted (with kernel-mode
    /// samples if allowed, else user mode only).
    pub fn new(settings: Settings) -> Result<Sampler> {
        let record_bytes = u64::from(settings.stack_bytes) + 128;
        let pages_for = |bytes: u64| (bytes.div_ceil(sys::page_size() as u64) as usize).next_power_of_two();
        // Up to a second of samples per CPU (see `ring_seconds`): the loop drains once a second
        // and is woken at half a ring.
        let cpus = online_cpus();
        let second = (settings.freq_hz.max(1) * record_bytes) as f64;
        let wanted = pages_for((second * ring_seconds(settings.app_cpus, cpus.len())) as u64).max(16);
        let open_file_limit = match sys::raise_soft_limit(SoftLimit::OpenFiles) {
            Ok(limit) => {
                tracing::info!(
                    limit,
                    cpus = cpus.len(),
                    "open-file limit (each sampled thread takes one event per CPU)"
                );
                Some(limit)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read or raise the open-file limit");
                None
            }
        };
        if let Err(e) = sys::raise_soft_limit(SoftLimit::LockedMemory) {
            tracing::debug!(error = %e, "cannot raise the locked-memory limit");
        }
        // Without CAP_IPC_LOCK or CAP_PERFMON the kernel caps the ring memory a user may lock
        // (kernel.perf_event_mlock_kb per CPU, beyond it RLIMIT_MEMLOCK): smaller rings then,
        // down to four samples' worth, rather than no sampling at all.
        let least = pages_for(4 * record_bytes);
        let mut pages = wanted;
        let rings = loop {
            match map_rings(&cpus, pages) {
                Ok(rings) => break rings,
                Err(RingFailure::Map { source, .. }) if pages > least && is_lock_limit(&source) => {
                    pages /= 2;
                }
                Err(RingFailure::Open { source, .. }) if is_permission(&source) => {
                    return Err(Error::PerfNotPermitted(permission_hint(&source)));
                }
                Err(RingFailure::Open { cpu, source }) => {
                    return Err(Error::Perf { what: format!("CPU {cpu} ring"), source });
                }
                Err(RingFailure::Map { cpu, source }) => {
                    return Err(Error::Perf {
                        what: format!(
                            "mapping the CPU {cpu} ring ({} KiB; locked-memory limits: \
                             kernel.perf_event_mlock_kb, RLIMIT_MEMLOCK, or CAP_IPC_LOCK)",
                            pages * sys::page_size() / 1024
                        ),
                        source,
                    });
                }
            }
        };
        tracing::info!(
            rings = rings.len(),
            ring_kib = pages * sys::page_size() / 1024,
            total_kib = rings.len() * pages * sys::page_size() / 1024,
            app_cpus = settings.app_cpus,
            "perf rings mapped (locked kernel memory, not counted in RSS)"
        );
        if pages < wanted {
            tracing::warn!(
                ring_kib = pages * sys::page_size() / 1024,
                wanted_kib = wanted * sys::page_size() / 1024,
                "perf rings made smaller to fit the locked-memory limit (kernel.perf_event_mlock_kb, \
                 RLIMIT_MEMLOCK; CAP_IPC_LOCK or CAP_PERFMON lift it): bursts may lose samples, \
                 counted in spanprof_sidecar_lost_records_total"
            );
        }
        // Probe: sample ourselves with kernel samples; fall back to user-only.
        let probe = |exclude_kernel| {
            let kind =
                EventKind::Sampling { freq_hz: settings.freq_hz, stack_bytes: settings.stack_bytes, exclude_kernel };
            EventFd::open(kind, 0, rings.first().map_or(0, |r| r.0))
        };
        let exclude_kernel = match probe(false) {
            Ok(_) => false,
            Err(e) if is_permission(&e) => match probe(true) {
                Ok(_) => {
                    tracing::warn!(
                        "no CAP_PERFMON: kernel-mode samples are excluded (time in system calls is not sampled)"
                    );
                    true
                }
                Err(e) => return Err(Error::PerfNotPermitted(permission_hint(&e))),
            },
            Err(e) => {
                return Err(Error::Perf { what: "a CPU-clock sampling event".into(), source: e });
            }
        };
        let ring_bytes = rings.len() * pages * sys::page_size();
        Ok(Sampler {
            rings,
            ring_bytes,
            targets: HashMap::new(),
            settings,
            exclude_kernel,
            open_file_limit,
            cgroups: HashMap::new(),
        })
    }

    /// Bytes of ring buffer mapped, all CPUs together.
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes
    }

    pub fn excludes_kernel(&self) -> bool {
        self.exclude_kernel
    }

    pub fn is_attached(&self, pid: u32) -> bool {
        self.targets.contains_key(&pid)
    }

    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.targets.keys().copied()
    }

    /// Forgets threads followed through inheritance for which `alive(pid, tid)` says no, and
    /// processes left with no threads that are gone too. EXIT records alone do not suffice: a
    /// short-lived child's EXIT can sit in another CPU's ring and be read before its FORK.
    /// Returns how many threads were forgotten.
    pub fn prune(&mut self, alive: impl Fn(u32, u32) -> bool) -> usize {
        let mut forgotten = 0;
        for (&pid, t) in self.targets.iter_mut() {
            let before = t.inherited.len();
            t.inherited.retain(|&tid| alive(pid, tid));
            forgotten += before - t.inherited.len();
        }
        self.targets.retain(|&pid, t| !(t.threads.is_empty() && t.inherited.is_empty()) || alive(pid, pid));
        forgotten
    }

    /// Threads with events of their own or followed through inheritance.
    pub fn thread_count(&self) -> usize {
        self.targets.values().map(|t| t.threads.len() + t.inherited.len()).sum()
    }

    /// Starts sampling thread `tid` of process `pid` on every CPU (idempotent).
    pub fn attach_thread(&mut self, pid: u32, tid: u32) -> Result<()> {
        if self.covers(pid, tid) {
            return Ok(());
        }
        let kind = self.sampling_kind(false);
        let events = match self.open_on_every_cpu(
            |cpu| EventFd::open(kind, tid as i32, cpu),
            |cpu| format!("thread {tid} of process {pid} on CPU {cpu}"),
        ) {
            Err(Error::Perf { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {
                return Err(Error::ThreadGone { tid });
            }
            other => other?,
        };
        self.targets.entry(pid).or_default().threads.insert(tid, events);
        Ok(())
    }

    /// Starts sampling every task of the cgroup whose directory is open as `dir`, on every CPU
    /// (idempotent). Needs CAP_PERFMON (or `perf_event_paranoid` <= 0): a per-CPU event.
    pub fn attach_cgroup(&mut self, id: CgroupId, dir: &std::fs::File) -> Result<()> {
        if self.cgroups.contains_key(&id) {
            return Ok(());
        }
        let kind = self.sampling_kind(true);
        let events = self.open_on_every_cpu(
            |cpu| EventFd::open_cgroup(kind, dir, cpu),
            |cpu| format!("cgroup {id:?} on CPU {cpu}"),
        )?;
        self.cgroups.insert(id, events);
        Ok(())
    }

    /// Stops sampling a cgroup and closes its events.
    pub fn detach_cgroup(&mut self, id: CgroupId) {
        self.cgroups.remove(&id);
    }

    pub fn samples_cgroup(&self, id: CgroupId) -> bool {
        self.cgroups.contains_key(&id)
    }

    /// Cgroups sampled as a whole.
    pub fn cgroup_count(&self) -> usize {
        self.cgroups.len()
    }

    /// The CPU-clock event this sampler opens, per thread or per cgroup.
    fn sampling_kind(&self, cgroup: bool) -> EventKind {
        let (freq_hz, stack_bytes, exclude_kernel) =
            (self.settings.freq_hz, self.settings.stack_bytes, self.exclude_kernel);
        if cgroup {
            EventKind::CgroupSampling { freq_hz, stack_bytes, exclude_kernel }
        } else {
            EventKind::Sampling { freq_hz, stack_bytes, exclude_kernel }
        }
    }

    /// One event per CPU from `open`, each redirected into that CPU's ring and enabled.
    fn open_on_every_cpu(
        &self,
        open: impl Fn(i32) -> io::Result<EventFd>,
        what: impl Fn(i32) -> String,
    ) -> Result<Vec<EventFd>> {
        let mut events = Vec::with_capacity(self.rings.len());
        for (cpu, ring) in &self.rings {
            let setup = || -> io::Result<EventFd> {
                let ev = open(*cpu)?;
                ev.set_output(ring)?;
                ev.enable()?;
                Ok(ev)
            };
            match setup() {
                Ok(ev) => events.push(ev),
                Err(e) if is_permission(&e) => {
                    return Err(Error::PerfNotPermitted(permission_hint(&e)));
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    return Err(Error::FileDescriptors {
                        cpus: self.rings.len(),
                        limit: self.open_file_limit.map_or_else(|| "unknown".into(), |l| l.to_string()),
                        source: e,
                    });
                }
                Err(e) => {
                    return Err(Error::Perf { what: what(*cpu), source: e });
                }
            }
        }
        Ok(events)
    }

    /// Whether `tid` of `pid` is sampled already.
    pub fn covers(&self, pid: u32, tid: u32) -> bool {
        self.targets.get(&pid).is_some_and(|t| t.threads.contains_key(&tid) || t.inherited.contains(&tid))
    }

    /// A FORK record: the kernel now samples `tid` (a new thread of a target, or the first
    /// thread of a target's child process) through an inherited event.
    pub fn note_fork(&mut self, pid: u32, tid: u32) {
        let t = self.targets.entry(pid).or_default();
        t.inherited.insert(tid);
    }

    /// An EXIT record: forget the thread (its events are dead).
    pub fn note_exit(&mut self, pid: u32, tid: u32) {
        if let Some(t) = self.targets.get_mut(&pid) {
            t.inherited.remove(&tid);
            t.threads.remove(&tid);
        }
    }

    /// Stops sampling `pid` and closes its events.
    pub fn detach(&mut self, pid: u32) {
        self.targets.remove(&pid);
    }

    /// Hands each ring's new records to `f` in place (whole records; copied into `scratch`
    /// only where they wrap around a ring's end), one call per ring that has any.
    pub fn drain_with(&mut self, scratch: &mut Vec<u8>, mut f: impl FnMut(&[u8])) -> usize {
        self.rings.iter_mut().map(|(_, r)| r.drain_with(scratch, &mut f)).sum()
    }

    /// Waits up to `timeout` for new records; returns early when a ring fills past half its size,
    /// so a burst is drained before the kernel has to drop records.
    pub fn wait(&self, timeout: std::time::Duration) {
        let rings: Vec<&Ring> = self.rings.iter().map(|(_, r)| r).collect();
        if let Err(e) = sys::wait_any(&rings, timeout) {
            // Not expected for perf fds; never spin: fall back to sleeping the interval.
            tracing::debug!(error = %e, "poll on the perf rings failed");
            std::thread::sleep(timeout);
        }
    }

    /// The kernel's ring-owner event is bound to the sidecar and samples nothing; only targets do.
    pub fn ring_count(&self) -> usize {
        self.rings.len()
    }

    /// Enables the ring owners (they record nothing themselves).
    pub fn start(&self) -> Result<()> {
        for (cpu, r) in &self.rings {
            r.event().enable().map_err(|e| Error::Perf { what: format!("enabling the CPU {cpu} ring"), source: e })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_hold_a_second_for_each_cpu_the_targets_may_use() {
        // No limit: a second per CPU.
        assert_eq!(ring_seconds(None, 64), 1.0);
        // 2 CPUs on a 64-CPU node: the floor, a quarter of what no limit takes.
        assert_eq!(ring_seconds(Some(2.0), 64), RING_SECONDS_MIN);
        // 24 CPUs on 64: their two dozen seconds spread over the rings.
        assert_eq!(ring_seconds(Some(24.0), 64), 0.375);
        // A limit above the CPUs there are, or nonsense: a second each.
        assert_eq!(ring_seconds(Some(8.0), 2), 1.0);
        assert_eq!(ring_seconds(Some(f64::NAN), 2), 1.0);
        assert_eq!(ring_seconds(Some(0.0), 2), 1.0);
    }

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5,7-8\n"), vec![0, 1, 2, 3, 5, 7, 8]);
        assert_eq!(parse_cpu_list("0"), vec![0]);
        assert_eq!(parse_cpu_list(""), Vec::<i32>::new());
        assert!(!online_cpus().is_empty());
    }

    #[test]
    fn permission_errors_say_what_to_grant() {
        let hint = permission_hint(&io::Error::from_raw_os_error(libc::EACCES));
        assert!(hint.contains("CAP_PERFMON") && hint.contains("perf_event_paranoid"), "{hint}");
    }

    /// Samples a busy thread of this very process: real perf events, real records.
    #[test]
    fn samples_a_busy_thread_of_this_process() {
        let mut s = Sampler::new(Settings { freq_hz: 200, stack_bytes: 8192, app_cpus: None })
            .expect("perf_event_open (root or CAP_PERFMON needed)");
        s.start().unwrap();
        let pid = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let worker = std::thread::spawn(move || {
            tx.send(spanprof_channel::current_tid()).unwrap();
            let mut x = 0u64;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            x
        });
        let tid = rx.recv().unwrap();
        s.attach_thread(pid, tid).unwrap();
        assert!(s.covers(pid, tid));
        std::thread::sleep(std::time::Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        worker.join().unwrap();
        let mut buf = Vec::new();
        s.drain_with(&mut Vec::new(), |bytes| buf.extend_from_slice(bytes));
        let mut samples = 0;
        let mut times = Vec::new();
        record::for_each(
            &buf,
            |_| {},
            |r| {
                if let record::Record::Sample(smp) = r
                    && smp.tid == tid
                {
                    samples += 1;
                    times.push(smp.time_ns);
                    assert!(smp.regs.is_some());
                    assert!(!smp.stack.is_empty());
                }
            },
        )
        .unwrap();
        // 200 Hz of on-CPU time for ~0.3 s; the machine is shared, so be lenient.
        assert!(samples >= 10, "{samples} samples");
        // CLOCK_MONOTONIC timestamps, comparable with our own clock.
        let now = spanprof_channel::monotonic_ns();
        assert!(times.iter().all(|&t| t <= now && now - t < 5_000_000_000));
        s.detach(pid);
        assert!(!s.is_attached(pid));
    }
}
