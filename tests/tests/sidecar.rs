//! End to end with real processes: spanprof-server (embedded store), a workload that runs root
//! spans `alpha`/`beta` burning CPU in known functions and logs each span's window, and the
//! sampler sidecar attached to it. Needs perf_event_open on other processes (root or CAP_PERFMON).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// The tests share two cores: one at a time keeps sample counts meaningful.
static SERIAL: Mutex<()> = Mutex::new(());

/// What most tests here start with: the lock that runs them one at a time, a data directory and a
/// span-context directory, and the server on a free port (bound in this order, so the server
/// stops before its data directory goes).
fn serve() -> (std::sync::MutexGuard<'static, ()>, tempfile::TempDir, tempfile::TempDir, u16, Proc) {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (data, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let server = start_server(port, data.path());
    (serial, data, ctx, port, server)
}

struct Workload {
    proc: Proc,
    out: BufReader<ChildStdout>,
}

fn start_workload(ctx: Option<&Path>, vars: &[(&str, &str)]) -> Workload {
    start_workload_under(&[], ctx, vars)
}

/// [`start_workload`] run through `wrapper` (a command that execs its arguments).
/// A workload whose 24 spans of 60 ms (threads 300 ms apart) outlast several upload intervals:
/// what the upload-backlog tests buffer while the server is away.
fn start_backlog_workload(ctx: &Path) -> Workload {
    start_workload(Some(ctx), &[("E2E_SPANS", "24"), ("E2E_SPAN_MS", "60"), ("E2E_THREAD_DELAY_MS", "300")])
}

fn start_workload_under(wrapper: &[&str], ctx: Option<&Path>, vars: &[(&str, &str)]) -> Workload {
    let mut cmd = command_under(wrapper, env!("CARGO_BIN_EXE_e2e-workload"));
    cmd.stdout(Stdio::piped()).env_remove("SPANPROF_CONTEXT_DIR");
    if let Some(ctx) = ctx {
        cmd.env("SPANPROF_CONTEXT_DIR", ctx);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "{line}");
    Workload { proc: Proc(child), out }
}

#[derive(Debug, Clone)]
struct Window {
    span_id: String,
    name: String,
    start_ns: u64,
    end_ns: u64,
    cpu_ns: u64,
}

impl Workload {
    /// Reads span windows until the workload says it is done.
    fn windows(&mut self) -> Vec<Window> {
        let mut out = Vec::new();
        for line in (&mut self.out).lines() {
            let line = line.unwrap();
            if line == "done" {
                break;
            }
            let kv: HashMap<&str, &str> = line.split_whitespace().filter_map(|w| w.split_once('=')).collect();
            out.push(Window {
                span_id: kv["span_id"].to_owned(),
                name: kv["name"].to_owned(),
                start_ns: kv["start_ns"].parse().unwrap(),
                end_ns: kv["end_ns"].parse().unwrap(),
                cpu_ns: kv["cpu_ns"].parse().unwrap(),
            });
        }
        out
    }
}

/// Folded stacks of a span profile (empty when it has no samples).
fn span_folded(server: u16, span_id: &str) -> Vec<(String, u64)> {
    let r = http().get(format!("http://127.0.0.1:{server}/api/v1/profiles/{span_id}?format=folded")).send().unwrap();
    if r.status().as_u16() == 404 {
        return Vec::new();
    }
    assert!(r.status().is_success(), "{}", r.status());
    parse_folded(&r.text().unwrap())
}

/// Samples per span: (right function, wrong function), and samples of either function that
/// ended up in the whole-process profile.
#[derive(Debug, Default)]
struct Tally {
    right: u64,
    wrong: u64,
    leaked: u64,
    spans_with_samples: usize,
    /// A few span stacks with neither workload function, to tell what went wrong when a count
    /// is off (e.g. unsymbolized or truncated stacks).
    neither: Vec<String>,
}

fn tally(server: u16, windows: &[Window]) -> Tally {
    let mut t = Tally::default();
    for w in windows {
        let (mine, other) = if w.name == "alpha" { ("spin_alpha", "spin_beta") } else { ("spin_beta", "spin_alpha") };
        let folded = span_folded(server, &w.span_id);
        if !folded.is_empty() {
            t.spans_with_samples += 1;
        }
        for (stack, n) in folded {
            if stack.contains(mine) {
                t.right += n;
            } else if stack.contains(other) {
                t.wrong += n;
            } else if t.neither.len() < 3 {
                t.neither.push(format!("{stack} {n}"));
            }
        }
    }
    for (stack, n) in process_folded(server, "e2e") {
        if stack.contains("spin_alpha") || stack.contains("spin_beta") {
            t.leaked += n;
        }
    }
    t
}

/// Every sample inside a span window in that span's profile (at least 99 %, none in the other
/// span's), about 100 Hz of the workload's on-CPU time in its spans, and most spans sampled.
fn assert_attribution_is_exact(server: u16, windows: &[Window]) {
    let t = tally(server, windows);
    // 100 Hz of each thread's on-CPU time inside its spans (as the workload measured it).
    let expected = windows.iter().map(|w| w.cpu_ns).sum::<u64>() / 10_000_000;
    let wall = windows.iter().map(|w| w.end_ns - w.start_ns).sum::<u64>() / 10_000_000;
    eprintln!("{t:?}, expected {expected} samples from on-CPU time ({wall} from wall time)");
    assert_eq!(t.wrong, 0, "samples attributed to the wrong span");
    let total = t.right + t.wrong + t.leaked;
    assert!(t.right as f64 >= 0.99 * total as f64, "only {} of {total} samples in the right span", t.right);
    assert!(expected >= 20, "the workload got too little CPU to judge: {expected}");
    assert!(
        t.right * 10 >= expected * 5 && t.right * 10 <= expected * 15,
        "{t:?}: {} samples for {expected} expected",
        t.right
    );
    assert!(
        t.spans_with_samples * 10 >= windows.len() * 8,
        "{} of {} spans have samples",
        t.spans_with_samples,
        windows.len()
    );
}

#[test]
fn span_profiles_hold_their_own_functions_and_attribution_is_exact() {
    let (_serial, _data, ctx, port, server) = serve();
    // The workload's threads start after the sidecar attached: they are followed by inheritance.
    let mut w = start_workload(
        Some(ctx.path()),
        &[("E2E_THREADS", "2"), ("E2E_SPANS", "16"), ("E2E_SPAN_MS", "60"), ("E2E_THREAD_DELAY_MS", "1000")],
    );
    let (sidecar, metrics) = start_sidecar(port, Some(ctx.path()), Some(w.proc.pid()), &[]);
    let windows = w.windows();
    assert_eq!(windows.len(), 32);
    assert!(metric(metrics, "spanprof_sidecar_attached_processes") == 1);
    let lost = metric(metrics, "spanprof_sidecar_lost_records_total");
    let incomplete = metric(metrics, "spanprof_sidecar_unwind_truncated_total")
        + metric(metrics, "spanprof_sidecar_unwind_failures_total");
    let sampled = metric(metrics, "spanprof_sidecar_samples_total");
    sidecar.terminate();

    eprintln!("lost records {lost}");
    assert_attribution_is_exact(port, &windows);

    // A span profile by ID: its name, its functions (symbolized, demangled), plausible counts.
    let alpha = windows.iter().find(|w| w.name == "alpha" && !span_folded(port, &w.span_id).is_empty()).unwrap();
    let json: serde_json::Value = http()
        .get(format!("http://127.0.0.1:{port}/api/v1/profiles/{}", alpha.span_id))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(json["profile"]["span_name"], "alpha");
    assert_eq!(json["profile"]["service_name"], "e2e");
    let samples = json["profile"]["samples"].as_u64().unwrap();
    assert!((1..=12).contains(&samples), "{samples} samples for a 60 ms span at 100 Hz");
    let folded = span_folded(port, &alpha.span_id);
    assert!(folded.iter().any(|(s, _)| s.contains("e2e_workload::spin_alpha;e2e_workload::burn_alpha")), "{folded:?}");
    // Complete DWARF stacks, down to the thread entry point, for (nearly) every sample.
    let complete: u64 = folded.iter().filter(|(s, _)| s.starts_with("clone3;start_thread;")).map(|(_, n)| n).sum();
    let all: u64 = folded.iter().map(|(_, n)| n).sum();
    assert!(complete * 2 >= all, "{folded:?}");
    assert!(incomplete * 20 <= sampled, "{incomplete} of {sampled} samples not unwound to the end");
    drop(server);
}

#[test]
fn a_container_cgroup_is_sampled_as_a_whole_with_exact_attribution() {
    let (_serial, _data, ctx, port, _server) = serve();
    // The workload alone in a cgroup, as in a container; its threads start after the attach.
    let cgroup = Cgroup::new("spanprof-e2e-scope");
    let mut w = start_workload(
        Some(ctx.path()),
        &[("E2E_THREADS", "2"), ("E2E_SPANS", "16"), ("E2E_SPAN_MS", "60"), ("E2E_THREAD_DELAY_MS", "1000")],
    );
    cgroup.add(w.proc.pid());
    let (sidecar, metrics) = start_sidecar(port, Some(ctx.path()), Some(w.proc.pid()), &[]);
    let windows = w.windows();
    let cgroups = metric(metrics, "spanprof_sidecar_attached_cgroups");
    let threads = metric(metrics, "spanprof_sidecar_attached_threads");
    sidecar.terminate();
    assert_eq!(cgroups, 1, "the workload's cgroup is not sampled as a whole");
    assert_eq!(threads, 0, "per-thread events besides the cgroup's");

    // Each sample once: not doubled by per-thread events, none missing.
    assert_attribution_is_exact(port, &windows);
}

/// A Kubernetes node on cgroup v1: `perf_event` is bound to a v1 hierarchy, and the app's cgroup
/// is reachable only through the app's own mount of it (the runtime bind-mounts the container's
/// cgroup, so the mount's root is not `/`); the sampler has no v1 mount of its own. It samples
/// that cgroup as a whole through the app's mount — no per-thread events — and every sample is
/// attributed exactly, as on the unified hierarchy.
#[test]
fn a_cgroup_v1_container_is_sampled_as_a_whole_through_its_own_mount() {
    let (_serial, _data, ctx, port, _server) = serve();
    let mut v1 = PerfEventV1::new();
    let cgroup = v1.cgroup("spanprof-e2e-v1");
    let view = tempfile::tempdir().unwrap();
    // The workload's mount namespace as a v1 container's: its own cgroup bind-mounted, the whole
    // hierarchy not mounted; it joins the cgroup before its threads start.
    let script = format!(
        "mount --bind {child} {view} && umount {whole} && echo $$ > {view}/cgroup.procs && exec \"$@\"",
        child = cgroup.dir().display(),
        view = view.path().display(),
        whole = v1.path().display()
    );
    let mut w = start_workload_under(
        &["unshare", "--mount", "--propagation", "private", "sh", "-c", &script, "sh"],
        Some(ctx.path()),
        &[("E2E_THREADS", "2"), ("E2E_SPANS", "16"), ("E2E_SPAN_MS", "60"), ("E2E_THREAD_DELAY_MS", "1000")],
    );
    let members = std::fs::read_to_string(cgroup.dir().join("cgroup.procs")).unwrap();
    assert_eq!(members.trim(), w.proc.pid().to_string(), "the workload is alone in its v1 cgroup");
    v1.unmount_from_host();
    let (sidecar, metrics) = start_sidecar(port, Some(ctx.path()), Some(w.proc.pid()), &[]);
    let windows = w.windows();
    let by_v1 = metric(metrics, "spanprof_sidecar_sampling_scope_processes{scope=\"cgroup_v1\"}");
    let by_thread = metric(metrics, "spanprof_sidecar_sampling_scope_processes{scope=\"thread\"}");
    let cgroups = metric(metrics, "spanprof_sidecar_attached_cgroups");
    let threads = metric(metrics, "spanprof_sidecar_attached_threads");
    sidecar.terminate();
    assert_eq!((by_v1, by_thread), (1, 0), "the workload is not sampled through its v1 cgroup");
    assert_eq!(cgroups, 1);
    assert_eq!(threads, 0, "per-thread events besides the cgroup's");
    assert_attribution_is_exact(port, &windows);
    drop(w);
    v1.mount_on_host();
}

#[test]
fn without_a_channel_the_whole_process_profile_still_works() {
    let (_serial, _data, ctx, port, _server) = serve();
    let mut w = start_workload(
        None,
        &[
            ("E2E_SPANS", "10"),
            ("E2E_SPAN_MS", "60"),
            ("E2E_THREAD_DELAY_MS", "300"),
            // What the operator sets in an app container: it names the process's series.
            ("SPANPROF_SERVICE_NAME", "e2e-own-env"),
            ("SPANPROF_CONTAINER_NAME", "worker"),
        ],
    );
    let (sidecar, metrics) = start_sidecar(port, Some(ctx.path()), Some(w.proc.pid()), &[]);
    let windows = w.windows();
    assert!(windows.iter().all(|w| w.span_id.is_empty()), "the SDK must be off without SPANPROF_CONTEXT_DIR");
    std::thread::sleep(Duration::from_millis(200));
    let no_channel = metric(metrics, "spanprof_sidecar_samples_total{attribution=\"no_channel\"}");
    let unattributed = metric(metrics, "spanprof_sidecar_unattributed_samples_total");
    sidecar.terminate();
    assert!(no_channel > 10, "{no_channel} samples without channel");
    assert_eq!(unattributed, no_channel);
    // The process's own SPANPROF_SERVICE_NAME wins over the sidecar's --service-name (e2e).
    assert!(process_folded(port, "e2e").is_empty());
    let folded = process_folded(port, "e2e-own-env");
    let alpha: u64 = folded.iter().filter(|(s, _)| s.contains("spin_alpha")).map(|(_, n)| n).sum();
    let beta: u64 = folded.iter().filter(|(s, _)| s.contains("spin_beta")).map(|(_, n)| n).sum();
    assert!(alpha > 5 && beta > 5, "whole-process profile: alpha {alpha}, beta {beta}");
}

/// The sampler drains its rings once a second. A thread that changes its root span 2,000 times a
/// second overwrites its 1,024-entry span history in half that: its older samples come back
/// `late`, and the sampler must then drain often enough that they stop coming.
#[test]
fn a_thread_changing_spans_faster_than_a_second_of_history_makes_the_sampler_drain_sooner() {
    let (_serial, _data, ctx, port, _server) = serve();
    // One busy thread, back-to-back root spans of 1 ms (two transitions each), for up to 30 s.
    let w = start_workload(
        Some(ctx.path()),
        &[
            ("E2E_THREADS", "1"),
            ("E2E_SPANS", "30000"),
            ("E2E_SPAN_US", "1000"),
            ("E2E_GAP_MS", "0"),
            ("E2E_QUIET", "1"),
        ],
    );
    let (sidecar, metrics) = start_sidecar(port, Some(ctx.path()), Some(w.proc.pid()), &[]);
    let late = || metric(metrics, "spanprof_sidecar_samples_total{attribution=\"late\"}");
    let in_spans = || metric(metrics, "spanprof_sidecar_samples_total{attribution=\"span\"}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while late() == 0 {
        assert!(Instant::now() < deadline, "no sample was late at a drain a second apart: the test proves nothing");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The drain under way when the first late sample was found may still bring a few.
    std::thread::sleep(Duration::from_millis(1500));
    let (late_before, spans_before) = (late(), in_spans());
    std::thread::sleep(Duration::from_secs(4));
    let (late_after, spans_after) = (late(), in_spans());
    sidecar.terminate();
    assert_eq!(late_after, late_before, "samples still came too late after the sampler noticed");
    assert!(spans_after > spans_before + 200, "span samples {spans_before} → {spans_after} in 4 s of a busy thread");
}

/// Rings sized by what the targets may use: with a CPU limit of half a CPU the per-CPU rings
/// hold a quarter second each (the floor) instead of a second, and sampling goes on.
#[test]
fn a_cpu_limit_makes_the_rings_smaller() {
    let (_serial, _data, ctx, port, _server) = serve();
    let mut w = start_workload(Some(ctx.path()), &[("E2E_SPANS", "10"), ("E2E_SPAN_MS", "60")]);
    let (limited, limited_metrics) =
        start_sidecar(port, Some(ctx.path()), Some(w.proc.pid()), &[("E2E_APP_CPUS", "0.5")]);
    let (unlimited, unlimited_metrics) = start_sidecar(port, Some(ctx.path()), Some(w.proc.pid()), &[]);
    w.windows();
    std::thread::sleep(Duration::from_millis(1200));
    let ring_bytes = |m| metric(m, "spanprof_sidecar_ring_bytes");
    let (small, full) = (ring_bytes(limited_metrics), ring_bytes(unlimited_metrics));
    let sampled = metric(limited_metrics, "spanprof_sidecar_samples_total");
    limited.terminate();
    unlimited.terminate();
    // A second of 100 Hz samples of 16 KiB stacks is 2 MiB a CPU once rounded to a power of two.
    assert!(full > 0 && full % (2 << 20) == 0, "rings of a second each: {full} bytes");
    assert_eq!(small * 4, full, "a quarter second each");
    assert!(sampled > 10, "{sampled} samples through the small rings");
}

#[test]
fn every_thread_is_sampled_under_a_low_soft_open_file_limit() {
    let (_serial, _data, ctx, port, _server) = serve();
    // 40 threads running before the sidecar attaches: one event fd per thread and CPU, at least
    // 40, over a soft limit of 32 (the hard limit stays as it is, and is what the sidecar may use).
    let threads = 40;
    let mut w = start_workload(
        Some(ctx.path()),
        // 8 spans of 40 ms, 200 ms apart: alive (at least 1.9 s) when the attach is checked, and
        // few enough at a time on CPU that most spans get a sample.
        &[("E2E_THREADS", &threads.to_string()), ("E2E_SPANS", "8"), ("E2E_SPAN_MS", "40"), ("E2E_GAP_MS", "200")],
    );
    let (sidecar, metrics) =
        start_sidecar_under(&["prlimit", "--nofile=32:"], port, Some(ctx.path()), Some(w.proc.pid()), &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let attached = metric(metrics, "spanprof_sidecar_attached_threads");
    let errors = metric(metrics, "spanprof_sidecar_attach_errors_total");
    let windows = w.windows();
    sidecar.terminate();
    assert_eq!(errors, 0, "threads the sidecar could not attach to");
    assert!(attached > threads, "{attached} threads attached");
    let t = tally(port, &windows);
    assert_eq!(t.wrong, 0, "{t:?}");
    // Spans that ended before the attach have none; most ran after it.
    assert!(
        t.spans_with_samples * 2 >= windows.len(),
        "{} of {} spans have samples",
        t.spans_with_samples,
        windows.len()
    );
}

#[test]
fn an_unprivileged_sampler_under_a_small_locked_memory_limit_still_samples() {
    use std::os::unix::fs::PermissionsExt;
    let (_serial, _data, ctx, port, _server) = serve();
    std::fs::set_permissions(ctx.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // What `capabilities: none` gives the sampler: the app's own (non-root) user, no capabilities,
    // and here the 64 KiB RLIMIT_MEMLOCK many container runtimes default to. The kernel then lets
    // the user lock ~516 KiB of perf rings per CPU, less than the sidecar asks for by default.
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    let mut w = start_workload_under(
        &nobody,
        Some(ctx.path()),
        &[("E2E_SPANS", "10"), ("E2E_SPAN_MS", "60"), ("E2E_THREAD_DELAY_MS", "500")],
    );
    let mut wrapper = vec!["prlimit", "--memlock=65536:65536"];
    wrapper.extend(nobody);
    let (sidecar, metrics) = start_sidecar_under(&wrapper, port, Some(ctx.path()), Some(w.proc.pid()), &[]);
    let windows = w.windows();
    std::thread::sleep(Duration::from_millis(200));
    let permitted = metric(metrics, "spanprof_sidecar_sampling_permitted");
    let user_only = metric(metrics, "spanprof_sidecar_kernel_samples_excluded");
    let in_spans = metric(metrics, "spanprof_sidecar_samples_total{attribution=\"span\"}");
    sidecar.terminate();
    assert_eq!(permitted, 1, "the unprivileged sampler did not start sampling");
    assert_eq!(user_only, 1, "without CAP_PERFMON kernel samples are excluded");
    assert!(in_spans > 10, "{in_spans} samples in spans");
    let t = tally(port, &windows);
    assert_eq!(t.wrong, 0, "{t:?}");
    assert!(t.right > 10, "{t:?}");
}

/// Waits until the sampler on `metrics` has pushed at least once and its backlog is empty, and
/// checks that nothing was dropped on the way.
fn assert_backlog_delivered(metrics: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while metric(metrics, "spanprof_sidecar_buffered_bytes") > 0
        || metric(metrics, "spanprof_sidecar_uploads_total") == 0
    {
        assert!(Instant::now() < deadline, "the backlog was never delivered");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(metrics, "spanprof_sidecar_dropped_uploads_total"), 0);
}

#[test]
fn server_down_then_up_delivers_the_buffered_profiles() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (data, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let mut w = start_backlog_workload(ctx.path());
    let (sidecar, metrics) = start_sidecar(port, Some(ctx.path()), Some(w.proc.pid()), &[]);
    // Nothing listens yet: uploads fail and wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(metrics, "spanprof_sidecar_push_errors_total") == 0 {
        assert!(Instant::now() < deadline, "no push attempt failed while the server was down");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(metrics, "spanprof_sidecar_uploads_total"), 0);
    let _server = start_server(port, data.path());
    let windows = w.windows();
    assert_backlog_delivered(metrics, Duration::from_secs(15));
    sidecar.terminate();
    let t = tally(port, &windows);
    eprintln!("{t:?}");
    assert_eq!(t.wrong, 0);
    // The spans that ran while the server was down are there too.
    let first = &windows[0];
    assert!(!span_folded(port, &first.span_id).is_empty() || !span_folded(port, &windows[1].span_id).is_empty());
    assert!(
        t.spans_with_samples * 10 >= windows.len() * 8,
        "{} of {} spans have samples",
        t.spans_with_samples,
        windows.len()
    );
}

/// A server that takes requests and never answers them: it accepts, reads what comes and holds
/// the connection (a 200's status line would be an acknowledgement, so it sends nothing).
struct StallingServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StallingServer {
    fn start(port: u16) -> StallingServer {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                        let mut buf = [0u8; 4096];
                        let _ = conn.read(&mut buf);
                        held.push(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            // The listener and every held connection close here.
        });
        StallingServer { stop, thread: Some(thread) }
    }
}

impl Drop for StallingServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_server_that_stalls_delays_uploads_but_neither_sampling_nor_data() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (data, ctx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let stalling = StallingServer::start(port);
    let mut w = start_backlog_workload(ctx.path());
    let (sidecar, metrics) = start_sidecar(port, Some(ctx.path()), Some(w.proc.pid()), &[]);
    let windows = w.windows();
    // The first push hangs until the sampler's upload timeout gives up on it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(metrics, "spanprof_sidecar_push_errors_total") == 0 {
        assert!(Instant::now() < deadline, "a stalled push never timed out");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(metrics, "spanprof_sidecar_uploads_total"), 0, "nothing was answered");
    // Sampling went on meanwhile, and the sampler says it is healthy.
    let samples = metric(metrics, "spanprof_sidecar_samples_total");
    assert!(samples > 0, "no samples while uploads hung");
    let health = http().get(format!("http://127.0.0.1:{metrics}/healthz")).send().unwrap();
    assert!(health.status().is_success(), "{:?}", health.text());
    assert!(metric(metrics, "spanprof_sidecar_buffered_bytes") > 0, "the failed upload waits in the backlog");

    // A working server takes the port: the backlog arrives whole.
    drop(stalling);
    let _server = start_server(port, data.path());
    assert_backlog_delivered(metrics, Duration::from_secs(45));
    sidecar.terminate();
    let t = tally(port, &windows);
    eprintln!("{t:?}");
    assert_eq!(t.wrong, 0);
    assert!(
        t.spans_with_samples * 10 >= windows.len() * 8,
        "{} of {} spans have samples",
        t.spans_with_samples,
        windows.len()
    );
}

#[test]
fn discovers_processes_by_channel_and_follows_a_restarted_target() {
    let (_serial, _data, ctx, port, _server) = serve();
    // No --pid: every process with a channel file in the directory.
    let (sidecar, metrics) = start_sidecar(port, Some(ctx.path()), None, &[]);
    let mut all = Vec::new();
    for _ in 0..2 {
        // Discovery runs every second: the threads start after it found the process.
        let mut w = start_workload(
            Some(ctx.path()),
            &[("E2E_SPANS", "8"), ("E2E_SPAN_MS", "60"), ("E2E_THREAD_DELAY_MS", "1500")],
        );
        all.push(w.windows());
        drop(w);
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(metric(metrics, "spanprof_sidecar_attached_processes"), 0, "exited targets must be detached");
    sidecar.terminate();
    for windows in &all {
        let t = tally(port, windows);
        eprintln!("{t:?}");
        assert_eq!(t.wrong, 0);
        assert!(
            t.spans_with_samples * 10 >= windows.len() * 7,
            "{} of {} spans have samples",
            t.spans_with_samples,
            windows.len()
        );
    }
}

#[test]
fn a_taken_metrics_port_does_not_stop_sampling() {
    let (_serial, _data, _ctx, port, _server) = serve();
    let mut w = start_workload(None, &[("E2E_SPANS", "10"), ("E2E_SPAN_MS", "60"), ("E2E_THREAD_DELAY_MS", "300")]);
    // Another process already listens where the sampler would serve its metrics (an app on the
    // same port, or a second hostNetwork pod on the node).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let mut sidecar = std::process::Command::new(env!("CARGO_BIN_EXE_e2e-sidecar"))
        .env("E2E_SERVER_URL", format!("http://127.0.0.1:{port}"))
        .env("E2E_PID", w.proc.pid().to_string())
        .env("E2E_LISTEN", &listen)
        .env("E2E_SERVICE", "e2e-port-taken")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    w.windows();
    let deadline = Instant::now() + Duration::from_secs(20);
    let folded = loop {
        assert!(sidecar.try_wait().unwrap().is_none(), "the sampler exited when its metrics port was taken");
        let folded = process_folded(port, "e2e-port-taken");
        if folded.iter().any(|(s, _)| s.contains("spin_alpha")) || Instant::now() > deadline {
            break folded;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(folded.iter().any(|(s, _)| s.contains("spin_alpha")), "profiles still arrive: {folded:?}");
    let _ = sidecar.kill();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut sidecar.stderr.take().unwrap(), &mut log).unwrap();
    let _ = sidecar.wait();
    assert!(log.contains(&listen) && log.contains("SPANPROF_SIDECAR_LISTEN"), "the log names the address: {log}");
}

#[test]
fn hostile_channel_files_neither_crash_nor_stall_the_sampler() {
    let (_serial, _data, ctx, port, server) = serve();
    let vars = [("E2E_SPANS", "400"), ("E2E_SPAN_MS", "50")];
    // Two apps; the first will truncate its own channel file (which may well kill it, as its
    // writer maps the file too), the second keeps working.
    let (mut hostile, mut healthy) = (start_workload(Some(ctx.path()), &vars), start_workload(Some(ctx.path()), &vars));
    let (hostile_pid, healthy_pid) = (hostile.proc.pid(), healthy.proc.pid());
    // Their span logs are read on the side, so they never block on a full pipe.
    let readers = [
        std::thread::spawn(move || {
            hostile.windows();
            hostile
        }),
        std::thread::spawn(move || {
            healthy.windows();
            healthy
        }),
    ];
    // Without a pid the sampler takes every process with a channel file in the directory.
    let (mut sidecar, metrics) = start_sidecar(port, Some(ctx.path()), None, &[]);
    let samples = || metric(metrics, "spanprof_sidecar_samples_total");
    let deadline = Instant::now() + Duration::from_secs(20);
    while samples() < 20 {
        assert!(Instant::now() < deadline, "no samples before the hostile files");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A FIFO and a link to a root-only file named like channels of live processes (ours and the
    // server's), then the hostile app truncates its channel file under the reader.
    let fifo = ctx.path().join(spanprof_channel::file_name(std::process::id()));
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::os::unix::fs::symlink("/etc/shadow", ctx.path().join(spanprof_channel::file_name(server.pid()))).unwrap();
    let channel = ctx.path().join(spanprof_channel::file_name(hostile_pid));
    std::fs::OpenOptions::new().write(true).open(&channel).unwrap().set_len(0).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(sidecar.0.try_wait().unwrap().is_none(), "the sampler died (SIGBUS?)");
    // Sampling goes on: the drain loop is not blocked in an open().
    let before = samples();
    std::thread::sleep(Duration::from_secs(2));
    let after = samples();
    assert!(after > before, "sampling stalled after the hostile files ({before} → {after})");
    // Both apps would run on for half a minute, into later tests: stop them, then reap them (a
    // reader returns at the end of its pipe and hands its workload back to be dropped).
    for pid in [hostile_pid, healthy_pid] {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    for r in readers {
        drop(r.join());
    }
}

#[test]
fn children_that_come_and_go_leave_no_state_behind() {
    let (_serial, _data, _ctx, port, _server) = serve();
    // A target that forks short-lived busy children, ten a second.
    let script = "while true; do (i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done); sleep 0.05; done";
    let target = Proc(Command::new("sh").args(["-c", script]).spawn().unwrap());
    let (sidecar, metrics) = start_sidecar(port, None, Some(target.pid()), &[]);
    std::thread::sleep(Duration::from_secs(8));
    // The shell and at most a child or two alive at this moment; before, every child whose EXIT
    // record was read before its FORK record (different CPUs' rings) stayed counted forever.
    let threads = metric(metrics, "spanprof_sidecar_attached_threads");
    assert!(threads <= 3, "{threads} threads still attached after ~80 children exited");
    assert_eq!(metric(metrics, "spanprof_sidecar_attached_processes"), 1, "the shell stays attached");
    sidecar.terminate();
}
