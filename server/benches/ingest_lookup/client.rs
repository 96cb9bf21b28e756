//! HTTP phases.

use super::*;

#[derive(Default)]
pub(crate) struct IngestResult {
    pub(crate) pushes: usize,
    pub(crate) samples: u64,
    pub(crate) span_profiles: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
    pub(crate) retries_503: u64,
    /// (elapsed, pushes done) checkpoints, for the rate at the start and the end.
    pub(crate) checkpoints: Vec<(Duration, usize)>,
    pub(crate) cpu: CpuUse,
}

impl IngestResult {
    pub(crate) fn samples_per_s(&self) -> f64 {
        self.samples as f64 / self.elapsed.as_secs_f64()
    }
    pub(crate) fn spans_per_s(&self) -> f64 {
        self.span_profiles as f64 / self.elapsed.as_secs_f64()
    }
    /// Samples/s between two fractions of the phase (by pushes done).
    pub(crate) fn rate_between(&self, lo: f64, hi: f64, samples_per_push: f64) -> Option<f64> {
        let at = |f: f64| {
            let target = (self.pushes as f64 * f) as usize;
            self.checkpoints.iter().find(|c| c.1 >= target).copied()
        };
        let (a, b) = (at(lo)?, at(hi)?);
        let dt = b.0.checked_sub(a.0)?.as_secs_f64();
        (dt > 0.0 && b.1 > a.1).then(|| (b.1 - a.1) as f64 * samples_per_push / dt)
    }
}

pub(crate) async fn post_push(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    retries: &AtomicU64,
) -> Result<(), String> {
    loop {
        let resp = client
            .post(url)
            .header("Content-Type", "application/proto")
            .body(body.clone())
            .send()
            .await
            .map_err(|e| format!("push failed: {e}"))?;
        let status = resp.status();
        let text = resp.bytes().await.map_err(|e| format!("push response: {e}"))?;
        if status.is_success() {
            return Ok(());
        }
        if status.as_u16() == 503 {
            retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        return Err(format!("push answered {status}: {}", String::from_utf8_lossy(&text)));
    }
}

pub(crate) async fn run_ingest(
    client: &reqwest::Client,
    bases: &[String],
    label: &str,
    bodies: Vec<Bytes>,
    span_profiles: u64,
    samples: u64,
    concurrency: usize,
) -> IngestResult {
    let n = bodies.len();
    let bodies = Arc::new(bodies);
    // Push i goes to server i mod n (replicas take turns).
    let urls: Arc<Vec<String>> = Arc::new(bases.iter().map(|b| format!("{b}/push.v1.PusherService/Push")).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let cpu_before = CpuSnap::take();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, urls, bodies, next, done, retries) =
            (client.clone(), urls.clone(), bodies.clone(), next.clone(), done.clone(), retries.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() {
                    return Ok::<_, String>(lat);
                }
                let t = Instant::now();
                post_push(&client, &urls[i % urls.len()], bodies[i].clone(), &retries).await?;
                lat.push(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Progress and checkpoints.
    let mut checkpoints = vec![(Duration::ZERO, 0)];
    let mut last_print = Instant::now();
    let mut last_done = 0;
    let spp = span_profiles as f64 / n.max(1) as f64;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let d = done.load(Ordering::Relaxed);
        checkpoints.push((started.elapsed(), d));
        if last_print.elapsed() >= Duration::from_secs(10) || d >= n {
            let dt = last_print.elapsed().as_secs_f64();
            let pushes = d - last_done;
            eprintln!(
                "  [{label}] {:>6.1}s  {d}/{n} pushes  {:.0} span profiles  {:.0} samples/s (last {:.0}s)",
                started.elapsed().as_secs_f64(),
                d as f64 * spp,
                pushes as f64 * samples as f64 / n.max(1) as f64 / dt,
                dt
            );
            last_print = Instant::now();
            last_done = d;
        }
        if d >= n || tasks.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        match t.await.expect("ingest task panicked") {
            Ok(l) => latencies.extend(l),
            Err(e) => fail(&format!("{label}: {e}")),
        }
    }
    let elapsed = started.elapsed();
    let cpu = CpuUse::between(&cpu_before, &CpuSnap::take(), elapsed);
    eprintln!("  [{label}] cpu: {}", cpu.describe());
    checkpoints.push((elapsed, n));
    IngestResult {
        pushes: n,
        samples,
        span_profiles,
        elapsed,
        latencies,
        retries_503: retries.load(Ordering::Relaxed),
        checkpoints,
        cpu,
    }
}

/// Costs of one push without HTTP, on the first pushes of the load: decoding alone (one thread)
/// and the store alone (a separate fresh store, `--concurrency` threads calling insert).
pub(crate) struct Breakdown {
    pub(crate) pushes: usize,
    pub(crate) samples_per_push: u64,
    pub(crate) decode_ms: f64,
    pub(crate) drop_ms: f64,
    pub(crate) store_wall_s: f64,
    pub(crate) store_cpu: CpuUse,
    pub(crate) threads: usize,
}

impl Breakdown {
    pub(crate) fn describe(&self) -> String {
        let n = self.pushes as f64;
        let writer = self.store_cpu.threads.iter().find(|t| t.0.starts_with("spanprof-store")).map_or(0.0, |t| t.1);
        format!(
            "cost breakdown without HTTP ({} pushes of {} samples): decode_request + to_batches {:.1} ms/push on one core \
             (= {:.0} samples/s per core), dropping the decoded batches {:.1} ms/push; store insert alone \
             ({} threads, group commit, fsync) {:.1} ms/push wall = {:.0} samples/s, writer thread CPU {:.1} ms/push \
             ({:.0}% of wall)",
            self.pushes,
            self.samples_per_push,
            self.decode_ms,
            self.samples_per_push as f64 / (self.decode_ms / 1e3),
            self.drop_ms,
            self.threads,
            self.store_wall_s * 1e3 / n,
            n * self.samples_per_push as f64 / self.store_wall_s,
            writer * 1e3 / n,
            writer / self.store_wall_s * 100.0,
        )
    }
}

pub(crate) fn cost_breakdown(args: &Args, bodies: &[Bytes], dir: &Path) -> Breakdown {
    use spanprof_server::ingest::push::{Encoding, decode_request, to_batches};
    use spanprof_server::store::ProfileStore;
    let n = args.breakdown.min(bodies.len());
    eprintln!("cost breakdown without HTTP on {n} pushes…");
    let limits = spanprof_server::ingest::Limits::default();
    let now = (now_ns() / 1_000_000) as u64;
    let mut decode = Duration::ZERO;
    let mut drop_t = Duration::ZERO;
    let mut all = Vec::with_capacity(n);
    for body in &bodies[..n] {
        let t = Instant::now();
        let batches =
            to_batches(decode_request(body, Encoding::Proto).expect("decode"), &limits, now).expect("batches");
        decode += t.elapsed();
        let copy = batches.clone();
        let t = Instant::now();
        drop(batches);
        drop_t += t.elapsed();
        all.push(copy);
    }
    let store_dir = dir.join("breakdown-store");
    let store = Arc::new(
        spanprof_server::store::embedded::EmbeddedStore::open(&store_dir, Default::default()).expect("open store"),
    );
    let queue = std::sync::Mutex::new(all);
    let before = CpuSnap::take();
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..args.concurrency {
            s.spawn(|| {
                loop {
                    let Some(b) = queue.lock().unwrap().pop() else { break };
                    store.insert(b).expect("insert");
                }
            });
        }
    });
    let wall = t.elapsed();
    let store_cpu = CpuUse::between(&before, &CpuSnap::take(), wall);
    store.close();
    drop(store);
    let _ = std::fs::remove_dir_all(&store_dir);
    let b = Breakdown {
        pushes: n,
        samples_per_push: args.samples_per_push as u64,
        decode_ms: decode.as_secs_f64() * 1e3 / n as f64,
        drop_ms: drop_t.as_secs_f64() * 1e3 / n as f64,
        store_wall_s: wall.as_secs_f64(),
        store_cpu,
        threads: args.concurrency,
    };
    eprintln!("  {}", b.describe());
    b
}

pub(crate) fn fail(msg: &str) -> ! {
    eprintln!("ERROR: {msg}");
    std::process::exit(1);
}

pub(crate) struct Latency {
    pub(crate) label: String,
    pub(crate) samples: Vec<Duration>,
    pub(crate) bytes: u64,
    pub(crate) errors: Vec<String>,
}

impl Latency {
    pub(crate) fn pct(&self, p: f64) -> Duration {
        let mut v = self.samples.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }
    pub(crate) fn max(&self) -> Duration {
        self.samples.iter().max().copied().unwrap_or_default()
    }
    pub(crate) fn mean(&self) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        self.samples.iter().sum::<Duration>() / self.samples.len() as u32
    }
}

/// GETs each URL in turn from one connection, timing request to last body byte; `check`
/// validates each (status, body) and returns an error description.
pub(crate) async fn timed_gets(client: &reqwest::Client, label: &str, urls: &[String], check: Check<'_>) -> Latency {
    let mut out =
        Latency { label: label.to_owned(), samples: Vec::with_capacity(urls.len()), bytes: 0, errors: vec![] };
    for (i, url) in urls.iter().enumerate() {
        let t = Instant::now();
        let resp = match client.get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                out.errors.push(format!("GET {url}: {e}"));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        out.samples.push(t.elapsed());
        out.bytes += body.len() as u64;
        if let Err(e) = check(i, status, &body)
            && out.errors.len() < 20
        {
            out.errors.push(format!("GET {url} -> {status}: {e}"));
        }
    }
    out
}

pub(crate) async fn get_text(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => fail(&format!("GET {url}: {e}")),
    }
}

/// Sum of a Prometheus counter/gauge's samples whose line starts with `prefix`.
pub(crate) fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(crate) fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut len = 0;
    let mut alloc = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    let (l, a) = dir_bytes(&e.path());
                    len += l;
                    alloc += a;
                } else {
                    len += m.len();
                    alloc += m.blocks() * 512;
                }
            }
        }
    }
    (len, alloc)
}

pub(crate) fn blocks_config(object_store: String, replica: &str) -> spanprof_server::BlockConfig {
    spanprof_server::BlockConfig {
        object_store,
        interval: Duration::from_secs(3600),
        replica: replica.into(),
        cache_bytes: 256 << 20,
        peers: None,
        compaction_grace: Duration::from_secs(3600),
    }
}

/// A server in this process on 127.0.0.1:0, ready: its base URL, its stop, and its task.
pub(crate) struct Running {
    pub(crate) base: String,
    pub(crate) stop: tokio::sync::oneshot::Sender<()>,
    pub(crate) task: tokio::task::JoinHandle<Result<(), spanprof_server::error::Error>>,
}

pub(crate) async fn start(config: spanprof_server::Config, client: &reqwest::Client) -> Running {
    let listener = tokio::net::TcpListener::bind(config.listen).await.expect("bind");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(spanprof_server::serve(config, listener, Some(rx)));
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Running { base, stop, task }
}

impl Running {
    /// Stops gracefully (with an object store: uploads the local data); returns how long it took.
    pub(crate) async fn stop(self) -> Duration {
        let t = Instant::now();
        let _ = self.stop.send(());
        let _ = self.task.await;
        t.elapsed()
    }
}

pub(crate) fn bench_config(dir: &Path, blocks: Option<spanprof_server::BlockConfig>) -> spanprof_server::Config {
    spanprof_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        retention: spanprof_server::store::Retention::default(),
        retention_interval: Duration::from_secs(3600),
        limits: spanprof_server::ingest::Limits::default(),
        store: Default::default(),
        queries: Default::default(),
        blocks,
    }
}

/// The metas of the visible blocks (not replaced by compaction) in a `file://` bucket.
pub(crate) fn visible_metas(url: &str) -> Option<Vec<serde_json::Value>> {
    let root = url.strip_prefix("file://")?;
    let mut metas = Vec::new();
    for e in std::fs::read_dir(Path::new(root).join("blocks")).into_iter().flatten().flatten() {
        if let Ok(b) = std::fs::read(e.path().join("meta.json"))
            && let Ok(m) = serde_json::from_slice::<serde_json::Value>(&b)
        {
            metas.push(m);
        }
    }
    let replaced: HashSet<String> = metas
        .iter()
        .flat_map(|m| m["replaces"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    Some(metas.into_iter().filter(|m| !replaced.contains(m["id"].as_str().unwrap_or(""))).collect())
}

/// Data bytes and count of the visible blocks in a `file://` bucket.
pub(crate) fn bucket_blocks(url: &str) -> Option<(u64, usize)> {
    let metas = visible_metas(url)?;
    Some((metas.iter().map(|m| m["data_bytes"].as_u64().unwrap_or(0)).sum(), metas.len()))
}

/// Visible blocks under the compactor's 64 MiB in a `file://` bucket.
pub(crate) fn small_blocks(url: &str) -> Option<usize> {
    Some(visible_metas(url)?.iter().filter(|m| m["data_bytes"].as_u64().unwrap_or(0) < 64 << 20).count())
}

/// The visible blocks and their data bytes as the server at `base` lists them (a query makes it
/// list the bucket afresh when its listing is stale).
pub(crate) async fn listed_blocks(client: &reqwest::Client, base: &str) -> (u64, u64) {
    let _ = get_text(client, &format!("{base}/api/v1/services")).await;
    let text = get_text(client, &format!("{base}/metrics")).await;
    (metric(&text, "spanprof_server_bucket_blocks") as u64, metric(&text, "spanprof_server_bucket_block_bytes") as u64)
}

/// Waits until the server at `base` (compacting every second, no grace) has merged what it
/// merges: every merged block deleted, and (`file://`) fewer than two blocks left under the
/// compactor's 64 MiB, or (other buckets) nothing changed for 30 s. Returns the time it took
/// and the blocks merged.
pub(crate) async fn wait_for_compaction(client: &reqwest::Client, base: &str, url: &str) -> (Duration, u64) {
    let t = Instant::now();
    let mut last = (0.0, 0.0);
    let mut changed = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let text = get_text(client, &format!("{base}/metrics")).await;
        let now = (
            metric(&text, "spanprof_server_blocks_compacted_total"),
            metric(&text, "spanprof_server_blocks_deleted_total"),
        );
        if now != last {
            changed = Instant::now();
            last = now;
        }
        let quiet = changed.elapsed();
        let settled = match small_blocks(url) {
            Some(n) => n < 2 && quiet >= Duration::from_secs(2),
            None => quiet >= Duration::from_secs(30),
        };
        if (settled && now.0 == now.1) || quiet >= Duration::from_secs(180) {
            return (changed.duration_since(t), last.0 as u64);
        }
    }
}

/// Phase 6: a server with an empty data directory answers from the blocks the first one cut (at
/// 500k span profiles a block while it ran, the rest at its stop); then the blocks are compacted
/// and the lookups checked again.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn blocks_phase(
    args: &Args,
    url: &str,
    client: &reqwest::Client,
    profile_urls: &[String],
    want: &[Option<u64>],
    trace_urls: &[String],
    trace_want: &[u64],
    stop_time: Duration,
    samples: u64,
    problems: &mut Vec<String>,
) {
    let dir = args.tmp.join(format!("spanprof-bench-blocks-{}", std::process::id()));
    let b = start(bench_config(&dir, Some(blocks_config(url.to_owned(), "bench-b"))), client).await;
    let addr = b.base.trim_start_matches("http://").to_owned();
    // The same lookups as phase 2, answered by a server holding nothing locally.
    let urls: Vec<String> =
        profile_urls.iter().map(|u| format!("http://{addr}{}", &u[u.find("/api/").unwrap_or(0)..])).collect();
    let trace_urls: Vec<String> =
        trace_urls.iter().map(|u| format!("http://{addr}{}", &u[u.find("/api/").unwrap_or(0)..])).collect();
    let check_trace = |i: usize, status: u16, body: &[u8]| -> Result<(), String> {
        if status != 200 {
            return Err(String::from_utf8_lossy(body).chars().take(300).collect());
        }
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let n = v["profiles"].as_array().map_or(0, Vec::len) as u64;
        if n != trace_want[i] {
            return Err(format!("{n} span profiles, expected {}", trace_want[i]));
        }
        Ok(())
    };
    let check = |i: usize, status: u16, body: &[u8]| -> Result<(), String> {
        if status != 200 {
            return Err(String::from_utf8_lossy(body).chars().take(300).collect());
        }
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let got = v["profile"]["samples"].as_u64();
        if got != want[i] {
            return Err(format!("samples {got:?}, expected {:?}", want[i]));
        }
        Ok(())
    };
    let ok200 = |_: usize, status: u16, body: &[u8]| -> Result<(), String> {
        if status == 200 { Ok(()) } else { Err(String::from_utf8_lossy(body).chars().take(300).collect()) }
    };
    let cold = timed_gets(client, "GET /api/v1/profiles/{id} from blocks, cold cache", &urls, &check).await;
    let warm = timed_gets(client, "GET /api/v1/profiles/{id} from blocks, warm cache", &urls, &check).await;
    let list_urls: Vec<String> =
        (0..args.list_lookups.min(100)).map(|_| format!("http://{addr}/api/v1/profiles?limit=50")).collect();
    let list = timed_gets(client, "GET /api/v1/profiles?limit=50 from blocks", &list_urls, &ok200).await;
    let traces = timed_gets(client, "GET /api/v1/traces/{id} from blocks", &trace_urls, &check_trace).await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let before = bucket_blocks(url);
    // Compaction: a server compacting every second with no grace, until nothing changes.
    let mut after_compaction = Vec::new();
    let mut compaction = None;
    if !args.skip_compaction {
        let mut config = blocks_config(url.to_owned(), "bench-c");
        config.interval = Duration::from_secs(1);
        config.compaction_grace = Duration::ZERO;
        let c = start(bench_config(&dir, Some(config)), client).await;
        compaction = Some(wait_for_compaction(client, &c.base, url).await);
        let curls: Vec<String> = urls.iter().map(|u| u.replace(&format!("http://{addr}"), &c.base)).collect();
        after_compaction
            .push(timed_gets(client, "GET /api/v1/profiles/{id} after compaction, cold cache", &curls, &check).await);
        after_compaction
            .push(timed_gets(client, "GET /api/v1/profiles/{id} after compaction, warm cache", &curls, &check).await);
        let turls: Vec<String> = trace_urls.iter().map(|u| u.replace(&format!("http://{addr}"), &c.base)).collect();
        after_compaction
            .push(timed_gets(client, "GET /api/v1/traces/{id} after compaction", &turls, &check_trace).await);
        c.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!();
    println!("### blocks ({url})");
    println!();
    println!(
        "stop (seal the head, build and upload its block): {:.2} s; {samples} samples stored in all",
        stop_time.as_secs_f64(),
    );
    if let Some((b, n)) = before {
        println!(
            "block data: {} in {n} blocks for {samples} samples: {:.1} bytes/sample",
            human_bytes(b),
            b as f64 / samples as f64
        );
    }
    if let (Some((t, merged)), Some((b, n))) = (compaction, bucket_blocks(url)) {
        println!(
            "after compaction ({merged} blocks merged in {:.1} s): {} in {n} blocks: {:.1} bytes/sample",
            t.as_secs_f64(),
            human_bytes(b),
            b as f64 / samples as f64
        );
    }
    println!();
    println!("| lookup | requests | p50 ms | p99 ms | max ms | mean ms | kB/response |");
    println!("|---|---|---|---|---|---|---|");
    for l in [&cold, &warm, &list, &traces].into_iter().chain(after_compaction.iter()) {
        print_latency(l);
        for e in &l.errors {
            problems.push(format!("{}: {e}", l.label));
        }
    }
}

/// Phase 7 (`--replica-profiles N`): the same N new span profiles loaded into an embedded-only
/// server, one replica with the object store, and three replicas (peers of each other, pushes
/// round-robin), the replicas sealing a block every 5 s while the load runs (under
/// `<url>/replicas-1`, `<url>/replicas-3`); samples/s and CPU per sample side by side. CPU is
/// this process's (servers and client) and, with an S3 server on this machine, the machine's.
pub(crate) async fn replicas_phase(args: &Args, url: &str, client: &reqwest::Client, workload: &Workload) {
    let n = args.replica_profiles;
    let pushes = n.div_ceil(args.spans_per_push);
    let (spp, seed) = (args.spans_per_push, args.seed ^ 0x7e91_1ca5);
    let spans_of = move |i: usize| new_spans(spp.min(n - i * spp), splitmix64(seed.wrapping_add(i as u64)));
    let built = build_pushes(workload, args, pushes, seed, &spans_of);
    let samples: u64 = built.iter().map(|b| b.0.samples).sum();
    let bodies: Vec<Bytes> = built.into_iter().map(|b| b.0.body).collect();
    let mut rows = Vec::new();
    let mut compacted = None;
    for replicas in [0usize, 1, 3] {
        let run = std::process::id();
        let dirs: Vec<PathBuf> =
            (0..replicas.max(1)).map(|i| args.tmp.join(format!("spanprof-bench-r{replicas}-{i}-{run}"))).collect();
        let ports: Vec<u16> = (0..replicas.max(1))
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
            })
            .collect();
        let peers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut servers = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let blocks = (replicas > 0).then(|| {
                let mut b = blocks_config(format!("{url}/replicas-{replicas}"), &format!("bench-r{i}"));
                b.interval = Duration::from_secs(5);
                b.peers = (replicas > 1).then(|| peers.clone());
                b
            });
            let mut config = bench_config(dir, blocks);
            config.listen = format!("127.0.0.1:{}", ports[i]).parse().unwrap();
            servers.push(start(config, client).await);
        }
        let label = match replicas {
            0 => "embedded only".to_owned(),
            1 => "1 replica, object store".to_owned(),
            r => format!("{r} replicas, object store, peers"),
        };
        let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
        let (cpu_before, started) = (CpuSnap::take(), Instant::now());
        let r = run_ingest(client, &bases, &label, bodies.clone(), n as u64, samples, args.concurrency).await;
        let mut uploaded = 0.0;
        for b in &bases {
            uploaded +=
                metric(&get_text(client, &format!("{b}/metrics")).await, "spanprof_server_blocks_uploaded_total");
        }
        let mut stop = Duration::ZERO;
        for s in servers {
            stop += s.stop().await;
        }
        // Everything this mode cost: the load and the stops (with an object store, the last
        // blocks are cut there).
        let all = CpuUse::between(&cpu_before, &CpuSnap::take(), started.elapsed());
        let all_cpu_s = all.process_cores * all.wall_s;
        for d in &dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        rows.push((label, r, uploaded as u64, stop, all_cpu_s));
        // The three replicas' many small blocks, compacted.
        if replicas == 3 && !args.skip_compaction {
            let bucket = format!("{url}/replicas-{replicas}");
            let mut config = blocks_config(bucket.clone(), "bench-c");
            config.interval = Duration::from_secs(1);
            config.compaction_grace = Duration::ZERO;
            let dir = args.tmp.join(format!("spanprof-bench-compact-{run}"));
            let c = start(bench_config(&dir, Some(config)), client).await;
            let before = listed_blocks(client, &c.base).await;
            let (took, merged) = wait_for_compaction(client, &c.base, &bucket).await;
            let after = listed_blocks(client, &c.base).await;
            c.stop().await;
            let _ = std::fs::remove_dir_all(&dir);
            compacted = Some((before, after, took, merged));
        }
    }
    println!();
    println!("### ingest with 1 and 3 replicas ({url}), {n} new span profiles, {samples} samples");
    println!();
    println!(
        "| servers | samples/s | pushes p50 / p99 ms | cores busy: this process / machine | CPU µs per sample, load | blocks uploaded during the load | graceful stops (upload the rest) | CPU µs per sample, load + stops |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, r, uploaded, stop, all_cpu_s) in rows {
        let mut lat = r.latencies.clone();
        lat.sort();
        let pct = |q: f64| {
            lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default()
        };
        println!(
            "| {label} | {:.0} | {} / {} | {:.2} / {:.2} | {:.2} | {uploaded} | {:.2} s | {:.2} |",
            r.samples as f64 / r.elapsed.as_secs_f64(),
            ms(pct(0.5)),
            ms(pct(0.99)),
            r.cpu.process_cores,
            r.cpu.machine_cores,
            r.cpu.process_cores * r.elapsed.as_secs_f64() * 1e6 / r.samples as f64,
            stop.as_secs_f64(),
            all_cpu_s * 1e6 / r.samples as f64
        );
    }
    if let Some(((n0, b0), (n1, b1), took, merged)) = compacted {
        println!();
        println!(
            "the 3 replicas' blocks: {n0} blocks, {} = {:.1} bytes/sample; compacted ({merged} merged in {:.1} s): {n1} blocks, {} = {:.1} bytes/sample",
            human_bytes(b0),
            b0 as f64 / samples as f64,
            took.as_secs_f64(),
            human_bytes(b1),
            b1 as f64 / samples as f64
        );
    }
}
