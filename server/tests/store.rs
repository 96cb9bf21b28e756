//! The embedded store through its trait: size-based retention and concurrent group commits.

use std::sync::Arc;

use spanprof_server::model::{Frames, Labels, ProfileId, SeriesBatch, SpanContribution, StackCounts};
use spanprof_server::store::embedded::{EmbeddedOptions, EmbeddedStore};
use spanprof_server::store::{ProfileStore, Retention, SpanQuery};

fn batch(id: u64, t_ms: u64, frames: &[&str], count: u64) -> SeriesBatch {
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
        spans: vec![SpanContribution { profile_id: ProfileId(id), trace_id: None, span_name: Some("S".into()), stacks }],
        process: StackCounts::new(),
    }
}

#[test]
fn size_retention_deletes_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
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
    assert!(store.span_profile(ProfileId(1)).unwrap().is_none(), "oldest survived");
    assert!(store.span_profile(ProfileId(300)).unwrap().is_some(), "newest deleted");
    let page = store.search_spans(&SpanQuery { limit: 1000, ..Default::default() }).unwrap();
    assert_eq!(page.profiles.len() as u64, after.span_profiles, "index and records agree");
}

#[test]
fn concurrent_inserts_to_one_id_all_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap());
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
    let p = store.span_profile(ProfileId(42)).unwrap().unwrap();
    assert_eq!(p.summary.samples, 200);
    assert_eq!(p.stacks.iter().map(|(_, c)| c).sum::<u64>(), 200);
    assert_eq!(p.stacks.len(), 2);
    store.close();
    assert!(store.insert(vec![batch(1, 1, &["x"], 1)]).is_err(), "a closed store refuses inserts");
}
