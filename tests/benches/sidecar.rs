//! The sampler's cost, measured with real processes in one run against a baseline:
//! - the demo app's work per CPU-second of its own threads with the sidecar attached versus
//!   without it: two identical demos run side by side at half the load each, the sampler attached
//!   to one of them, the other one the baseline over the very same seconds; which one is sampled
//!   swaps every round, so a difference between the two cancels out;
//! - the sidecar's own CPU time per 1,000 samples and its resident memory at steady state;
//! - its stacks next to `perf record -F 100 --call-graph dwarf` (Debian `linux-perf`) sampling
//!   the same process at the same time: stack depth, complete stacks, top self functions.
//!
//! `cargo bench -p spanprof-e2e --bench sidecar -- [--rounds 4] [--phase-secs 20]
//!  [--load-rps 200] [--work-scale 1.0] [--steady-secs 60] [--perf-secs 30]` (root or CAP_PERFMON; results in
//! BENCHMARKS.md). Each demo runs in a cgroup v2 directory of its own, as a container does, so
//! the sidecar samples it per cgroup; `E2E_SCOPE=thread` measures per-thread events instead, and
//! `E2E_CGROUPS=v1` puts the demos' cgroups in a v1 `perf_event` hierarchy (mounted for the run),
//! as on a cgroup v1 node.
//! Work per CPU-second is used rather than wall-clock throughput because the
//! load generator sends a fixed rate: the sampler's cost shows up as CPU per order.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

struct Opts {
    rounds: usize,
    phase: Duration,
    load_rps: u32,
    work_scale: f64,
    perf: Duration,
    steady: Duration,
}

fn opts() -> Opts {
    let mut o = Opts {
        rounds: 4,
        phase: Duration::from_secs(20),
        load_rps: 200,
        work_scale: 1.0,
        perf: Duration::from_secs(30),
        steady: Duration::from_secs(60),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        let secs = || Duration::from_secs(value.parse().expect("seconds"));
        match args[i].as_str() {
            "--rounds" => o.rounds = value.parse().expect("--rounds N"),
            "--phase-secs" => o.phase = secs(),
            "--load-rps" => o.load_rps = value.parse().expect("--load-rps N"),
            "--work-scale" => o.work_scale = value.parse().expect("--work-scale X"),
            "--perf-secs" => o.perf = secs(),
            "--steady-secs" => o.steady = secs(),
            // `cargo bench` passes `--bench`; other flags have no value.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// User + system CPU time of a process (all its threads, live and exited), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // USER_HZ is 100 on Linux
}

/// On-CPU time of a process's live threads, in seconds, to the nanosecond (`schedstat`): for
/// the sidecar, whose threads live as long as it does and use too little CPU for 10 ms ticks.
fn thread_cpu_secs(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

struct Demo {
    proc: Proc,
    port: u16,
}

fn start_demo(ctx: Option<&Path>, o: &Opts, load_rps: u32) -> Demo {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_e2e-demo"));
    cmd.env("E2E_DEMO_LISTEN", format!("127.0.0.1:{port}"))
        .env("E2E_LOAD_RPS", load_rps.to_string())
        .env("E2E_WORK_SCALE", o.work_scale.to_string())
        .env_remove("SPANPROF_CONTEXT_DIR");
    if let Some(ctx) = ctx {
        cmd.env("SPANPROF_CONTEXT_DIR", ctx);
    }
    let proc = Proc(cmd.spawn().unwrap());
    wait_ready(&format!("http://127.0.0.1:{port}/healthz"), "demo");
    Demo { proc, port }
}

impl Demo {
    fn orders(&self) -> u64 {
        metric(self.port, "spanprof_demo_orders_total")
    }
}

/// The sampler attached to the demo, uploading every 10 s (the default) to the bench's server.
fn start_bench_sidecar(server_port: u16, ctx: &Path, demo: &Demo) -> (Proc, u16) {
    start_sidecar(
        server_port,
        Some(ctx),
        Some(demo.proc.pid()),
        &[("E2E_UPLOAD_INTERVAL_MS", "10000"), ("E2E_SERVICE", "bench")],
    )
}

/// Orders per CPU-second of each demo over the same `phase`.
fn measure_both(demos: [&Demo; 2], phase: Duration) -> [f64; 2] {
    let before = demos.map(|d| (d.orders(), cpu_secs(d.proc.pid())));
    std::thread::sleep(phase);
    let mut out = [0.0; 2];
    for (i, d) in demos.iter().enumerate() {
        let (o0, c0) = before[i];
        out[i] = (d.orders() - o0) as f64 / (cpu_secs(d.proc.pid()) - c0);
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let o = opts();
    let (data, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server_port = free_port();
    let _server = start_server(server_port, data.path());
    let half = (o.load_rps / 2).max(1);
    let pair = [start_demo(Some(ctx.path()), &o, half), start_demo(Some(ctx.path()), &o, half)];
    // Each demo in a cgroup of its own, as each container is in Kubernetes: the sidecar samples
    // the cgroup as a whole (unless E2E_SCOPE=thread is set for a per-thread comparison).
    let v1 = (std::env::var("E2E_CGROUPS").as_deref() == Ok("v1")).then(PerfEventV1::new);
    let new_cgroup = |name: &str| match &v1 {
        Some(v1) => v1.cgroup(name),
        None => Cgroup::new(name),
    };
    let cgroups = [new_cgroup("spanprof-bench-demo0"), new_cgroup("spanprof-bench-demo1")];
    for (cg, demo) in cgroups.iter().zip(&pair) {
        cg.add(demo.proc.pid());
    }
    println!(
        "two demos at {half} req/s each, work scale {}, phases of {} s, {} rounds",
        o.work_scale,
        o.phase.as_secs(),
        o.rounds
    );
    std::thread::sleep(Duration::from_secs(5)); // warm-up: caches, allocator, thread pool

    // Per round: work per CPU-second of the sampled demo over that of the other one.
    let mut ratios = Vec::new();
    for round in 0..o.rounds {
        let (sampled, other) = (&pair[round % 2], &pair[1 - round % 2]);
        let (sidecar, metrics) = start_bench_sidecar(server_port, ctx.path(), sampled);
        std::thread::sleep(Duration::from_secs(3)); // attach, first symbolization
        let [with, without] = measure_both([sampled, other], o.phase);
        println!(
            "  round {round}: demo {} sampled {with:.1} orders/CPU-s, demo {} alone {without:.1}: ratio {:.4}",
            round % 2,
            1 - round % 2,
            with / without
        );
        ratios.push(with / without);
        let lost = metric(metrics, "spanprof_sidecar_lost_records_total");
        if lost > 0 {
            println!("  ({lost} lost records)");
        }
        sidecar.terminate();
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(pair);
    drop(cgroups);
    // The geometric mean over rounds that sampled each demo equally often: the two demos' own
    // difference in speed multiplies in and divides out.
    let even = ratios.len() / 2 * 2;
    let geo = (ratios[..even].iter().map(|r| r.ln()).sum::<f64>() / even.max(1) as f64).exp();
    let pairs: Vec<f64> = ratios.chunks_exact(2).map(|p| (1.0 - (p[0] * p[1]).sqrt()) * 100.0).collect();

    let demo = start_demo(Some(ctx.path()), &o, o.load_rps);
    let steady_cgroup = new_cgroup("spanprof-bench-steady");
    steady_cgroup.add(demo.proc.pid());
    std::thread::sleep(Duration::from_secs(5));
    // The sidecar's own cost at steady state: one long-running sampler, after its caches warmed.
    let (sidecar, metrics) = start_bench_sidecar(server_port, ctx.path(), &demo);
    std::thread::sleep(Duration::from_secs(20));
    let (s0, c0) = (metric(metrics, "spanprof_sidecar_samples_total"), thread_cpu_secs(sidecar.pid()));
    std::thread::sleep(o.steady);
    let (s1, c1) = (metric(metrics, "spanprof_sidecar_samples_total"), thread_cpu_secs(sidecar.pid()));
    let (samples, sidecar_cpu) = (s1 - s0, c1 - c0);
    let (rss, hwm) = rss_mib(sidecar.pid());
    let lookups =
        |r: &str| metric(metrics, &format!("spanprof_sidecar_unwind_rule_cache_lookups_total{{result=\"{r}\"}}"));
    let (hits, stale, missed) = (lookups("hit"), lookups("miss_stale"), lookups("miss"));
    let reloads = metric(metrics, "spanprof_sidecar_module_reloads_total");
    let scopes = ["cgroup_v2", "cgroup_v1", "thread"];
    let scope = scopes
        .into_iter()
        .find(|s| metric(metrics, &format!("spanprof_sidecar_sampling_scope_processes{{scope=\"{s}\"}}")) > 0)
        .unwrap_or("none");
    sidecar.terminate();
    drop(demo);
    drop(steady_cgroup);
    println!();
    println!("sampling scope: {scope}");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| overhead on the app (work per CPU-second lost; geometric mean of {even} rounds) | {:.2} % (per pair of rounds: {}; median {:.2} %) |",
        (1.0 - geo) * 100.0,
        pairs.iter().map(|p| format!("{p:+.2} %")).collect::<Vec<_>>().join(", "),
        median(pairs.clone())
    );
    println!(
        "| sidecar CPU per 1,000 samples (steady state, {} s) | {:.1} ms ({samples} samples, {:.3} CPU-s: {:.2} % of a core) |",
        o.steady.as_secs(),
        sidecar_cpu * 1e6 / samples.max(1) as f64,
        sidecar_cpu,
        sidecar_cpu * 100.0 / o.steady.as_secs_f64()
    );
    println!("| sidecar RSS at steady state / peak | {rss:.1} MiB / {hwm:.1} MiB |");
    println!(
        "| unwind-rule cache (whole run) | {:.1} % hits ({hits} hits, {missed} misses, {stale} stale after {reloads} module reloads) |",
        hits as f64 * 100.0 / (hits + stale + missed).max(1) as f64
    );

    compare_with_perf(server_port, &o);
}

/// One sample's user-space stack, leaf first, names normalised for comparison; a kernel-mode
/// leaf is one `[kernel]` frame.
type Stack = Vec<String>;

/// Names as both tools print them, reduced to what both agree on: generic parameters, Rust's
/// legacy hash suffix and symbol versions removed, the last two path segments kept.
fn normalize(name: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            '>' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let out = out.split("@@").next().unwrap_or_default();
    let mut segs: Vec<&str> = out.split("::").filter(|s| !s.is_empty()).collect();
    if segs.last().is_some_and(|s| s.len() == 17 && s.starts_with('h') && s[1..].chars().all(|c| c.is_ascii_hexdigit()))
    {
        segs.pop();
    }
    let keep = segs.len().saturating_sub(2);
    segs[keep..].join("::")
}

/// Stacks from `perf script -F ip,sym,dso` output: blocks separated by blank lines, one frame
/// per line (`addr symbol (dso)`), leaf first.
fn perf_stacks(text: &str) -> Vec<Stack> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut stack: Stack = Vec::new();
        for line in block.lines() {
            let line = line.trim();
            let Some((_addr, rest)) = line.split_once(' ') else {
                continue;
            };
            let Some(open) = rest.rfind(" (") else {
                continue;
            };
            let (sym, dso) = (&rest[..open], &rest[open + 2..rest.len().saturating_sub(1)]);
            let sym = sym.strip_suffix(" (inlined)").unwrap_or(sym);
            if dso.starts_with("[kernel") {
                if stack.is_empty() {
                    stack.push("[kernel]".into());
                }
                continue;
            }
            stack.push(if sym == "[unknown]" { format!("{dso}+?") } else { normalize(sym) });
        }
        if !stack.is_empty() {
            out.push(stack);
        }
    }
    out
}

/// Stacks from the server's folded export (`root;…;leaf count`), one entry per sample.
fn folded_stacks(folded: &[(String, u64)]) -> Vec<(Stack, u64)> {
    folded.iter().map(|(s, n)| (s.split(';').rev().map(normalize).collect(), *n)).collect()
}

/// What the comparison reports for one tool.
struct Summary {
    samples: u64,
    mean_depth: f64,
    median_depth: f64,
    complete: f64,
}

fn summarize(stacks: &[(Stack, u64)]) -> Summary {
    let samples: u64 = stacks.iter().map(|(_, n)| n).sum();
    let mut depths: Vec<f64> = Vec::new();
    let (mut depth_sum, mut complete) = (0u64, 0u64);
    for (s, n) in stacks {
        let user = s.iter().filter(|f| *f != "[kernel]").count() as u64;
        depth_sum += user * n;
        depths.extend(std::iter::repeat_n(user as f64, *n as usize));
        // A stack unwound to the end starts at a thread's or the process's entry point.
        if s.last().is_some_and(|r| ["_start", "clone3", "clone", "start_thread"].contains(&r.as_str())) {
            complete += n;
        }
    }
    Summary {
        samples,
        mean_depth: depth_sum as f64 / samples.max(1) as f64,
        median_depth: median(depths),
        complete: complete as f64 / samples.max(1) as f64,
    }
}

/// The functions most often at the leaf (self samples), with their share.
fn top_self(stacks: &[(Stack, u64)], n: usize) -> Vec<(String, f64)> {
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let mut leaf: HashMap<&str, u64> = HashMap::new();
    for (s, k) in stacks {
        *leaf.entry(s[0].as_str()).or_default() += k;
    }
    let mut top: Vec<(String, f64)> =
        leaf.into_iter().map(|(k, c)| (k.to_owned(), c as f64 / total.max(1) as f64)).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(n);
    top
}

/// Share of samples whose stack contains `function` anywhere (inclusive time).
fn inclusive(stacks: &[(Stack, u64)], function: &str) -> f64 {
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let with: u64 = stacks.iter().filter(|(s, _)| s.iter().any(|f| f == function)).map(|(_, n)| n).sum();
    with as f64 / total.max(1) as f64
}

/// CPU seconds (user + system) of this process's children that have been waited for, from
/// `/proc/self/stat` (cutime, cstime: fields 16 and 17, in 10 ms ticks).
fn waited_children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    (f[13].parse::<u64>().unwrap() + f[14].parse::<u64>().unwrap()) as f64 / 100.0
}

/// The stacks `perf script` prints of `data`, and the CPU seconds it took.
fn perf_script_timed(data: &Path, inline: bool) -> (Vec<(Stack, u64)>, f64) {
    let before = waited_children_cpu_secs();
    let stacks = perf_script(data, inline);
    (stacks, waited_children_cpu_secs() - before)
}

fn perf_script(data: &Path, inline: bool) -> Vec<(Stack, u64)> {
    let mut cmd = Command::new("perf");
    cmd.arg("script");
    if !inline {
        cmd.arg("--no-inline");
    }
    let out = cmd.args(["-F", "ip,sym,dso", "-i"]).arg(data).output().unwrap();
    perf_stacks(&String::from_utf8_lossy(&out.stdout)).into_iter().map(|s| (s, 1)).collect()
}

fn compare_with_perf(server_port: u16, o: &Opts) {
    if Command::new("perf").arg("--version").output().is_err() {
        println!("\n`perf` is not installed (Debian: linux-perf): comparison skipped");
        return;
    }
    // Without a channel every sample goes to the whole-process profile: one query gets them all.
    let demo = start_demo(None, o, o.load_rps);
    let dir = tempfile::tempdir().unwrap();
    let perf_data = dir.path().join("perf.data");
    std::thread::sleep(Duration::from_secs(3));
    let (sidecar, _metrics) = start_sidecar(
        server_port,
        None,
        Some(demo.proc.pid()),
        &[("E2E_UPLOAD_INTERVAL_MS", "10000"), ("E2E_SERVICE", "perfcmp")],
    );
    let started = Instant::now();
    let children_before = waited_children_cpu_secs();
    let status = Command::new("perf")
        .args(["record", "-q", "-F", "100", "--call-graph", "dwarf,16384", "-p"])
        .arg(demo.proc.pid().to_string())
        .arg("-o")
        .arg(&perf_data)
        .args(["--", "sleep"])
        .arg(o.perf.as_secs().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "perf record failed");
    let record_cpu = waited_children_cpu_secs() - children_before;
    // Its whole life: starting, reading symbols the first time, every sample.
    let sidecar_cpu = thread_cpu_secs(sidecar.pid());
    sidecar.terminate(); // uploads what it has
    drop(demo);
    let record_secs = started.elapsed().as_secs_f64();
    let (perf, script_cpu) = perf_script_timed(&perf_data, false);
    let (perf_inline, script_inline_cpu) = perf_script_timed(&perf_data, true);
    let ours = folded_stacks(&process_folded(server_port, "perfcmp"));
    let (p, pi, s) = (summarize(&perf), summarize(&perf_inline), summarize(&ours));
    println!("\nsame process, same {record_secs:.0} s, both at 100 Hz with a 16 KiB stack copy:\n");
    println!("| | spanprof-sidecar | perf (inlined frames expanded) | perf --no-inline |");
    println!("|---|---|---|---|");
    println!("| samples | {} | {} | |", s.samples, p.samples);
    let per_1000 = |cpu: f64, n: u64| cpu * 1e6 / n.max(1) as f64;
    println!(
        "| CPU per 1,000 samples (ms) | {:.1} (whole life) | record {:.1} + script {:.1} | record {:.1} + script {:.1} |",
        per_1000(sidecar_cpu, s.samples),
        per_1000(record_cpu, p.samples),
        per_1000(script_inline_cpu, p.samples),
        per_1000(record_cpu, p.samples),
        per_1000(script_cpu, p.samples)
    );
    println!(
        "| user frames per sample, mean / median | {:.1} / {:.0} | {:.1} / {:.0} | {:.1} / {:.0} |",
        s.mean_depth, s.median_depth, pi.mean_depth, pi.median_depth, p.mean_depth, p.median_depth
    );
    println!(
        "| stacks unwound to the thread entry | {:.1} % | {:.1} % | {:.1} % |",
        s.complete * 100.0,
        pi.complete * 100.0,
        p.complete * 100.0
    );
    // perf's top functions by self samples (physical functions), and the time each tool puts
    // under them: inclusive shares do not depend on how each tool presents inlined calls.
    let top = top_self(&perf, 10);
    let ours_top: Vec<String> = top_self(&ours, 10).into_iter().map(|(k, _)| k).collect();
    let theirs_top: Vec<String> = top.iter().map(|(k, _)| k.clone()).collect();
    let common = ours_top.iter().filter(|k| theirs_top.contains(k)).count();
    println!("| top-10 self functions in common with perf --no-inline | {common} of 10 | | |");
    println!("\n| function (perf's top 10 by self samples) | perf self | perf inclusive | sidecar inclusive |");
    println!("|---|---|---|---|");
    for (name, share) in &top {
        println!(
            "| `{name}` | {:.1} % | {:.1} % | {:.1} % |",
            share * 100.0,
            inclusive(&perf, name) * 100.0,
            inclusive(&ours, name) * 100.0
        );
    }
}
