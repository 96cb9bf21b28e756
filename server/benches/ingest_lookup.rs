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

// ---------------------------------------------------------------------------------------------
// Deterministic randomness (no dependency): xorshift64* seeded through splitmix64.

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Skewed towards small indices (a few hot code paths, a long tail), in `0..n`.
    fn skewed(&mut self, n: usize) -> usize {
        let u = self.unit();
        ((u * u * u) * n as f64) as usize % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

// ---------------------------------------------------------------------------------------------
// The workload: a ride-sharing service's code paths.

const SPAN_NAMES: &[&str] =
    &["OrderVehicle", "CarHandler", "BikeHandler", "ScooterHandler", "PaymentHandler", "RouteHandler"];
const HANDLERS: &[&str] = &[
    "ride_sharing::api::order_vehicle::{{closure}}",
    "ride_sharing::car::handler::{{closure}}",
    "ride_sharing::bike::handler::{{closure}}",
    "ride_sharing::scooter::handler::{{closure}}",
    "ride_sharing::payments::handler::{{closure}}",
    "ride_sharing::routing::handler::{{closure}}",
];
const RUNTIME_PREFIX: &[&str] = &[
    "std::sys::pal::unix::thread::Thread::new::thread_start",
    "core::ops::function::FnOnce::call_once{{vtable.shim}}",
    "std::sys::backtrace::__rust_begin_short_backtrace",
    "tokio::runtime::blocking::pool::Inner::run",
    "tokio::runtime::scheduler::multi_thread::worker::run",
    "tokio::runtime::context::runtime::enter_runtime",
    "tokio::runtime::scheduler::multi_thread::worker::Context::run",
    "tokio::runtime::scheduler::multi_thread::worker::Context::run_task",
    "tokio::runtime::task::harness::Harness<T,S>::poll",
    "tokio::runtime::task::core::Core<T,S>::poll",
    "hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_catch",
    "<hyper::server::conn::http1::UpgradeableConnection<I,S> as core::future::future::Future>::poll",
    "<axum::routing::Router as tower_service::Service<http::request::Request<B>>>::call",
    "<tracing::instrument::Instrumented<T> as core::future::future::Future>::poll",
];
const APP_MODULES: &[&str] = &[
    "ride_sharing::car",
    "ride_sharing::bike",
    "ride_sharing::scooter",
    "ride_sharing::dispatch",
    "ride_sharing::pricing",
    "ride_sharing::geo",
    "ride_sharing::db",
    "ride_sharing::payments",
    "ride_sharing::routing",
    "ride_sharing::auth",
    "ride_sharing::fleet::index",
    "ride_sharing::eta",
];
const APP_FUNCTIONS: &[&str] = &[
    "find_nearest_vehicle",
    "check_driver_availability",
    "compute_route",
    "estimate_price",
    "apply_surge_multiplier",
    "haversine_distance",
    "load_vehicle_positions",
    "score_candidates",
    "reserve_vehicle",
    "validate_token",
    "charge_card",
    "build_quote",
    "rank_drivers",
    "update_eta",
    "lookup_zone",
    "decode_request",
    "encode_response",
    "fetch_rows",
    "filter_by_radius",
    "refresh_cache",
];
const LIBRARY: &[&str] = &[
    "serde_json::ser::to_writer",
    "serde_json::de::from_slice",
    "<serde_json::ser::Compound<W,F> as serde::ser::SerializeStruct>::serialize_field",
    "alloc::raw_vec::RawVec<T,A>::grow_one",
    "alloc::raw_vec::finish_grow",
    "core::slice::sort::stable::driftsort_main",
    "core::slice::sort::shared::smallsort::insertion_sort_shift_left",
    "hashbrown::map::HashMap<K,V,S>::insert",
    "hashbrown::raw::RawTable<T,A>::reserve_rehash",
    "<std::hash::random::DefaultHasher as core::hash::Hasher>::write",
    "core::hash::sip::Hasher<S>::write",
    "<alloc::string::String as core::fmt::Write>::write_str",
    "core::fmt::write",
    "core::fmt::num::imp::<impl core::fmt::Display for u64>::fmt",
    "alloc::fmt::format::format_inner",
    "<alloc::vec::Vec<T> as core::clone::Clone>::clone",
    "core::ptr::drop_in_place<alloc::vec::Vec<ride_sharing::geo::Point>>",
    "f64::sqrt",
    "libm::math::atan2::atan2",
    "libm::math::sin::sin",
    "libm::math::cos::cos",
    "sqlx_core::pool::inner::PoolInner<DB>::acquire::{{closure}}",
    "sqlx_postgres::connection::executor::<impl sqlx_postgres::connection::PgConnection>::run",
    "bytes::bytes_mut::BytesMut::reserve_inner",
    "tokio::sync::mpsc::chan::Tx<T,S>::send",
    "tokio::sync::batch_semaphore::Semaphore::acquire",
    "parking_lot::raw_mutex::RawMutex::lock_slow",
    "std::sys::sync::mutex::futex::Mutex::lock_contended",
    "__memcpy_avx_unaligned_erms",
    "__memmove_avx_unaligned_erms",
    "__memset_avx2_unaligned_erms",
    "malloc",
    "_int_malloc",
    "free",
    "_int_free",
    "cfree",
    "syscall",
    "__libc_send",
    "__libc_recv",
];
const BACKGROUND: &[&str] = &[
    "ride_sharing::background::refresh_vehicle_index",
    "ride_sharing::background::expire_reservations",
    "ride_sharing::telemetry::export_metrics",
    "tokio::runtime::time::Driver::park_internal",
    "tokio::runtime::io::driver::Driver::turn",
    "mio::poll::Poll::poll",
    "epoll_wait",
];

struct Workload {
    functions: Vec<String>,
    /// Code paths run inside a span: (handler index, function indices root first).
    span_stacks_by_handler: Vec<Vec<Vec<u32>>>,
    /// Code paths outside any span (background tasks, the runtime itself).
    process_stacks: Vec<Vec<u32>>,
}

impl Workload {
    fn new(stack_pool: usize, seed: u64) -> Workload {
        let mut functions: Vec<String> = Vec::new();
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut intern = |name: &str, functions: &mut Vec<String>| -> u32 {
            *ids.entry(name.to_owned()).or_insert_with(|| {
                functions.push(name.to_owned());
                (functions.len() - 1) as u32
            })
        };
        let prefix: Vec<u32> = RUNTIME_PREFIX.iter().map(|f| intern(f, &mut functions)).collect();
        let handlers: Vec<u32> = HANDLERS.iter().map(|f| intern(f, &mut functions)).collect();
        let mut app = Vec::new();
        for m in APP_MODULES {
            for f in APP_FUNCTIONS {
                app.push(intern(&format!("{m}::{f}"), &mut functions));
            }
        }
        for m in APP_MODULES {
            app.push(intern(&format!("{m}::{{{{closure}}}}"), &mut functions));
        }
        let lib: Vec<u32> = LIBRARY.iter().map(|f| intern(f, &mut functions)).collect();
        let background: Vec<u32> = BACKGROUND.iter().map(|f| intern(f, &mut functions)).collect();

        // A call graph: every function calls a fixed handful of others (so paths repeat the way
        // real code paths do), chosen by a hash of (caller, slot).
        let callee = |caller: u32, slot: u64, pool: &[u32]| -> u32 {
            pool[(splitmix64(seed ^ (u64::from(caller) << 8) ^ slot) % pool.len() as u64) as usize]
        };
        let mut rng = Rng::new(seed ^ 0x5eed);
        let walk = |rng: &mut Rng, start: Vec<u32>, depth: usize| -> Vec<u32> {
            let mut stack = start;
            // App code first, then a tail of library calls down to the leaf.
            let lib_tail = 1 + rng.below(5);
            while stack.len() + lib_tail < depth {
                let caller = *stack.last().unwrap();
                stack.push(callee(caller, rng.below(4) as u64, &app));
            }
            while stack.len() < depth {
                let caller = *stack.last().unwrap();
                stack.push(callee(caller, 100 + rng.below(3) as u64, &lib));
            }
            stack
        };
        let mut seen = HashSet::new();
        let mut span_stacks_by_handler = vec![Vec::new(); HANDLERS.len()];
        let mut made = 0;
        while made < stack_pool {
            let h = made % HANDLERS.len();
            let mut start = prefix.clone();
            start.push(handlers[h]);
            let depth = 20 + rng.below(21); // 20..=40 frames
            let stack = walk(&mut rng, start, depth);
            if seen.insert(stack.clone()) {
                span_stacks_by_handler[h].push(stack);
                made += 1;
            }
        }
        let mut process_stacks = Vec::new();
        while process_stacks.len() < (stack_pool / 4).max(1) {
            let cut = 4 + rng.below(6);
            let mut start = prefix[..cut].to_vec();
            start.push(background[rng.below(background.len())]);
            let depth = 20 + rng.below(21);
            let stack = walk(&mut rng, start, depth);
            if seen.insert(stack.clone()) {
                process_stacks.push(stack);
            }
        }
        Workload { functions, span_stacks_by_handler, process_stacks }
    }
}

/// A span profile the benchmark stored (or will store): what lookups and checks need.
#[derive(Clone, Copy, Debug)]
struct SpanRec {
    id: u64,
    trace: u128,
    name: u8,
}

/// One push to send: the request body and what it holds.
struct Push {
    body: Bytes,
    samples: u64,
}

const SERVICES: &[&str] = &["ride-sharing-app", "ride-dispatch"];
const PODS_PER_SERVICE: usize = 4;

fn series_labels(n: usize) -> Vec<LabelPair> {
    let service = SERVICES[n % SERVICES.len()];
    let pod = (n / SERVICES.len()) % PODS_PER_SERVICE;
    let l = |k: &str, v: String| LabelPair { name: k.to_owned(), value: v };
    vec![
        l("service_name", service.to_owned()),
        l("namespace", "rideshare".to_owned()),
        l("pod", format!("{service}-7d9f8c6b5-{}", ["x2k4p", "m8q7r", "c5v9z", "h3n6t"][pod])),
        l("__name__", "process_cpu".to_owned()),
    ]
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Builds one push: a gzipped pprof with `samples` samples over `spans` (each at least one
/// sample) and `process_share` of samples outside spans. Returns the body and, per span, its
/// sample count (same order as `spans`).
fn build_push(
    w: &Workload,
    spans: &[SpanRec],
    samples: usize,
    process_share: f64,
    series: usize,
    seed: u64,
) -> (Push, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let process_samples = (samples as f64 * process_share).round() as usize;
    let span_samples = samples - process_samples;
    // (stack pool, stack index, span index or usize::MAX) -> count; the sidecar aggregates too.
    let mut agg: HashMap<(bool, u32, usize), i64> = HashMap::new();
    let mut per_span = vec![0u32; spans.len()];
    for i in 0..span_samples {
        // Every span gets at least one sample; the rest go to a few heavier spans more often.
        let s = if i < spans.len() { i } else { rng.skewed(spans.len()) };
        per_span[s] += 1;
        let pool = &w.span_stacks_by_handler[spans[s].name as usize % HANDLERS.len()];
        let st = rng.skewed(pool.len());
        *agg.entry((true, st as u32, s)).or_default() += 1;
    }
    for _ in 0..process_samples {
        let st = rng.skewed(w.process_stacks.len());
        *agg.entry((false, st as u32, usize::MAX)).or_default() += 1;
    }

    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")])
        .period("cpu", "nanoseconds", PERIOD_NS)
        .time(now_ns() - 10_000_000_000, 10_000_000_000);
    let binary = b.string("/app/ride-sharing");
    let mapping = b.mapping(Mapping {
        memory_start: 0x5555_0000_0000,
        memory_limit: 0x5555_1000_0000,
        filename: binary,
        has_functions: true,
        ..Default::default()
    });
    // A location per function used, at an address of its own with a line, as symbolized
    // profiles from a binary have them.
    let mut locations: HashMap<u32, u64> = HashMap::new();
    let mut entries = agg.into_iter().collect::<Vec<_>>();
    entries.sort_unstable_by_key(|(k, _)| *k);
    let mut span_labels: Vec<Option<Vec<Label>>> = vec![None; spans.len()];
    for ((in_span, st, s), count) in entries {
        let stack: &Vec<u32> = if in_span {
            let pool = &w.span_stacks_by_handler[spans[s].name as usize % HANDLERS.len()];
            &pool[st as usize]
        } else {
            &w.process_stacks[st as usize]
        };
        // pprof stacks are leaf first.
        let location_id = stack
            .iter()
            .rev()
            .map(|&f| {
                *locations.entry(f).or_insert_with(|| {
                    let function_id = b.function(&w.functions[f as usize]);
                    let line = Line { function_id, line: 10 + i64::from(f % 300), column: 0 };
                    b.location(mapping, 0x5555_0000_1000 + u64::from(f) * 0x40, vec![line])
                })
            })
            .collect();
        let label = if in_span {
            span_labels[s]
                .get_or_insert_with(|| {
                    let sp = spans[s];
                    vec![
                        b.label(wire::SPAN_ID, &SpanId(sp.id).to_string()),
                        b.label(wire::TRACE_ID, &TraceId(sp.trace).to_string()),
                        b.label(wire::SPAN_NAME, SPAN_NAMES[sp.name as usize % SPAN_NAMES.len()]),
                    ]
                })
                .clone()
        } else {
            Vec::new()
        };
        b.sample(location_id, vec![count * PERIOD_NS], label);
    }
    let p = b.finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&p.encode_to_vec()).unwrap();
    let raw_profile = gz.finish().unwrap();
    let req = PushRequest {
        series: vec![RawProfileSeries {
            labels: series_labels(series),
            samples: vec![RawSample { raw_profile, id: format!("{:032x}", splitmix64(seed) as u128 * 0x1_0001) }],
        }],
    };
    (Push { body: Bytes::from(req.encode_to_vec()), samples: samples as u64 }, per_span)
}

/// New span IDs for push `n`: random, with about a quarter of spans sharing the previous span's
/// trace (a trace with several local roots).
fn new_spans(count: usize, seed: u64) -> Vec<SpanRec> {
    let mut rng = Rng::new(seed ^ 0x5a5a_5a5a);
    let mut out: Vec<SpanRec> = Vec::with_capacity(count);
    for _ in 0..count {
        let id = rng.next().max(1);
        let trace = match out.last() {
            Some(prev) if rng.chance(0.25) => prev.trace,
            _ => (u128::from(rng.next()) << 64 | u128::from(rng.next())).max(1),
        };
        out.push(SpanRec { id, trace, name: rng.below(SPAN_NAMES.len()) as u8 });
    }
    out
}

/// A generated push, the spans it holds and each span's sample count.
type Built = (Push, Vec<SpanRec>, Vec<u32>);
/// Checks one response: (index, status, body) → error text.
type Check<'a> = &'a (dyn Fn(usize, u16, &[u8]) -> Result<(), String> + Sync);

/// Builds pushes `0..n` on all cores. `spans_of(i)` gives push i's spans.
fn build_pushes(
    w: &Workload,
    args: &Args,
    n: usize,
    seed: u64,
    spans_of: &(dyn Fn(usize) -> Vec<SpanRec> + Sync),
) -> Vec<Built> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<Built>> = (0..n).map(|_| None).collect();
    let results = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut local = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let spans = spans_of(i);
                    let seed_i = splitmix64(seed ^ (i as u64).wrapping_mul(0x1000_0000_01b3));
                    let (push, per_span) = build_push(w, &spans, args.samples_per_push, args.process_share, i, seed_i);
                    local.push((i, (push, spans, per_span)));
                }
                results.lock().unwrap().extend(local);
            });
        }
    });
    for (i, r) in results.into_inner().unwrap() {
        slots[i] = Some(r);
    }
    slots.into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------------------------
// CPU accounting (Linux /proc): where this process's CPU went per thread name, and how busy the
// whole machine was, so a run disturbed by other processes shows it.

#[derive(Clone, Default)]
struct CpuSnap {
    /// thread name -> (ns on CPU, ns runnable but waiting for a CPU)
    threads: HashMap<String, (u64, u64)>,
    /// /proc/stat: (busy jiffies, all jiffies) over all CPUs
    machine: (u64, u64),
    /// utime + stime of this process, jiffies
    process: u64,
    /// Bytes this process caused to be written to storage (/proc/self/io write_bytes).
    write_bytes: u64,
}

impl CpuSnap {
    fn take() -> CpuSnap {
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
struct CpuUse {
    wall_s: f64,
    /// thread name -> (seconds on CPU, seconds waiting for a CPU)
    threads: Vec<(String, f64, f64)>,
    /// Cores busy machine-wide, and of those, this process.
    machine_cores: f64,
    process_cores: f64,
    write_bytes: u64,
}

impl CpuUse {
    fn between(a: &CpuSnap, b: &CpuSnap, wall: Duration) -> CpuUse {
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

    fn describe(&self) -> String {
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

// ---------------------------------------------------------------------------------------------
// HTTP phases.

#[derive(Default)]
struct IngestResult {
    pushes: usize,
    samples: u64,
    span_profiles: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    retries_503: u64,
    /// (elapsed, pushes done) checkpoints, for the rate at the start and the end.
    checkpoints: Vec<(Duration, usize)>,
    cpu: CpuUse,
}

impl IngestResult {
    fn samples_per_s(&self) -> f64 {
        self.samples as f64 / self.elapsed.as_secs_f64()
    }
    fn spans_per_s(&self) -> f64 {
        self.span_profiles as f64 / self.elapsed.as_secs_f64()
    }
    /// Samples/s between two fractions of the phase (by pushes done).
    fn rate_between(&self, lo: f64, hi: f64, samples_per_push: f64) -> Option<f64> {
        let at = |f: f64| {
            let target = (self.pushes as f64 * f) as usize;
            self.checkpoints.iter().find(|c| c.1 >= target).copied()
        };
        let (a, b) = (at(lo)?, at(hi)?);
        let dt = b.0.checked_sub(a.0)?.as_secs_f64();
        (dt > 0.0 && b.1 > a.1).then(|| (b.1 - a.1) as f64 * samples_per_push / dt)
    }
}

async fn post_push(client: &reqwest::Client, url: &str, body: Bytes, retries: &AtomicU64) -> Result<(), String> {
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

async fn run_ingest(
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
struct Breakdown {
    pushes: usize,
    samples_per_push: u64,
    decode_ms: f64,
    drop_ms: f64,
    store_wall_s: f64,
    store_cpu: CpuUse,
    threads: usize,
}

impl Breakdown {
    fn describe(&self) -> String {
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

fn cost_breakdown(args: &Args, bodies: &[Bytes], dir: &Path) -> Breakdown {
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

fn fail(msg: &str) -> ! {
    eprintln!("ERROR: {msg}");
    std::process::exit(1);
}

struct Latency {
    label: String,
    samples: Vec<Duration>,
    bytes: u64,
    errors: Vec<String>,
}

impl Latency {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.samples.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }
    fn max(&self) -> Duration {
        self.samples.iter().max().copied().unwrap_or_default()
    }
    fn mean(&self) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        self.samples.iter().sum::<Duration>() / self.samples.len() as u32
    }
}

/// GETs each URL in turn from one connection, timing request to last body byte; `check`
/// validates each (status, body) and returns an error description.
async fn timed_gets(client: &reqwest::Client, label: &str, urls: &[String], check: Check<'_>) -> Latency {
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

async fn get_text(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => fail(&format!("GET {url}: {e}")),
    }
}

/// Sum of a Prometheus counter/gauge's samples whose line starts with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn dir_bytes(dir: &Path) -> (u64, u64) {
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

fn blocks_config(object_store: String, replica: &str) -> spanprof_server::BlockConfig {
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
struct Running {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), spanprof_server::error::Error>>,
}

async fn start(config: spanprof_server::Config, client: &reqwest::Client) -> Running {
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
    async fn stop(self) -> Duration {
        let t = Instant::now();
        let _ = self.stop.send(());
        let _ = self.task.await;
        t.elapsed()
    }
}

fn bench_config(dir: &Path, blocks: Option<spanprof_server::BlockConfig>) -> spanprof_server::Config {
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
fn visible_metas(url: &str) -> Option<Vec<serde_json::Value>> {
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
fn bucket_blocks(url: &str) -> Option<(u64, usize)> {
    let metas = visible_metas(url)?;
    Some((metas.iter().map(|m| m["data_bytes"].as_u64().unwrap_or(0)).sum(), metas.len()))
}

/// Visible blocks under the compactor's 64 MiB in a `file://` bucket.
fn small_blocks(url: &str) -> Option<usize> {
    Some(visible_metas(url)?.iter().filter(|m| m["data_bytes"].as_u64().unwrap_or(0) < 64 << 20).count())
}

/// The visible blocks and their data bytes as the server at `base` lists them (a query makes it
/// list the bucket afresh when its listing is stale).
async fn listed_blocks(client: &reqwest::Client, base: &str) -> (u64, u64) {
    let _ = get_text(client, &format!("{base}/api/v1/services")).await;
    let text = get_text(client, &format!("{base}/metrics")).await;
    (metric(&text, "spanprof_server_bucket_blocks") as u64, metric(&text, "spanprof_server_bucket_block_bytes") as u64)
}

/// Waits until the server at `base` (compacting every second, no grace) has merged what it
/// merges: every merged block deleted, and (`file://`) fewer than two blocks left under the
/// compactor's 64 MiB, or (other buckets) nothing changed for 30 s. Returns the time it took
/// and the blocks merged.
async fn wait_for_compaction(client: &reqwest::Client, base: &str, url: &str) -> (Duration, u64) {
    let t = Instant::now();
    let mut last = (0.0, 0.0);
    let mut changed = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let text = get_text(client, &format!("{base}/metrics")).await;
        let now = (metric(&text, "spanprof_server_blocks_compacted_total"), metric(&text, "spanprof_server_blocks_deleted_total"));
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
async fn blocks_phase(
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
async fn replicas_phase(args: &Args, url: &str, client: &reqwest::Client, workload: &Workload) {
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
            uploaded += metric(&get_text(client, &format!("{b}/metrics")).await, "spanprof_server_blocks_uploaded_total");
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

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

struct DiskFigures {
    file_bytes: u64,
    alloc_bytes: u64,
    record_bytes: f64,
    samples: u64,
    span_profiles: u64,
}

fn print_ingest(label: &str, r: &IngestResult, samples_per_push: f64) {
    let mut lat = r.latencies.clone();
    lat.sort_unstable();
    let p = |q: f64| lat.get(((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len().max(1)) - 1).copied();
    println!(
        "| {label} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {} | {} | {} | {:.2} MB | {} |",
        r.pushes,
        r.elapsed.as_secs_f64(),
        r.samples_per_s(),
        r.spans_per_s(),
        r.pushes as f64 / r.elapsed.as_secs_f64(),
        p(0.5).map(ms).unwrap_or_default(),
        p(0.99).map(ms).unwrap_or_default(),
        match (r.rate_between(0.0, 0.1, samples_per_push), r.rate_between(0.9, 1.0, samples_per_push)) {
            (Some(a), Some(b)) => format!("{a:.0} → {b:.0}"),
            _ => "-".into(),
        },
        r.cpu.write_bytes as f64 / 1e6 / r.pushes.max(1) as f64,
        r.retries_503,
    );
}

fn print_latency(l: &Latency) {
    println!(
        "| {} | {} | {} | {} | {} | {} | {:.1} |",
        l.label,
        l.samples.len(),
        ms(l.pct(0.5)),
        ms(l.pct(0.99)),
        ms(l.max()),
        ms(l.mean()),
        l.bytes as f64 / l.samples.len().max(1) as f64 / 1e3,
    );
}

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
