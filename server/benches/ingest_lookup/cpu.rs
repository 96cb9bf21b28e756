//! CPU accounting (Linux /proc): where this process's CPU went per thread name, and how busy the
//! whole machine was, so a run disturbed by other processes shows it.

use super::*;

#[derive(Clone, Default)]
pub(crate) struct CpuSnap {
    /// thread name -> (ns on CPU, ns runnable but waiting for a CPU)
    pub(crate) threads: HashMap<String, (u64, u64)>,
    /// /proc/stat: (busy jiffies, all jiffies) over all CPUs
    pub(crate) machine: (u64, u64),
    /// utime + stime of this process, jiffies
    pub(crate) process: u64,
    /// Bytes this process caused to be written to storage (/proc/self/io write_bytes).
    pub(crate) write_bytes: u64,
}

impl CpuSnap {
    pub(crate) fn take() -> CpuSnap {
        let mut snap = CpuSnap::default();
        if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
            for t in rd.flatten() {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_owned();
                let sched = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
                let mut f = sched.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
                let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
                let e = snap.threads.entry(comm).or_default();
                e.0 += run;
                e.1 += wait;
            }
        }
        if let Some(line) = std::fs::read_to_string("/proc/stat").ok().and_then(|s| s.lines().next().map(str::to_owned))
        {
            let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            snap.machine = (total - idle, total);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
                snap.process = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
            }
        }
        if let Ok(io) = std::fs::read_to_string("/proc/self/io") {
            snap.write_bytes = io
                .lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
        }
        snap
    }
}

/// CPU use over one phase.
#[derive(Clone, Default)]
pub(crate) struct CpuUse {
    pub(crate) wall_s: f64,
    /// thread name -> (seconds on CPU, seconds waiting for a CPU)
    pub(crate) threads: Vec<(String, f64, f64)>,
    /// Cores busy machine-wide, and of those, this process.
    pub(crate) machine_cores: f64,
    pub(crate) process_cores: f64,
    pub(crate) write_bytes: u64,
}

impl CpuUse {
    pub(crate) fn between(a: &CpuSnap, b: &CpuSnap, wall: Duration) -> CpuUse {
        let wall_s = wall.as_secs_f64().max(1e-9);
        let mut threads: Vec<(String, f64, f64)> = b
            .threads
            .iter()
            .map(|(k, &(run, wait))| {
                let (r0, w0) = a.threads.get(k).copied().unwrap_or((0, 0));
                (k.clone(), run.saturating_sub(r0) as f64 / 1e9, wait.saturating_sub(w0) as f64 / 1e9)
            })
            .filter(|t| t.1 > 0.01)
            .collect();
        threads.sort_by(|x, y| y.1.total_cmp(&x.1));
        let (busy, total) = (b.machine.0.saturating_sub(a.machine.0), b.machine.1.saturating_sub(a.machine.1));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let machine_cores = if total > 0 { busy as f64 / total as f64 * cores } else { 0.0 };
        let hz = 100.0; // USER_HZ
        let process_cores = b.process.saturating_sub(a.process) as f64 / hz / wall_s;
        let write_bytes = b.write_bytes.saturating_sub(a.write_bytes);
        CpuUse { wall_s, threads, machine_cores, process_cores, write_bytes }
    }

    pub(crate) fn describe(&self) -> String {
        let mut s = format!(
            "machine {:.2} cores busy, this process {:.2}, other processes {:.2}; disk writes {:.1} MB/s; per thread (CPU s / waiting-for-CPU s):",
            self.machine_cores,
            self.process_cores,
            (self.machine_cores - self.process_cores).max(0.0),
            self.write_bytes as f64 / 1e6 / self.wall_s,
        );
        for (name, run, wait) in &self.threads {
            s.push_str(&format!(" {name} {run:.1}/{wait:.1} ({:.0}% of wall)", run / self.wall_s * 100.0));
        }
        s
    }
}
