//! The sampling loop: drains the rings and dispatches each record (a sample is unwound, joined to
//! its span and counted; a mapping change marks the process's modules stale; thread events go
//! back to the sampler), runs discovery ([`crate::discover`]) once a second, and hands each
//! interval's aggregate to the symbolizer.

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant, SystemTime};

use crate::aggregate::Aggregate;
use crate::discover::{self, Discovery, Procs};
use crate::join::{self, Attribution};
use crate::metrics::Metrics;
use crate::modules::{self, Registry};
use crate::perf::Sampler;
use crate::perf::record::{self, Record};
use crate::unwind::{FrameKey, Outcome};

/// How often new processes and threads are looked for in `/proc`.
const DISCOVERY_EVERY: Duration = Duration::from_secs(1);

/// How long the rings go undrained while every sample finds its span history: a wakeup costs the
/// sidecar tens of microseconds of CPU and cold caches (measured: draining every 250 ms instead
/// cost 22 against 14 ms of CPU per 1,000 samples at 35 samples/s; BENCHMARKS.md). The
/// span-context channel keeps each thread's last 1,024 transitions, so a thread with more
/// root-span changes than that in this time loses the attribution of its earlier samples; those
/// come back as [`Attribution::Late`] and the loop then drains every `poll_interval` for
/// [`LATE_HOLD`]. The kernel wakes the loop early whenever a ring is half full.
pub const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// How long the loop keeps draining every `poll_interval` after a sample was joined too late.
const LATE_HOLD: Duration = Duration::from_secs(60);

/// The pause before the next drain: `fast` while a sample was joined too late in the last
/// [`LATE_HOLD`], else [`DRAIN_EVERY`].
fn next_pause(late_recently: bool, fast: Duration) -> Duration {
    if late_recently { fast } else { DRAIN_EVERY.max(fast) }
}

/// One interval's samples, on their way to the symbolizer.
pub struct Batch {
    pub aggregate: Aggregate,
    pub start: SystemTime,
    pub duration: Duration,
}

pub struct AgentConfig {
    pub discovery: discover::Config,
    pub upload_interval: Duration,
    pub poll_interval: Duration,
}

pub struct Agent {
    sampler: Sampler,
    discovery: Discovery,
    state: State,
}

/// Everything of the agent but the sampler and discovery, so records can be handled while the
/// sampler lends out its rings.
struct State {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    upload_interval: Duration,
    poll_interval: Duration,
    procs: Procs,
    aggregate: Aggregate,
    interval_start: (Instant, SystemTime),
    frames: Vec<FrameKey>,
    /// FORK/EXIT records of the batch being handled, applied to the sampler after it.
    thread_events: Vec<ThreadEvent>,
    /// A sample of this drain found its thread's span history overwritten.
    late_in_drain: bool,
}

enum ThreadEvent {
    Fork { pid: u32, tid: u32 },
    Exit { pid: u32, tid: u32 },
}

impl Agent {
    pub fn new(sampler: Sampler, registry: Arc<Registry>, metrics: Arc<Metrics>, config: AgentConfig) -> Agent {
        metrics.kernel_excluded.set(i64::from(sampler.excludes_kernel()));
        let AgentConfig { discovery, upload_interval, poll_interval } = config;
        Agent {
            sampler,
            discovery: Discovery::new(discovery, Arc::clone(&metrics)),
            state: State {
                registry,
                metrics,
                upload_interval,
                poll_interval,
                procs: Procs::new(),
                aggregate: Aggregate::default(),
                interval_start: (Instant::now(), SystemTime::now()),
                frames: Vec::with_capacity(128),
                thread_events: Vec::new(),
                late_in_drain: false,
            },
        }
    }

    /// Runs until `stop` is set, then flushes what it has.
    ///
    /// Every wakeup costs the sidecar tens of microseconds (a VM timer and two context switches),
    /// so the rings are drained once a second, or every `poll_interval` while threads change root
    /// spans too fast for that (see [`DRAIN_EVERY`]). The kernel wakes the loop early when a
    /// ring is half full.
    pub fn run(mut self, stop: &AtomicBool, batches: SyncSender<Batch>) {
        let mut buf = Vec::new();
        let mut next_discovery = Instant::now();
        let (poll_interval, upload_interval) = (self.state.poll_interval, self.state.upload_interval);
        let mut late_at: Option<Instant> = None;
        while !stop.load(Ordering::Acquire) {
            self.state.metrics.beat();
            self.drain(&mut buf);
            if std::mem::take(&mut self.state.late_in_drain) {
                if late_at.is_none_or(|t| t.elapsed() >= LATE_HOLD) {
                    tracing::info!(
                        every = ?poll_interval,
                        "samples were joined after their threads' span history was overwritten: draining more often"
                    );
                }
                late_at = Some(Instant::now());
            }
            if Instant::now() >= next_discovery {
                self.discovery.pass(&mut self.sampler, &mut self.state.procs);
                next_discovery = Instant::now() + DISCOVERY_EVERY;
            }
            if self.state.interval_start.0.elapsed() >= upload_interval {
                self.state.flush(&batches);
            }
            let pause = next_pause(late_at.is_some_and(|t| t.elapsed() < LATE_HOLD), poll_interval);
            let until_flush = upload_interval.saturating_sub(self.state.interval_start.0.elapsed());
            let until_discovery = next_discovery.saturating_duration_since(Instant::now());
            self.sampler.wait(pause.min(until_flush).min(until_discovery));
        }
        self.drain(&mut buf);
        self.state.flush(&batches);
    }

    /// Handles every record in the rings; returns their size in bytes.
    fn drain(&mut self, scratch: &mut Vec<u8>) -> usize {
        let (state, discovery) = (&mut self.state, &self.discovery);
        let drained = self.sampler.drain_with(scratch, |bytes| {
            // Every sample in these bytes was taken before this point (the ring's head was read).
            for p in state.procs.values_mut() {
                if let Some(c) = p.channel.as_mut() {
                    c.refresh();
                }
            }
            if record::for_each(bytes, crate::perf::prefetch, |r| state.handle(r, discovery)).is_err() {
                state.metrics.malformed_records.inc();
            }
        });
        for p in state.procs.values_mut() {
            let c = p.unwind.rule_cache_since_last();
            for (counter, n) in state.metrics.rule_cache.iter().zip([c.hits, c.stale, c.other]) {
                counter.inc_by(n);
            }
        }
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
    fn handle(&mut self, r: Record<'_>, discovery: &Discovery) {
        match r {
            Record::Sample(s) => self.sample(s, discovery),
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

    fn sample(&mut self, s: record::Sample<'_>, discovery: &Discovery) {
        let p = match self.procs.entry(s.pid) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => match discovery.adopt_child(s.pid) {
                Some(p) => e.insert(p),
                None => return,
            },
        };
        self.frames.clear();
        if s.kernel {
            self.frames.push(FrameKey::KERNEL);
        }
        match s.regs {
            Some(regs) => {
                let [_, _, ip] = regs;
                if p.unwind.wants_modules(ip) {
                    self.metrics.module_reloads.inc();
                    match modules::mapped(s.pid, &self.registry) {
                        Ok(mapped) => p.unwind.set_modules(&mapped),
                        Err(e) => {
                            tracing::debug!(pid = s.pid, error = %e, "cannot read maps");
                            p.unwind.keep_modules();
                        }
                    }
                }
                match p.unwind.unwind(regs, s.stack, &mut self.frames) {
                    Outcome::Complete => {}
                    Outcome::Truncated => {
                        self.metrics.unwind_truncated.inc();
                    }
                    Outcome::Failed => {
                        self.metrics.unwind_failures.inc();
                    }
                }
            }
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
            Attribution::Late => {
                self.metrics.sample("late");
                self.metrics.unattributed.inc();
                self.late_in_drain = true;
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
        let next = Aggregate::next_after(&self.aggregate);
        let batch =
            Batch { aggregate: std::mem::replace(&mut self.aggregate, next), start: wall, duration: started.elapsed() };
        if batches.try_send(batch).is_err() {
            // The symbolizer is behind: drop this interval rather than grow without bound.
            self.metrics.dropped_uploads.inc();
            tracing::warn!("symbolizer behind: dropped an interval of samples");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_once_a_second_unless_samples_came_too_late() {
        let fast = Duration::from_millis(250);
        assert_eq!(next_pause(false, fast), DRAIN_EVERY);
        assert_eq!(next_pause(true, fast), fast);
        // A configured interval longer than the cap is kept.
        let slow = Duration::from_secs(3);
        assert_eq!(next_pause(false, slow), slow);
        assert_eq!(next_pause(true, slow), slow);
    }
}
