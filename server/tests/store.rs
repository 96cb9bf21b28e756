//! The embedded store through its trait: size-based retention, concurrent group commits, merges
//! within one transaction, string profile IDs and reopening.

use std::path::Path;
use std::sync::Arc;

use spanprof_server::model::{Frames, Labels, ProfileId, SeriesBatch, SpanContribution, StackCounts, TraceId};
use spanprof_server::store::embedded::EmbeddedOptions;
use spanprof_server::store::{self, ProfileStore, Retention, SpanQuery};

fn open(dir: &Path) -> Arc<dyn ProfileStore> {
    store::open(dir, EmbeddedOptions::default()).unwrap()
}

fn batch(id: u64, t_ms: u64, frames: &[&str], count: u64) -> SeriesBatch {
    batch_of(ProfileId::Span(id), None, t_ms, frames, count)
}

fn batch_of(id: ProfileId, trace: Option<TraceId>, t_ms: u64, frames: &[&str], count: u64) -> SeriesBatch {
    let mut labels = Labels::new();
    labels.insert("service_name".into(), "svc".into());
    let mut table = Frames::default();
    let ids: Vec<u32> = frames.iter().map(|f| table.intern(f)).collect();
    let mut stacks = StackCounts::new();
    stacks.add(&ids, count);
    SeriesBatch {
        labels,
        period_ns: 10_000_000,
        from_ms: t_ms,
        until_ms: t_ms,
        frames: table,
        spans: vec![SpanContribution { profile_id: id, trace_id: trace, span_name: Some("S".into()), stacks }],
        process: StackCounts::new(),
        dropped_labels: Default::default(),
    }
}

#[test]
fn size_retention_deletes_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 1..=300u64 {
        let f = format!("frame_{i}");
        store.insert(vec![batch(i, 1_000 + i, &["main", &f], i)]).unwrap();
    }
    let before = store.stats().unwrap();
    assert_eq!(before.span_profiles, 300);
    let limit = before.record_bytes / 3;
    let stats = store.enforce_retention(&Retention { max_age: None, max_bytes: Some(limit) }, 10_000).unwrap();
    assert!(stats.span_profiles_deleted >= 150, "{stats:?}");
    let after = store.stats().unwrap();
    assert!(after.record_bytes <= limit, "{} > {limit}", after.record_bytes);
    assert_eq!(after.span_profiles, 300 - stats.span_profiles_deleted);
    assert!(store.span_profile(ProfileId::Span(1)).unwrap().is_none(), "oldest survived");
    assert!(store.span_profile(ProfileId::Span(300)).unwrap().is_some(), "newest deleted");
    let page = store.search_spans(&SpanQuery { limit: 1000, ..Default::default() }).unwrap();
    assert_eq!(page.profiles.len() as u64, after.span_profiles, "index and records agree");
}

#[test]
fn concurrent_inserts_to_one_id_all_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25u64 {
                    store.insert(vec![batch(42, 1_000 + i, &["main", if t % 2 == 0 { "a" } else { "b" }], 1)]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let p = store.span_profile(ProfileId::Span(42)).unwrap().unwrap();
    assert_eq!(p.summary.samples, 200);
    assert_eq!(p.stacks.iter().map(|(_, c)| c).sum::<u64>(), 200);
    assert_eq!(p.stacks.len(), 2);
    store.close();
    assert!(store.insert(vec![batch(1, 1, &["x"], 1)]).is_err(), "a closed store refuses inserts");
}

#[test]
fn one_id_twice_in_one_transaction_merges() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Two batches of one insert are one transaction: the second must see the first's record.
    let stats = store
        .insert(vec![
            batch(7, 1_000, &["main", "a"], 2),
            batch(7, 2_000, &["main", "b"], 3),
            batch(8, 1_500, &["x"], 1),
        ])
        .unwrap();
    assert_eq!((stats.span_profiles_created, stats.span_profiles_merged), (2, 1));
    let p = store.span_profile(ProfileId::Span(7)).unwrap().unwrap();
    assert_eq!(p.summary.samples, 5);
    assert_eq!((p.summary.first_seen_ms, p.summary.last_seen_ms), (1_000, 2_000));
    assert_eq!(p.stacks.len(), 2);
    assert_eq!(store.stats().unwrap().span_profiles, 2);
    // The time index holds the merged profile once, at its new last-seen time.
    let page = store.search_spans(&SpanQuery { limit: 10, ..Default::default() }).unwrap();
    let ids: Vec<ProfileId> = page.profiles.iter().map(|s| s.profile_id.clone()).collect();
    assert_eq!(ids, vec![ProfileId::Span(7), ProfileId::Span(8)]);
    let page = store.search_spans(&SpanQuery { limit: 10, service: Some("svc".into()), ..Default::default() }).unwrap();
    assert_eq!(page.profiles.len(), 2);
    assert_eq!(store.services().unwrap(), vec!["svc".to_string()]);
}

#[test]
fn reopen_keeps_profiles_and_interned_stacks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.insert(vec![batch(1, 1_000, &["main", "a"], 2)]).unwrap();
        store.close();
    }
    let store = open(dir.path());
    // New frames after the reopen must get fresh IDs, not overwrite the stored ones.
    store.insert(vec![batch(2, 2_000, &["main", "c", "d"], 1), batch(1, 2_000, &["main", "a"], 1)]).unwrap();
    let p1 = store.span_profile(ProfileId::Span(1)).unwrap().unwrap();
    assert_eq!(p1.summary.samples, 3);
    let names: Vec<&str> = p1.stacks[0].0.iter().map(|f| &**f).collect();
    assert_eq!(names, ["main", "a"]);
    let p2 = store.span_profile(ProfileId::Span(2)).unwrap().unwrap();
    let names: Vec<&str> = p2.stacks[0].0.iter().map(|f| &**f).collect();
    assert_eq!(names, ["main", "c", "d"]);
    let s = store.stats().unwrap();
    assert_eq!(s.span_profiles, 2);
    assert!(s.file_bytes > 0 && s.record_bytes > 0, "{s:?}");
    store.close();
}

#[test]
fn string_profile_ids_merge_page_and_expire_beside_span_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let trace = TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    // Lengths around the 8 bytes of a span ID's key, characters a URL or key encoding could
    // trip on, and span IDs — all at the same times, so the ID orders the listing.
    let named = ["checkout-42", "1234567", "12345678", "123456", "a/b?c=d e", "€uro", "ffffffffffffffff0"];
    let mut ids: Vec<ProfileId> = named.iter().map(|n| ProfileId::parse(n).unwrap()).collect();
    ids.push(ProfileId::Span(u64::MAX));
    ids.push(ProfileId::Span(1));
    for (i, id) in ids.iter().enumerate() {
        let t = 1_000 + (i as u64 % 3);
        store.insert(vec![batch_of(id.clone(), Some(trace), t, &["main", &format!("f{i}")], 1)]).unwrap();
    }
    // The same string again merges; one that differs in case does not.
    store.insert(vec![batch_of(ids[0].clone(), None, 1_005, &["main", "again"], 2)]).unwrap();
    store.insert(vec![batch_of(ProfileId::parse("Checkout-42").unwrap(), None, 1_006, &["main"], 1)]).unwrap();
    let p = store.span_profile(ids[0].clone()).unwrap().unwrap();
    assert_eq!((p.summary.samples, p.summary.last_seen_ms), (3, 1_005));
    assert_eq!(p.summary.profile_id, ids[0]);
    assert_eq!(p.summary.trace_id, Some(trace));
    for id in &ids {
        assert_eq!(&store.span_profile(id.clone()).unwrap().unwrap().summary.profile_id, id);
    }
    assert!(store.span_profile(ProfileId::parse("checkout-4").unwrap()).unwrap().is_none());

    // Every listing pages through every profile exactly once, newest first, by cursor.
    for service in [None, Some("svc".to_string())] {
        for trace_id in [None, Some(trace)] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let q = SpanQuery {
                    limit: 2,
                    service: service.clone(),
                    trace_id,
                    after: after.clone(),
                    ..Default::default()
                };
                let page = store.search_spans(&q).unwrap();
                seen.extend(page.profiles.iter().map(|s| (s.last_seen_ms, s.profile_id.clone())));
                let Some(next) = page.next else { break };
                let cursor = store::Cursor::decode(&next.encode()).unwrap();
                assert_eq!(cursor, next);
                after = Some(cursor);
            }
            let expected = if trace_id.is_some() { ids.len() } else { ids.len() + 1 };
            assert_eq!(seen.len(), expected, "service {service:?} trace {trace_id:?}: {seen:?}");
            assert!(seen.windows(2).all(|w| w[0].0 >= w[1].0), "newest first: {seen:?}");
            let distinct: std::collections::HashSet<_> = seen.iter().map(|s| &s.1).collect();
            assert_eq!(distinct.len(), seen.len(), "each once: {seen:?}");
        }
    }
    let in_trace = store.trace(trace).unwrap();
    assert_eq!(in_trace.len(), ids.len());

    // Retention deletes them like any span profile, index entries included.
    store
        .enforce_retention(&Retention { max_age: Some(std::time::Duration::from_millis(1)), max_bytes: None }, 1_004)
        .unwrap();
    assert!(store.span_profile(ids[1].clone()).unwrap().is_none());
    assert!(store.span_profile(ids[0].clone()).unwrap().is_some(), "seen at 1005");
    let left = store.search_spans(&SpanQuery { limit: 100, ..Default::default() }).unwrap();
    assert_eq!(left.profiles.len(), 2, "{:?}", left.profiles);
    assert_eq!(store.trace(trace).unwrap().len(), 1);
    assert_eq!(store.stats().unwrap().span_profiles, 2);
}

fn names(p: &spanprof_server::store::SpanProfile) -> Vec<String> {
    p.stacks.iter().flat_map(|(frames, _)| frames.iter().map(|f| f.to_string())).collect()
}

#[test]
fn collection_deletes_only_unreferenced_frames_and_stacks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Profiles 1..=100, each late in a minute of its own (its span rollup's bucket holds its
    // stacks too): a frame of their own each, and "main" shared by all.
    for i in 1..=100u64 {
        store.insert(vec![batch(i, i * 60_000 + 59_000, &["main", &format!("own_{i}")], 1)]).unwrap();
    }
    assert_eq!(store.collect_garbage().unwrap(), Default::default(), "nothing unreferenced yet");
    let before = store.stats().unwrap();
    // Age retention with the cutoff just past minute 50's end keeps profiles 51..=100 and their
    // minutes.
    let max_age = std::time::Duration::from_millis(1_000_000);
    let gone = store
        .enforce_retention(&Retention { max_age: Some(max_age), max_bytes: None }, 1_000_000 + 51 * 60_000 + 1)
        .unwrap();
    assert_eq!(gone.span_profiles_deleted, 50);
    let gc = store.collect_garbage().unwrap();
    assert_eq!((gc.frames_deleted, gc.stacks_deleted), (50, 50), "each deleted profile's own frame and stack");
    let after = store.stats().unwrap();
    assert!(after.interned_bytes < before.interned_bytes, "{before:?} → {after:?}");
    assert_eq!(store.collect_garbage().unwrap(), Default::default(), "a second pass finds nothing");
    // What is left reads whole, and a deleted frame name comes back as a new frame.
    for i in 51..=100u64 {
        assert_eq!(names(&store.span_profile(ProfileId::Span(i)).unwrap().unwrap()), ["main", &format!("own_{i}")]);
    }
    store.insert(vec![batch(1_001, 5_000, &["main", "own_1"], 1)]).unwrap();
    assert_eq!(names(&store.span_profile(ProfileId::Span(1_001)).unwrap().unwrap()), ["main", "own_1"]);
    // The interner a restart rebuilds agrees: same names, no reuse of a deleted ID for another.
    store.close();
    drop(store);
    let store = open(dir.path());
    store.insert(vec![batch(1_002, 6_000, &["main", "own_2", "own_60"], 1)]).unwrap();
    assert_eq!(names(&store.span_profile(ProfileId::Span(1_002)).unwrap().unwrap()), ["main", "own_2", "own_60"]);
    assert_eq!(names(&store.span_profile(ProfileId::Span(60)).unwrap().unwrap()), ["main", "own_60"]);
    assert_eq!(names(&store.span_profile(ProfileId::Span(1_001)).unwrap().unwrap()), ["main", "own_1"]);
}

#[test]
fn size_retention_counts_interned_frames_and_gets_under_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Frames that never repeat: the interned names are most of the store, not the records.
    for i in 1..=100u64 {
        let own: Vec<String> = (0..8).map(|j| format!("f{i}_{j}_{}", "x".repeat(1000))).collect();
        let frames: Vec<&str> = own.iter().map(String::as_str).collect();
        // A minute each: a span and its rollup's bucket age out together.
        store.insert(vec![batch(i, i * 60_000, &frames, 1)]).unwrap();
    }
    let before = store.stats().unwrap();
    assert!(before.interned_bytes > 4 * before.record_bytes, "{before:?}");
    let limit = (before.record_bytes + before.interned_bytes) / 2;
    let policy = Retention { max_age: None, max_bytes: Some(limit) };
    // Retention then a collection, as the server runs them; the second round makes up for the
    // first one's estimate.
    for _ in 0..2 {
        store.enforce_retention(&policy, 10_000).unwrap();
        store.collect_garbage().unwrap();
    }
    let after = store.stats().unwrap();
    assert!(after.record_bytes + after.interned_bytes <= limit, "{after:?} over {limit}");
    assert!(after.span_profiles >= 40, "deleted far more than needed: {after:?}");
    assert!(store.span_profile(ProfileId::Span(100)).unwrap().is_some(), "newest deleted");
}

#[test]
fn a_data_dir_of_the_removed_redb_engine_is_refused_not_started_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spanprof.redb"), b"a redb file").unwrap();
    let err = store::open(dir.path(), EmbeddedOptions::default()).err().expect("a redb data dir opened");
    let message = err.to_string();
    assert!(message.contains("0.1.0 at commit") && message.contains("--store-engine redb"), "{message}");
    assert!(!dir.path().join("spanprof.fjall").exists(), "nothing created beside the redb store");
}

/// Concurrent inserts land in one group commit, whose bucket additions are merged before each
/// bucket record is written once: the whole-process profile and its per-minute series say the
/// same as inserting one at a time, span samples (through their rollups) included.
#[test]
fn grouped_inserts_add_up_in_buckets_as_single_ones() {
    use spanprof_server::selector::Selector;
    use spanprof_server::store::ProcessQuery;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..50u64 {
                    let mut b = batch(t * 1000 + i, 60_000 + i, &["main", "work", &format!("f{}", i % 7)], 1 + i % 3);
                    b.process.add(&[0], 2); // "main" alone, outside spans
                    store.insert(vec![b]).unwrap();
                }
            });
        }
    });
    let expected_spans: u64 = 4 * (0..50u64).map(|i| 1 + i % 3).sum::<u64>();
    let q = |sel: &str| ProcessQuery { selector: Selector::parse(sel).unwrap(), from_ms: 0, until_ms: 200_000 };
    let total = |sel: &str| store.process_profile(&q(sel)).unwrap().unwrap().stacks.iter().map(|s| s.1).sum::<u64>();
    assert_eq!(total("{service_name=\"svc\"}"), expected_spans + 4 * 50 * 2);
    assert_eq!(total("{span_name=\"S\"}"), expected_spans);
    assert_eq!(total("{span_name=\"\"}"), 4 * 50 * 2);
    let series = store.process_series(&q("{}")).unwrap();
    let points: Vec<(u64, u64)> = series.iter().flat_map(|s| s.points.iter().map(|p| (p.0, p.1))).collect();
    assert!(points.iter().all(|p| p.0 == 60_000), "one minute: {points:?}");
    assert_eq!(points.iter().map(|p| p.1).sum::<u64>(), expected_spans + 4 * 50 * 2);
    assert_eq!(series.len(), 2, "the series and its span rollup");
}
