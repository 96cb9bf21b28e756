//! Span-name aggregates against the span profiles they cover, over random pushes: the same span
//! ID pushed again in later minutes (merged and moved to its new last-seen minute), spans that
//! gain their name in a later push, several pushes committed in one group, outside-span samples
//! beside them, and time retention deleting part of the range. Whatever happened, an aggregate
//! equals the sum of the span profiles still stored whose last-seen minute is in its range.

use std::collections::BTreeMap;
use std::sync::Arc;

use spanprof_server::aggregate::{self, AggregateQuery};
use spanprof_server::model::{Frames, Labels, ProfileId, SeriesBatch, SpanContribution, StackCounts, rollup_span_name};
use spanprof_server::selector::Selector;
use spanprof_server::store::embedded::EmbeddedOptions;
use spanprof_server::store::{self, BUCKET_MS, ProcessQuery, ProfileStore, Retention, SpanQuery, Stacks};

const PERIOD: u64 = 10_000_000;
const FRAMES: [&str; 5] = ["main", "handle", "parse", "encode", "hash"];
const NAMES: [Option<&str>; 4] = [Some("Order"), Some("Pay"), None, Some("Order")];

/// xorshift64*: a seeded generator, so a failing case says its seed and reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn stacks(rng: &mut Rng, frames: &mut Frames) -> StackCounts {
    let mut s = StackCounts::new();
    for _ in 0..1 + rng.below(3) {
        let depth = 1 + rng.below(FRAMES.len() as u64) as usize;
        let ids: Vec<u32> = FRAMES[..depth].iter().map(|f| frames.intern(f)).collect();
        s.add(&ids, 1 + rng.below(5));
    }
    s
}

/// `ids`: how many distinct span IDs pushes draw from; `most`: most spans in one push.
fn push(rng: &mut Rng, t_ms: u64, ids: u64, most: u64) -> SeriesBatch {
    let mut labels = Labels::new();
    labels.insert("service_name".into(), "ride".into());
    labels.insert("__name__".into(), "process_cpu".into());
    labels.insert("pod".into(), format!("ride-{}", rng.below(2)));
    let mut frames = Frames::default();
    let spans = (0..1 + rng.below(most))
        .map(|_| SpanContribution {
            // A pool of IDs, so spans are pushed again, often in a later minute.
            profile_id: ProfileId::Span(1 + rng.below(ids)),
            trace_id: None,
            span_name: NAMES[rng.below(NAMES.len() as u64) as usize].map(str::to_owned),
            stacks: stacks(rng, &mut frames),
        })
        .collect();
    let process = if rng.below(2) == 0 { stacks(rng, &mut frames) } else { StackCounts::new() };
    SeriesBatch {
        labels,
        period_ns: PERIOD,
        from_ms: t_ms,
        until_ms: t_ms,
        frames,
        spans,
        process,
        dropped_labels: Default::default(),
    }
}

fn folded(stacks: &Stacks) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (frames, count) in stacks {
        let key = frames.iter().map(|f| f.as_ref()).collect::<Vec<_>>().join(";");
        *out.entry(key).or_default() += count;
    }
    out.retain(|_, c| *c > 0);
    out
}

/// Every stored span profile, from the listing.
fn stored(store: &dyn ProfileStore) -> Vec<spanprof_server::store::SpanProfile> {
    let page = store.search_spans(&SpanQuery { limit: 1000, ..Default::default() }).unwrap();
    assert!(page.next.is_none());
    page.profiles.iter().map(|s| store.span_profile(s.profile_id.clone()).unwrap().unwrap()).collect()
}

fn query(name: &str, from_ms: u64, until_ms: u64, min_cpu_ns: u64, max_cpu_ns: u64) -> AggregateQuery {
    let selector = Selector::parse(&format!(r#"{{service_name="ride", span_name="{name}"}}"#)).unwrap();
    AggregateQuery { selector, from_ms, until_ms, min_cpu_ns, max_cpu_ns }
}

fn check(store: &dyn ProfileStore, q: &AggregateQuery, seed: u64) {
    let (first, last) = (q.from_ms / BUCKET_MS * BUCKET_MS, q.until_ms / BUCKET_MS * BUCKET_MS);
    let name = q.selector.required("span_name").unwrap().to_owned();
    let covered: Vec<_> = stored(store)
        .into_iter()
        .filter(|p| rollup_span_name(&p.summary.span_name) == name)
        .filter(|p| (first..=last).contains(&(p.summary.last_seen_ms / BUCKET_MS * BUCKET_MS)))
        .filter(|p| (q.min_cpu_ns..=q.max_cpu_ns).contains(&(p.summary.samples * p.summary.period_ns)))
        .collect();
    let got = aggregate::aggregate(store, q).unwrap();
    let ctx =
        format!("seed {seed}, {name} in [{}, {}], cpu [{}, {}]", q.from_ms, q.until_ms, q.min_cpu_ns, q.max_cpu_ns);
    let Some(got) = got else {
        assert!(covered.is_empty(), "{ctx}: no aggregate for {} spans", covered.len());
        return;
    };
    assert_eq!(got.spans, covered.len() as u64, "{ctx}: spans");
    let samples: u64 = covered.iter().map(|p| p.summary.samples).sum();
    assert_eq!(got.samples, samples, "{ctx}: samples");
    assert_eq!(got.cpu_ns, samples * PERIOD, "{ctx}: cpu");
    let values: Vec<u64> = covered.iter().map(|p| p.summary.samples * p.summary.period_ns).collect();
    assert_eq!(got.distribution, aggregate::distribution(values, PERIOD), "{ctx}: distribution");
    let all: Stacks = covered.iter().flat_map(|p| p.stacks.clone()).collect();
    assert_eq!(folded(&got.stacks), folded(&all), "{ctx}: merged stacks");
    let heaviest = covered.iter().map(|p| p.summary.samples * p.summary.period_ns).max().unwrap();
    assert_eq!(got.heaviest[0].cpu_ns, heaviest, "{ctx}: heaviest");
}

#[test]
fn aggregates_equal_the_span_profiles_they_cover() {
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ProfileStore> = store::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let start = 1_700_000_000_000 / BUCKET_MS * BUCKET_MS;
        // Odd seeds: few IDs over 8 minutes (many merges and moves); even seeds: many spans in 2
        // minutes, so a minute's index holds several chunks and spans move out of full ones.
        let (span_of_minutes, ids, most) = if seed % 2 == 1 { (8, 12, 4) } else { (2, 400, 16) };
        let mut outside = 0;
        for _ in 0..20 {
            // One insert call of 1–3 pushes: they commit in one group.
            let pushes: Vec<SeriesBatch> = (0..1 + rng.below(3))
                .map(|_| {
                    let t = start + rng.below(span_of_minutes * BUCKET_MS);
                    push(&mut rng, t, ids, most)
                })
                .collect();
            outside += pushes.iter().map(|b| b.process.total()).sum::<u64>();
            store.insert(pushes).unwrap();
        }
        let until = start + span_of_minutes * BUCKET_MS;

        // A service's CPU is its span samples plus the samples outside spans.
        let span_samples: u64 = stored(store.as_ref()).iter().map(|p| p.summary.samples).sum();
        let all = ProcessQuery {
            selector: Selector::parse(r#"{service_name="ride"}"#).unwrap(),
            from_ms: start,
            until_ms: until,
        };
        let total: u64 = store.process_profile(&all).unwrap().map_or(0, |p| p.stacks.iter().map(|s| s.1).sum());
        assert_eq!(total, span_samples + outside, "seed {seed}: service total");

        if rng.below(2) == 0 {
            let cutoff = start + rng.below(span_of_minutes * BUCKET_MS);
            let now = until + 1;
            let max_age = std::time::Duration::from_millis(now - cutoff);
            store.enforce_retention(&Retention { max_age: Some(max_age), max_bytes: None }, now).unwrap();
        }
        for name in ["Order", "Pay", "[unnamed]"] {
            check(store.as_ref(), &query(name, start, until, 0, u64::MAX), seed);
            let from = start + rng.below(span_of_minutes * BUCKET_MS);
            let to = from + rng.below(until - from + 1);
            check(store.as_ref(), &query(name, from, to, 0, u64::MAX), seed);
            let lo = rng.below(8) * PERIOD;
            check(store.as_ref(), &query(name, start, until, lo, lo + rng.below(12) * PERIOD), seed);
        }
        store.close();
    }
}
