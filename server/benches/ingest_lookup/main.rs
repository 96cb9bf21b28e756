//! End-to-end benchmark of spanprof-server: ingest throughput, lookup latency and bytes on disk,
//! over real HTTP on loopback against the real server (started in-process on 127.0.0.1:0 with a
//! fresh data directory under /tmp and the shipped durability: every 2xx is fsynced).
//!
//! ```text
//! cargo bench -p spanprof-server --bench ingest_lookup                      # 1,000,000 span profiles
//! cargo bench -p spanprof-server --bench ingest_lookup -- --profiles 50000  # quick run
//! cargo bench -p spanprof-server --bench ingest_lookup -- --help           # every option
//! ```
//!
//! Phases:
//! 1. **load**: pushes (`POST /push.v1.PusherService/Push`, `application/proto`) until `--profiles`
//!    span profiles are stored. Each push = one series (service_name, namespace, pod,
//!    `__name__=process_cpu`) with one gzipped pprof of `--samples-per-push` samples over
//!    `--spans-per-push` new span IDs (labels span_id/trace_id/span_name) plus
//!    `--process-share` of samples without span labels (whole-process). Stacks are 20–40 frames
//!    drawn from a fixed pool of Rust-like code paths. `--concurrency` client connections.
//! 2. **lookups** (idle server): `GET /api/v1/profiles/{id}` for random stored IDs,
//!    `GET /api/v1/profiles?limit=50`, `GET /api/v1/traces/{id}`.
//! 3. **merge**: pushes whose span IDs are all already stored (merge upon insert).
//! 4. **mixed**: profile lookups from one client while new-profile ingest runs.
//! 5. **disk**: size of the data directory (spanprof.fjall/) / samples stored,
//!    and / span profiles stored.
//! 6. **blocks** (with `--object-store file:///dir` or `s3://…`): the server seals its local
//!    data into a block at every 500k span profiles while the phases run, and its graceful stop
//!    uploads the rest (timed); a new server on an empty data directory then answers the same
//!    profile and trace lookups from the blocks alone, cold and warm, checked against what was
//!    pushed; then a server compacts the blocks and the lookups are checked again; bytes per
//!    sample in the blocks before and after compaction (file:// only: the bench reads the metas).
//! 7. **replicas** (`--replica-profiles N` with `--object-store`): N new span profiles loaded into
//!    an embedded-only server, one replica and three replicas (peers; pushes round-robin) that
//!    seal a block every 5 s while loading, side by side.
//!
//! Payloads are generated before each phase is timed, so the client's CPU cost is only HTTP.
//! Nothing here asserts on time; wrong answers from the server are reported as errors.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use spanprof_proto::ids::{SpanId, TraceId};
use spanprof_proto::labels as wire;
use spanprof_server::proto::pprof::{Label, Line, Mapping, ProfileBuilder};
use spanprof_server::proto::push::{LabelPair, PushRequest, RawProfileSeries, RawSample};

const PERIOD_NS: i64 = 10_000_000; // 100 Hz, the sidecar's default
const USAGE: &str = "\
usage: cargo bench -p spanprof-server --bench ingest_lookup -- [options]
  --profiles N          span profiles to store before the lookups (default 1000000)
  --samples-per-push N  samples in each push's pprof (default 5000)
  --spans-per-push N    distinct span IDs in each push (default 300)
  --process-share F     share of samples without span labels (default 0.2)
  --concurrency N       concurrent client connections for ingest (default 4)
  --merge-pushes N      pushes of already-stored span IDs in the merge phase (default 300)
  --mixed-pushes N      new-profile pushes in the mixed ingest+lookup phase (default 200)
  --lookups N           profile lookups (default 5000; also used for the mixed phase)
  --list-lookups N      newest-first listings (default 500)
  --trace-lookups N     trace lookups (default 2000)
  --stack-pool N        distinct code paths (stacks) the workload draws from (default 8000)
  --seed N              PRNG seed (default 1)
  --tmp DIR             parent of the data directory (default /tmp)
  --breakdown N         pushes for the no-HTTP cost breakdown (decode alone, store alone; default 100, 0 = off)
  --cache-mb N          the store's page cache (default 256, as shipped: SPANPROF_CACHE_MB)
  --keep                keep the data directory afterwards
  --object-store URL    also run the blocks phase against this bucket (file:///dir, or s3://… with AWS_* set)
  --replica-profiles N  with --object-store: also load N new span profiles into an embedded-only server, one
                        replica and three replicas (peers, pushes round-robin) cutting blocks every 5 s,
                        side by side (default 0 = off)
  --skip-compaction     with --object-store: leave out compacting the blocks at the end";

#[derive(Clone, Debug)]
struct Args {
    profiles: usize,
    samples_per_push: usize,
    spans_per_push: usize,
    process_share: f64,
    concurrency: usize,
    merge_pushes: usize,
    mixed_pushes: usize,
    lookups: usize,
    list_lookups: usize,
    trace_lookups: usize,
    stack_pool: usize,
    seed: u64,
    tmp: PathBuf,
    keep: bool,
    breakdown: usize,
    cache_mb: usize,
    object_store: Option<String>,
    replica_profiles: usize,
    skip_compaction: bool,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut a = Args {
            profiles: 1_000_000,
            samples_per_push: 5_000,
            spans_per_push: 300,
            process_share: 0.2,
            concurrency: 4,
            merge_pushes: 300,
            mixed_pushes: 200,
            lookups: 5_000,
            list_lookups: 500,
            trace_lookups: 2_000,
            stack_pool: 8_000,
            seed: 1,
            tmp: PathBuf::from("/tmp"),
            keep: false,
            breakdown: 100,
            cache_mb: 256,
            object_store: None,
            replica_profiles: 0,
            skip_compaction: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{name} needs a value"))
            };
            fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
                v.replace('_', "").parse().map_err(|_| format!("{name}: {v:?} is not a number"))
            }
            match key.as_str() {
                "--bench" => {} // cargo bench passes this to harness = false binaries
                "--profiles" => a.profiles = num(&key, value(&key)?)?,
                "--samples-per-push" => a.samples_per_push = num(&key, value(&key)?)?,
                "--spans-per-push" => a.spans_per_push = num(&key, value(&key)?)?,
                "--process-share" => a.process_share = num(&key, value(&key)?)?,
                "--concurrency" => a.concurrency = num(&key, value(&key)?)?,
                "--merge-pushes" => a.merge_pushes = num(&key, value(&key)?)?,
                "--mixed-pushes" => a.mixed_pushes = num(&key, value(&key)?)?,
                "--lookups" => a.lookups = num(&key, value(&key)?)?,
                "--list-lookups" => a.list_lookups = num(&key, value(&key)?)?,
                "--trace-lookups" => a.trace_lookups = num(&key, value(&key)?)?,
                "--stack-pool" => a.stack_pool = num(&key, value(&key)?)?,
                "--seed" => a.seed = num(&key, value(&key)?)?,
                "--tmp" => a.tmp = PathBuf::from(value(&key)?),
                "--keep" => a.keep = true,
                "--breakdown" => a.breakdown = num(&key, value(&key)?)?,
                "--cache-mb" => a.cache_mb = num(&key, value(&key)?)?,
                "--object-store" => a.object_store = Some(value(&key)?),
                "--replica-profiles" => a.replica_profiles = num(&key, value(&key)?)?,
                "--skip-compaction" => a.skip_compaction = true,
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if a.profiles == 0 || a.spans_per_push == 0 || a.concurrency == 0 || a.stack_pool == 0 {
            return Err("--profiles, --spans-per-push, --concurrency and --stack-pool must be > 0".into());
        }
        if !(0.0..1.0).contains(&a.process_share) {
            return Err("--process-share must be in [0, 1)".into());
        }
        let span_samples = a.samples_per_push - (a.samples_per_push as f64 * a.process_share).round() as usize;
        if span_samples < a.spans_per_push {
            return Err(
                "each span needs at least one sample: raise --samples-per-push or lower --spans-per-push".into()
            );
        }
        Ok(a)
    }
}

mod client;
mod cpu;
mod report;
mod workload;

use client::*;
use cpu::*;
use report::*;
use workload::*;

fn main() {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    // The server's own log (e.g. each block's cut/build/upload durations) with RUST_LOG set.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(bench(args));
}

async fn bench(args: Args) {
    let dir = args.tmp.join(format!(
        "spanprof-bench-{}-{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
    ));
    std::fs::create_dir_all(&dir).expect("data dir");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!("spanprof-server benchmark: {args:?}");
    eprintln!("data dir {} ; {cores} cores", dir.display());

    // The server, as shipped (see main.rs): default limits, store options and retention.
    let config = spanprof_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.clone(),
        retention: spanprof_server::store::Retention {
            max_age: Some(Duration::from_secs(7 * 86_400)),
            max_bytes: Some(10 << 30),
        },
        retention_interval: Duration::from_secs(60),
        limits: spanprof_server::ingest::Limits::default(),
        store: spanprof_server::store::embedded::EmbeddedOptions {
            cache_bytes: args.cache_mb << 20,
            ..Default::default()
        },
        queries: Default::default(),
        // An hour-long interval: blocks are sealed at 500k span profiles, and at the stop.
        blocks: args.object_store.clone().map(|object_store| blocks_config(object_store, "bench-a")),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(spanprof_server::serve(config, listener, Some(shutdown_rx)));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency + 2)
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client");
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t = Instant::now();
    let workload = Arc::new(Workload::new(args.stack_pool, args.seed));
    let depth: Vec<usize> = workload.span_stacks_by_handler.iter().flatten().map(Vec::len).collect();
    eprintln!(
        "workload: {} functions, {} span code paths + {} whole-process code paths, depth {}..{} ({:.1}s)",
        workload.functions.len(),
        depth.len(),
        workload.process_stacks.len(),
        depth.iter().min().unwrap(),
        depth.iter().max().unwrap(),
        t.elapsed().as_secs_f64()
    );

    // ---- Phase 1: load ------------------------------------------------------------------
    let load_pushes = args.profiles.div_ceil(args.spans_per_push);
    eprintln!("generating {load_pushes} pushes ({} span profiles)…", args.profiles);
    let t = Instant::now();
    let (spp, profiles, seed) = (args.spans_per_push, args.profiles, args.seed);
    let spans_of = move |i: usize| {
        let count = spp.min(profiles - i * spp);
        new_spans(count, splitmix64(seed.wrapping_add(i as u64)))
    };
    let built = build_pushes(&workload, &args, load_pushes, seed, &spans_of);
    let mut stored: Vec<SpanRec> = Vec::with_capacity(args.profiles);
    let mut expected: HashMap<u64, u64> = HashMap::with_capacity(args.profiles);
    let mut bodies = Vec::with_capacity(load_pushes);
    let mut load_samples = 0;
    let mut body_bytes = 0;
    for (push, spans, per_span) in built {
        for (s, c) in spans.iter().zip(per_span) {
            stored.push(*s);
            *expected.entry(s.id).or_default() += u64::from(c);
        }
        load_samples += push.samples;
        body_bytes += push.body.len();
        bodies.push(push.body);
    }
    let mean_body = body_bytes / load_pushes.max(1);
    eprintln!(
        "generated in {:.1}s: {} samples, {:.1} kB per push body (gzipped pprof)",
        t.elapsed().as_secs_f64(),
        load_samples,
        mean_body as f64 / 1e3
    );
    let span_profiles_created = expected.len() as u64;
    let breakdown = if args.breakdown > 0 { Some(cost_breakdown(&args, &bodies, &dir)) } else { None };
    let load = run_ingest(
        &client,
        std::slice::from_ref(&base),
        "load",
        bodies,
        stored.len() as u64,
        load_samples,
        args.concurrency,
    )
    .await;
    let metrics_after_load = get_text(&client, &format!("{base}/metrics")).await;
    let (file_after_load, alloc_after_load) = dir_bytes(&dir);
    let disk_load = DiskFigures {
        file_bytes: file_after_load,
        alloc_bytes: alloc_after_load,
        record_bytes: metric(&metrics_after_load, "spanprof_server_store_record_bytes"),
        samples: load_samples,
        span_profiles: span_profiles_created,
    };

    // ---- Phase 2: lookups on an idle server -------------------------------------------------
    let mut rng = Rng::new(args.seed ^ 0x100c);
    let pick: Vec<SpanRec> = (0..args.lookups).map(|_| stored[rng.below(stored.len())]).collect();
    let urls: Vec<String> = pick.iter().map(|s| format!("{base}/api/v1/profiles/{:016x}", s.id)).collect();
    let warm: Vec<String> = urls.iter().take(50).cloned().collect();
    timed_gets(&client, "warm-up", &warm, &|_, _, _| Ok(())).await;
    let exp = &expected;
    let check_profile = |i: usize, status: u16, body: &[u8]| -> Result<(), String> {
        if status != 200 {
            return Err(String::from_utf8_lossy(body).chars().take(300).collect());
        }
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let id = pick[i].id;
        let got = v["profile"]["samples"].as_u64();
        let want = exp.get(&id).copied();
        if got != want {
            return Err(format!("samples {got:?}, expected {want:?}"));
        }
        if v["flamegraph"]["total"].as_u64() != want {
            return Err(format!("flamegraph total {:?}, expected {want:?}", v["flamegraph"]["total"]));
        }
        Ok(())
    };
    eprintln!("lookups: {} profiles, {} listings, {} traces…", args.lookups, args.list_lookups, args.trace_lookups);
    let lk_profile = timed_gets(&client, "GET /api/v1/profiles/{id}", &urls, &check_profile).await;
    let list_urls: Vec<String> = (0..args.list_lookups).map(|_| format!("{base}/api/v1/profiles?limit=50")).collect();
    let check_list = |_: usize, status: u16, body: &[u8]| -> Result<(), String> {
        if status != 200 {
            return Err(String::from_utf8_lossy(body).chars().take(300).collect());
        }
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let n = v["profiles"].as_array().map_or(0, Vec::len);
        if n != 50 {
            return Err(format!("{n} profiles, expected 50"));
        }
        Ok(())
    };
    let lk_list = timed_gets(&client, "GET /api/v1/profiles?limit=50", &list_urls, &check_list).await;
    let mut spans_per_trace: HashMap<u128, u64> = HashMap::new();
    for s in &stored {
        *spans_per_trace.entry(s.trace).or_default() += 1;
    }
    let traces: Vec<u128> = (0..args.trace_lookups).map(|_| stored[rng.below(stored.len())].trace).collect();
    let trace_urls: Vec<String> = traces.iter().map(|t| format!("{base}/api/v1/traces/{t:032x}")).collect();
    let spt = &spans_per_trace;
    let check_trace = |i: usize, status: u16, body: &[u8]| -> Result<(), String> {
        if status != 200 {
            return Err(String::from_utf8_lossy(body).chars().take(300).collect());
        }
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let n = v["profiles"].as_array().map_or(0, Vec::len) as u64;
        let want = spt[&traces[i]];
        if n != want {
            return Err(format!("{n} local roots, expected {want}"));
        }
        Ok(())
    };
    let lk_trace = timed_gets(&client, "GET /api/v1/traces/{id}", &trace_urls, &check_trace).await;
    let mean_spans_per_trace = stored.len() as f64 / spans_per_trace.len() as f64;

    // ---- Phase 3: merge-heavy ingest ----------------------------------------------------------
    eprintln!("generating {} merge pushes (span IDs already stored)…", args.merge_pushes);
    let stored_arc = Arc::new(stored.clone());
    let st = stored_arc.clone();
    let merge_of = move |i: usize| {
        let mut rng = Rng::new(splitmix64(seed ^ 0xfeed ^ i as u64));
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(spp);
        while out.len() < spp.min(st.len()) {
            let s = st[rng.below(st.len())];
            if seen.insert(s.id) {
                out.push(s);
            }
        }
        out
    };
    let built = build_pushes(&workload, &args, args.merge_pushes, seed ^ 0xfeed, &merge_of);
    let mut bodies = Vec::new();
    let (mut merge_samples, mut merge_spans) = (0, 0);
    for (push, spans, per_span) in built {
        for (s, c) in spans.iter().zip(per_span) {
            *expected.entry(s.id).or_default() += u64::from(c);
        }
        merge_spans += spans.len() as u64;
        merge_samples += push.samples;
        bodies.push(push.body);
    }
    let merge =
        run_ingest(&client, std::slice::from_ref(&base), "merge", bodies, merge_spans, merge_samples, args.concurrency)
            .await;

    // ---- Phase 4: lookups while new profiles are ingested ---------------------------------------
    eprintln!("generating {} pushes for the mixed phase…", args.mixed_pushes);
    let mixed_of = move |i: usize| new_spans(spp, splitmix64(seed ^ 0xabcd ^ (i as u64) << 20));
    let built = build_pushes(&workload, &args, args.mixed_pushes, seed ^ 0xabcd, &mixed_of);
    let mut bodies = Vec::new();
    let (mut mixed_samples, mut mixed_spans) = (0, 0);
    for (push, spans, per_span) in built {
        for (s, c) in spans.iter().zip(per_span) {
            *expected.entry(s.id).or_default() += u64::from(c);
        }
        mixed_spans += spans.len() as u64;
        mixed_samples += push.samples;
        bodies.push(push.body);
    }
    let mixed_ingest = {
        let (c, b) = (client.clone(), base.clone());
        let conc = args.concurrency;
        tokio::spawn(async move {
            run_ingest(&c, std::slice::from_ref(&b), "mixed", bodies, mixed_spans, mixed_samples, conc).await
        })
    };
    // Look up previously stored profiles until the ingest finishes (no correctness check on
    // samples here: the merge phase changed them; the status must still be 200).
    let mut lk_mixed =
        Latency { label: "GET /api/v1/profiles/{id} during ingest".into(), samples: vec![], bytes: 0, errors: vec![] };
    let check_200 = |_: usize, status: u16, body: &[u8]| -> Result<(), String> {
        if status == 200 { Ok(()) } else { Err(String::from_utf8_lossy(body).chars().take(300).collect()) }
    };
    while !mixed_ingest.is_finished() {
        let batch: Vec<String> =
            (0..20).map(|_| format!("{base}/api/v1/profiles/{:016x}", stored[rng.below(stored.len())].id)).collect();
        let l = timed_gets(&client, "", &batch, &check_200).await;
        lk_mixed.samples.extend(l.samples);
        lk_mixed.bytes += l.bytes;
        lk_mixed.errors.extend(l.errors);
    }
    let mixed = mixed_ingest.await.expect("mixed ingest");

    // ---- Checks against the server's own counters ------------------------------------------------
    let m = get_text(&client, &format!("{base}/metrics")).await;
    let total_samples = load_samples + merge_samples + mixed_samples;
    let mut problems = Vec::new();
    let got_samples = metric(&m, "spanprof_server_ingested_samples") as u64;
    if got_samples != total_samples {
        problems.push(format!("spanprof_server_ingested_samples = {got_samples}, pushed {total_samples}"));
    }
    let created = metric(&m, "spanprof_server_ingested_span_profiles_total{result=\"created\"}") as u64;
    let merged = metric(&m, "spanprof_server_ingested_span_profiles_total{result=\"merged\"}") as u64;
    let want_created = span_profiles_created + mixed_spans;
    // With an object store, a push of a span ID that is in a block already starts a new local
    // part ("created"; queries merge the parts): only the sum is fixed.
    let split_differs = if args.object_store.is_some() {
        created + merged != want_created + merge_spans
    } else {
        created != want_created || merged != merge_spans
    };
    if split_differs {
        problems
            .push(format!("span profiles created/merged = {created}/{merged}, expected {want_created}/{merge_spans}"));
    }
    // Spot-check merged profiles: samples must be the sum over all pushes.
    let merged_ids: Vec<u64> = {
        let mut r = Rng::new(seed ^ 0x77);
        let st = &stored_arc;
        (0..200).map(|_| st[r.below(st.len())].id).collect()
    };
    for id in &merged_ids {
        let v: serde_json::Value =
            serde_json::from_str(&get_text(&client, &format!("{base}/api/v1/profiles/{id:016x}")).await)
                .unwrap_or_default();
        let want = expected.get(id).copied();
        if v["profile"]["samples"].as_u64() != want {
            problems.push(format!("profile {id:016x}: samples {:?}, expected {want:?}", v["profile"]["samples"]));
            break;
        }
    }
    let record_bytes_final = metric(&m, "spanprof_server_store_record_bytes");
    let span_profiles_final = metric(&m, "spanprof_server_store_span_profiles") as u64;
    let (file_final, alloc_final) = dir_bytes(&dir);

    let stop = Instant::now();
    let _ = shutdown_tx.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("server returned an error: {e}")),
        Err(e) => problems.push(format!("server task: {e}")),
    }
    let stop_time = stop.elapsed();
    let (file_closed, _) = dir_bytes(&dir);
    let disk_final = DiskFigures {
        file_bytes: file_final,
        alloc_bytes: alloc_final,
        record_bytes: record_bytes_final,
        samples: total_samples,
        span_profiles: span_profiles_final,
    };

    // ---- Report --------------------------------------------------------------------------
    let spp_f = args.samples_per_push as f64;
    println!();
    println!("## spanprof-server benchmark");
    println!();
    println!(
        "workload: {} span profiles; push = 1 series, 1 gzipped pprof ({:.1} kB body), {} samples ({:.0}% whole-process), \
         {} span IDs, stacks {}..{} frames from {} code paths over {} functions; {:.2} local roots per trace; \
         {} client connections; durability on (fsync per commit); store page cache {} MiB",
        args.profiles,
        mean_body as f64 / 1e3,
        args.samples_per_push,
        args.process_share * 100.0,
        args.spans_per_push,
        depth.iter().min().unwrap(),
        depth.iter().max().unwrap(),
        depth.len() + workload.process_stacks.len(),
        workload.functions.len(),
        mean_spans_per_trace,
        args.concurrency,
        args.cache_mb,
    );
    println!();
    println!(
        "| ingest phase | pushes | seconds | samples/s | span profiles/s | pushes/s | push p50 ms | push p99 ms | samples/s first 10% → last 10% | disk writes per push | 503 retries |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    print_ingest("load (new span IDs, empty → full store)", &load, spp_f);
    print_ingest("merge (span IDs already stored)", &merge, spp_f);
    print_ingest("mixed (new span IDs, with lookups running)", &mixed, spp_f);
    println!();
    for (label, r) in [("load", &load), ("merge", &merge), ("mixed", &mixed)] {
        println!("cpu during {label}: {}", r.cpu.describe());
    }
    println!();
    if let Some(b) = &breakdown {
        println!("{}", b.describe());
        println!();
    }
    println!("| lookup | requests | p50 ms | p99 ms | max ms | mean ms | kB/response |");
    println!("|---|---|---|---|---|---|---|");
    print_latency(&lk_profile);
    print_latency(&lk_list);
    print_latency(&lk_trace);
    print_latency(&lk_mixed);
    println!();
    println!(
        "| disk | span profiles | samples | data dir bytes (file sizes) | allocated blocks | record bytes | bytes/sample | bytes/span profile |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, d) in [("after load", &disk_load), ("at the end", &disk_final)] {
        println!(
            "| {label} | {} | {} | {} ({}) | {} | {} | {:.1} | {:.0} |",
            d.span_profiles,
            d.samples,
            d.file_bytes,
            human_bytes(d.file_bytes),
            human_bytes(d.alloc_bytes),
            human_bytes(d.record_bytes as u64),
            d.file_bytes as f64 / d.samples as f64,
            d.file_bytes as f64 / d.span_profiles as f64,
        );
    }
    println!("(file size after shutdown: {} bytes)", file_closed);
    println!();
    let ingest_ok = load.samples_per_s() >= 200_000.0;
    let lookup_ok = lk_profile.pct(0.99) < Duration::from_millis(20);
    println!(
        "targets: ingest >= 200,000 samples/s (load phase): {:.0} -> {}; lookup p99 < 20 ms at {} profiles: {} ms -> {}",
        load.samples_per_s(),
        if ingest_ok { "met" } else { "NOT met" },
        args.profiles,
        ms(lk_profile.pct(0.99)),
        if lookup_ok { "met" } else { "NOT met" },
    );
    for l in [&lk_profile, &lk_list, &lk_trace, &lk_mixed] {
        for e in &l.errors {
            problems.push(format!("{}: {e}", l.label));
        }
    }
    if let Some(url) = &args.object_store {
        // What each looked-up profile holds after every phase.
        let want: Vec<Option<u64>> = pick.iter().map(|s| expected.get(&s.id).copied()).collect();
        let trace_want: Vec<u64> = traces.iter().map(|t| spans_per_trace[t]).collect();
        blocks_phase(
            &args,
            url,
            &client,
            &urls,
            &want,
            &trace_urls,
            &trace_want,
            stop_time,
            total_samples,
            &mut problems,
        )
        .await;
    }
    if let (Some(url), true) = (&args.object_store, args.replica_profiles > 0) {
        replicas_phase(&args, url, &client, &workload).await;
    }
    if problems.is_empty() {
        println!("checks: all responses and counters as expected");
    } else {
        println!("checks: {} problem(s):", problems.len());
        for p in &problems {
            println!("  - {p}");
        }
    }
    if args.keep {
        println!("data kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
