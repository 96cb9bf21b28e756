//! The sampler's memory over a long run: the demo app under steady load, the sidecar sampling it
//! at 100 Hz and uploading every 10 s (to a live server, or with `--server down` to a port nobody
//! listens on, so every upload fails and the backlog stays full), its resident memory read every
//! `--every-secs`. The verdict is the growth over the second half of the run, when caches have
//! warmed up: a sampler whose memory keeps climbing is OOM-killed at its limit (256 Mi by
//! default) sooner or later, however slowly.
//!
//! `cargo bench -p spanprof-e2e --bench soak -- [--minutes 30] [--server up|down]
//!  [--buffer-bytes 51200] [--load-rps 200] [--every-secs 60]` (root or CAP_PERFMON; results in
//! BENCHMARKS.md). Prints one row per reading (VmRSS split into anonymous and file-backed
//! memory, with the sidecar's own gauges) and the growth per hour.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

struct Opts {
    minutes: u64,
    server_up: bool,
    buffer_bytes: usize,
    load_rps: u32,
    every: Duration,
}

fn opts() -> Opts {
    let mut o =
        Opts { minutes: 30, server_up: true, buffer_bytes: 50 << 10, load_rps: 200, every: Duration::from_secs(60) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--minutes" => o.minutes = value.parse().expect("--minutes N"),
            "--server" => o.server_up = value != "down",
            "--buffer-bytes" => o.buffer_bytes = value.parse().expect("--buffer-bytes N"),
            "--load-rps" => o.load_rps = value.parse().expect("--load-rps N"),
            "--every-secs" => o.every = Duration::from_secs(value.parse().expect("--every-secs N")),
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

/// `VmRSS`, `RssAnon` and `RssFile` of a process, in MiB.
fn memory_mib(pid: u32) -> [f64; 3] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    ["VmRSS:", "RssAnon:", "RssFile:"].map(|key| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    })
}

/// Least-squares slope of `(minutes, MiB)` points, in MiB per hour.
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) =
        points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (y - my), b + (x - mx) * (x - mx)));
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

fn main() {
    let o = opts();
    let data = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    let server_port = free_port();
    let _server = o.server_up.then(|| start_server(server_port, data.path()));

    let demo_port = free_port();
    let demo = Proc(
        Command::new(env!("CARGO_BIN_EXE_e2e-demo"))
            .env("E2E_DEMO_LISTEN", format!("127.0.0.1:{demo_port}"))
            .env("E2E_LOAD_RPS", o.load_rps.to_string())
            .env("SPANPROF_CONTEXT_DIR", ctx.path())
            .spawn()
            .unwrap(),
    );
    wait_ready(&format!("http://127.0.0.1:{demo_port}/healthz"), "demo");
    let buffer = o.buffer_bytes.to_string();
    let (sidecar, metrics) = start_sidecar(
        server_port,
        Some(ctx.path()),
        Some(demo.pid()),
        &[("E2E_UPLOAD_INTERVAL_MS", "10000"), ("E2E_SERVICE", "soak"), ("E2E_MAX_BUFFER_BYTES", &buffer)],
    );
    let pid = sidecar.pid();
    println!(
        "soak: {} min, server {}, upload buffer {} bytes, demo at {} req/s; sidecar pid {pid}",
        o.minutes,
        if o.server_up { "up" } else { "down" },
        o.buffer_bytes,
        o.load_rps
    );
    println!();
    println!(
        "| minute | VmRSS MiB | anon | file | samples | symbols cached | attached threads | buffered bytes | dropped uploads |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let start = Instant::now();
    let end = start + Duration::from_secs(o.minutes * 60);
    let mut readings = Vec::new();
    loop {
        let minute = start.elapsed().as_secs_f64() / 60.0;
        let [rss, anon, file] = memory_mib(pid);
        let gauge = |name: &str| metric(metrics, &format!("spanprof_sidecar_{name}"));
        println!(
            "| {minute:.1} | {rss:.1} | {anon:.1} | {file:.1} | {} | {} | {} | {} | {} |",
            gauge("samples_total"),
            gauge("symbols_cached"),
            gauge("attached_threads"),
            gauge("buffered_bytes"),
            gauge("dropped_uploads_total"),
        );
        readings.push((minute, rss, anon));
        if Instant::now() >= end {
            break;
        }
        std::thread::sleep(o.every.min(end.saturating_duration_since(Instant::now())).max(Duration::from_secs(1)));
    }
    let half = o.minutes as f64 / 2.0;
    let second_half: Vec<_> = readings.iter().filter(|r| r.0 >= half).collect();
    let rss: Vec<(f64, f64)> = second_half.iter().map(|r| (r.0, r.1)).collect();
    let anon: Vec<(f64, f64)> = second_half.iter().map(|r| (r.0, r.2)).collect();
    let first = readings.first().map_or(0.0, |r| r.1);
    let last = readings.last().map_or(0.0, |r| r.1);
    println!();
    println!(
        "RSS {first:.1} → {last:.1} MiB; growth over the second half: {:+.2} MiB/h (anonymous {:+.2} MiB/h)",
        slope_per_hour(&rss),
        slope_per_hour(&anon)
    );
    sidecar.terminate();
    demo.terminate();
}
