//! `e2e-workload`: threads that alternate root spans `alpha` and `beta`, each burning CPU in its
//! own functions (`spin_alpha`/`burn_alpha`, `spin_beta`/`burn_beta`) and nowhere else, and print
//! each span's window: `window tid=… span_id=… name=… start_ns=… end_ns=… cpu_ns=…` (the
//! thread's on-CPU time inside the span).
//! Settings: `E2E_THREADS` (2), `E2E_SPANS` (spans per thread, 20), `E2E_SPAN_MS` (60; or
//! `E2E_SPAN_US` in microseconds), `E2E_GAP_MS` (15: the pause between spans),
//! `E2E_THREAD_DELAY_MS` (0: threads start after that delay, to test threads created after attach),
//! `E2E_QUIET` (1: print no windows, for runs of many short spans nobody reads).
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use tracing::info_span;
use tracing_subscriber::prelude::*;

#[inline(never)]
fn burn_alpha(n: u64) -> u64 {
    let mut x = n | 1;
    for i in 0..20_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    black_box(x)
}

#[inline(never)]
fn burn_beta(n: u64) -> f64 {
    let mut s = n as f64;
    for i in 1..6_000u64 {
        s = (s + i as f64).sqrt() * 1.000_1;
    }
    black_box(s)
}

#[inline(never)]
fn spin_alpha(length: Duration) -> u64 {
    let end = Instant::now() + length;
    let mut acc = 0u64;
    while Instant::now() < end {
        acc = acc.wrapping_add(burn_alpha(acc));
    }
    black_box(acc)
}

#[inline(never)]
fn spin_beta(length: Duration) -> f64 {
    let end = Instant::now() + length;
    let mut acc = 0.0;
    while Instant::now() < end {
        acc += burn_beta(acc as u64);
    }
    black_box(acc)
}

/// This thread's on-CPU time so far (ns), from `/proc/thread-self/schedstat`.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() -> anyhow::Result<()> {
    let layer = spanprof::SpanProfLayer::from_env()?;
    tracing_subscriber::registry().with(layer).init();
    let (threads, spans, delay) = (env("E2E_THREADS", 2), env("E2E_SPANS", 20), env("E2E_THREAD_DELAY_MS", 0));
    let length = Duration::from_micros(env("E2E_SPAN_US", env("E2E_SPAN_MS", 60) * 1000));
    let gap = Duration::from_millis(env("E2E_GAP_MS", 15));
    let quiet = env("E2E_QUIET", 0) == 1;
    println!("ready pid={}", std::process::id());
    std::thread::sleep(Duration::from_millis(delay));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let tid = spanprof_channel::current_tid();
                for i in 0..spans {
                    let alpha = (i + t) % 2 == 0;
                    let span = if alpha { info_span!("alpha") } else { info_span!("beta") };
                    let root = spanprof::root_of(&span);
                    let guard = span.enter();
                    let start = spanprof_channel::monotonic_ns();
                    let cpu0 = thread_cpu_ns();
                    if alpha {
                        spin_alpha(length);
                    } else {
                        spin_beta(length);
                    }
                    let cpu = thread_cpu_ns().saturating_sub(cpu0);
                    let end = spanprof_channel::monotonic_ns();
                    drop(guard);
                    if !quiet {
                        let id = root.map(|r| r.profile_id_hex()).unwrap_or_default();
                        let name = if alpha { "alpha" } else { "beta" };
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(
                            out,
                            "window tid={tid} span_id={id} name={name} start_ns={start} end_ns={end} cpu_ns={cpu}"
                        );
                        let _ = out.flush();
                    }
                    std::thread::sleep(gap);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    println!("done");
    Ok(())
}
