//! Deterministic randomness (no dependency): xorshift64* seeded through splitmix64.

use super::*;

pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Skewed towards small indices (a few hot code paths, a long tail), in `0..n`.
    pub(crate) fn skewed(&mut self, n: usize) -> usize {
        let u = self.unit();
        ((u * u * u) * n as f64) as usize % n.max(1)
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

// ---------------------------------------------------------------------------------------------
// The workload: a ride-sharing service's code paths.

pub(crate) const SPAN_NAMES: &[&str] =
    &["OrderVehicle", "CarHandler", "BikeHandler", "ScooterHandler", "PaymentHandler", "RouteHandler"];
pub(crate) const HANDLERS: &[&str] = &[
    "ride_sharing::api::order_vehicle::{{closure}}",
    "ride_sharing::car::handler::{{closure}}",
    "ride_sharing::bike::handler::{{closure}}",
    "ride_sharing::scooter::handler::{{closure}}",
    "ride_sharing::payments::handler::{{closure}}",
    "ride_sharing::routing::handler::{{closure}}",
];
pub(crate) const RUNTIME_PREFIX: &[&str] = &[
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
pub(crate) const APP_MODULES: &[&str] = &[
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
pub(crate) const APP_FUNCTIONS: &[&str] = &[
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
pub(crate) const LIBRARY: &[&str] = &[
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
pub(crate) const BACKGROUND: &[&str] = &[
    "ride_sharing::background::refresh_vehicle_index",
    "ride_sharing::background::expire_reservations",
    "ride_sharing::telemetry::export_metrics",
    "tokio::runtime::time::Driver::park_internal",
    "tokio::runtime::io::driver::Driver::turn",
    "mio::poll::Poll::poll",
    "epoll_wait",
];

pub(crate) struct Workload {
    pub(crate) functions: Vec<String>,
    /// Code paths run inside a span: (handler index, function indices root first).
    pub(crate) span_stacks_by_handler: Vec<Vec<Vec<u32>>>,
    /// Code paths outside any span (background tasks, the runtime itself).
    pub(crate) process_stacks: Vec<Vec<u32>>,
}

impl Workload {
    pub(crate) fn new(stack_pool: usize, seed: u64) -> Workload {
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
pub(crate) struct SpanRec {
    pub(crate) id: u64,
    pub(crate) trace: u128,
    pub(crate) name: u8,
}

/// One push to send: the request body and what it holds.
pub(crate) struct Push {
    pub(crate) body: Bytes,
    pub(crate) samples: u64,
}

pub(crate) const SERVICES: &[&str] = &["ride-sharing-app", "ride-dispatch"];
pub(crate) const PODS_PER_SERVICE: usize = 4;

pub(crate) fn series_labels(n: usize) -> Vec<LabelPair> {
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

pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Builds one push: a gzipped pprof with `samples` samples over `spans` (each at least one
/// sample) and `process_share` of samples outside spans. Returns the body and, per span, its
/// sample count (same order as `spans`).
pub(crate) fn build_push(
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
pub(crate) fn new_spans(count: usize, seed: u64) -> Vec<SpanRec> {
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
pub(crate) type Built = (Push, Vec<SpanRec>, Vec<u32>);
/// Checks one response: (index, status, body) → error text.
pub(crate) type Check<'a> = &'a (dyn Fn(usize, u16, &[u8]) -> Result<(), String> + Sync);

/// Builds pushes `0..n` on all cores. `spans_of(i)` gives push i's spans.
pub(crate) fn build_pushes(
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
