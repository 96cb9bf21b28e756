//! Span-name aggregates: how long one hour of span profiles of one span name takes to answer
//! from the span index and rollups the store keeps at insert, beside the same answer computed
//! the way it would be without them (listing every span profile of the range and reading each).
//!
//! ```text
//! cargo bench -p spanprof-server --bench aggregate                      # 100,000 spans in one hour
//! cargo bench -p spanprof-server --bench aggregate -- --spans 20000 --names 4 --runs 11
//! ```
//!
//! The data: `--spans` root spans of one service over one hour, pushed every 10 s by 4 pods
//! (each push's spans get 1–4 samples over 1–3 of 500 stacks of 20–30 frames), one in five
//! pushed again in the next push (merged, often into the next minute), spread over `--names`
//! span names; the aggregate asked is the first name's. Timed in-process against the embedded
//! store on a fresh temporary directory: the median and slowest of `--runs` answers (default
//! 21) for the whole aggregate, for its slowest 10 % (a CPU filter: those profiles are merged
//! one by one), and the scan baseline (3 runs). Nothing here asserts on time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spanprof_server::aggregate::{self, AggregateQuery};
use spanprof_server::model::{Frames, Labels, ProfileId, SeriesBatch, SpanContribution, StackCounts};
use spanprof_server::query;
use spanprof_server::selector::Selector;
use spanprof_server::store::embedded::EmbeddedOptions;
use spanprof_server::store::{self, ProfileStore, SpanQuery};

struct Args {
    spans: u64,
    names: u64,
    runs: usize,
}

fn args() -> Args {
    let mut a = Args { spans: 100_000, names: 1, runs: 21 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--spans" => a.spans = value.parse().expect("--spans N"),
            "--names" => a.names = value.parse::<u64>().expect("--names N").max(1),
            "--runs" => a.runs = value.parse::<usize>().expect("--runs N").max(1),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const PODS: u64 = 4;
const PUSH_MS: u64 = 10_000;
const HOUR_MS: u64 = 3_600_000;

fn stack_pool(rng: &mut Rng) -> Vec<Vec<String>> {
    (0..500)
        .map(|_| {
            let depth = 20 + rng.below(11);
            (0..depth)
                .map(|d| if d < 3 { format!("runtime_{d}") } else { format!("fn_{}", rng.below(2_000)) })
                .collect()
        })
        .collect()
}

fn load(store: &dyn ProfileStore, a: &Args, start_ms: u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let pool = stack_pool(&mut rng);
    let pushes = HOUR_MS / PUSH_MS * PODS;
    let per_push = a.spans.div_ceil(pushes);
    let mut next_id = 1u64;
    let mut again: Vec<Vec<(u64, u64)>> = vec![Vec::new(); PODS as usize];
    for p in 0..pushes {
        let pod = p % PODS;
        let t = start_ms + p / PODS * PUSH_MS + pod * 100;
        let mut labels = Labels::new();
        labels.insert("service_name".into(), "ride".into());
        labels.insert("__name__".into(), "process_cpu".into());
        labels.insert("pod".into(), format!("ride-{pod}"));
        let mut frames = Frames::default();
        let mut spans = Vec::new();
        let span = |id: u64, name: u64, frames: &mut Frames, rng: &mut Rng| {
            let mut stacks = StackCounts::new();
            for _ in 0..1 + rng.below(3) {
                let s = &pool[rng.below(pool.len() as u64) as usize];
                let ids: Vec<u32> = s.iter().map(|f| frames.intern(f)).collect();
                stacks.add(&ids, 1 + rng.below(2));
            }
            SpanContribution {
                profile_id: ProfileId::Span(id),
                trace_id: None,
                span_name: Some(format!("Span{name}")),
                stacks,
            }
        };
        for (id, name) in std::mem::take(&mut again[pod as usize]) {
            spans.push(span(id, name, &mut frames, &mut rng));
        }
        for _ in 0..per_push {
            if next_id > a.spans {
                break;
            }
            let name = next_id % a.names;
            spans.push(span(next_id, name, &mut frames, &mut rng));
            if rng.below(5) == 0 {
                again[pod as usize].push((next_id, name));
            }
            next_id += 1;
        }
        let batch = SeriesBatch {
            labels,
            period_ns: 10_000_000,
            from_ms: t,
            until_ms: t,
            frames,
            spans,
            process: StackCounts::new(),
            dropped_labels: Default::default(),
        };
        store.insert(vec![batch]).expect("insert");
    }
}

fn timed<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1], last.expect("runs > 0"))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn ProfileStore> = store::open(dir.path(), EmbeddedOptions::default()).expect("open");
    let start_ms = 1_700_000_000_000 / 60_000 * 60_000;
    let t = Instant::now();
    load(store.as_ref(), &a, start_ms);
    println!("loaded {} spans over one hour in {:.1} s ({} span names)", a.spans, t.elapsed().as_secs_f64(), a.names);

    let selector = Selector::parse(r#"{service_name="ride", span_name="Span0"}"#).expect("selector");
    let whole = AggregateQuery {
        selector: selector.clone(),
        from_ms: start_ms,
        until_ms: start_ms + HOUR_MS,
        min_cpu_ns: 0,
        max_cpu_ns: u64::MAX,
    };
    let (median, slowest, answer) =
        timed(a.runs, || aggregate::aggregate(store.as_ref(), &whole).expect("aggregate").expect("spans"));
    println!(
        "aggregate, whole:        median {}, slowest {} ({} spans, {} samples, p50 {} ms, p99 {} ms, {} stacks)",
        ms(median),
        ms(slowest),
        answer.spans,
        answer.samples,
        answer.distribution.p50_ns / 1_000_000,
        answer.distribution.p99_ns / 1_000_000,
        answer.stacks.len()
    );
    let pq = spanprof_server::store::ProcessQuery {
        selector: selector.clone(),
        from_ms: start_ms,
        until_ms: start_ms + HOUR_MS,
    };
    let (median, _, n) = timed(a.runs, || store.span_stats(&pq).expect("stats").len());
    println!("  of which the span index: median {} ({n} entries)", ms(median));
    let (median, _, n) = timed(a.runs, || store.process_profile(&pq).expect("rollups").map_or(0, |p| p.stacks.len()));
    println!("  of which the rollups:    median {} ({n} stacks)", ms(median));
    let slow = AggregateQuery { min_cpu_ns: answer.distribution.p90_ns, ..whole.clone() };
    let (median, slowest, filtered) =
        timed(a.runs, || aggregate::aggregate(store.as_ref(), &slow).expect("aggregate").expect("spans"));
    println!(
        "aggregate, slowest 10 %: median {}, slowest {} ({} spans merged one by one)",
        ms(median),
        ms(slowest),
        filtered.spans
    );

    // The same counts and stacks from every span profile of the range, as a store without the
    // span index and rollups would compute them.
    let (median, slowest, scanned) = timed(3, || {
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .search_spans(&SpanQuery {
                    service: Some("ride".into()),
                    span_name: Some("Span0".into()),
                    from_ms: Some(start_ms),
                    until_ms: Some(start_ms + HOUR_MS),
                    limit: 1000,
                    after,
                    ..Default::default()
                })
                .expect("search");
            ids.extend(page.profiles.into_iter().map(|s| s.profile_id));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let profiles = query::span_profiles(store.as_ref(), &ids, &Selector::all()).expect("profiles");
        let n = profiles.len();
        let (_, stacks) = query::merge_spans(profiles);
        (n, stacks.iter().map(|s| s.1).sum::<u64>())
    });
    println!(
        "scan of every span profile (baseline): median {}, slowest {} ({} spans, {} samples)",
        ms(median),
        ms(slowest),
        scanned.0,
        scanned.1
    );
    store.close();
}
