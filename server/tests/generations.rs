//! The local generations of a server with `--object-store`: inserts racing a seal land in exactly
//! one generation, a restart seals what the last run left (and takes over a plain embedded store),
//! a retired generation's directory goes when its last reader lets go, and a data directory with
//! generations is not opened as a plain embedded store.

use std::path::Path;
use std::sync::Arc;

use spanprof_server::model::{Frames, Labels, ProfileId, SeriesBatch, SpanContribution, StackCounts};
use spanprof_server::store::embedded::EmbeddedOptions;
use spanprof_server::store::generations::{GENERATIONS_DIR, Generations};
use spanprof_server::store::{self, ProfileStore};

fn batch(id: u64, count: u64) -> SeriesBatch {
    let mut labels = Labels::new();
    labels.insert("service_name".into(), "svc".into());
    let mut table = Frames::default();
    let ids: Vec<u32> = ["main", "work"].iter().map(|f| table.intern(f)).collect();
    let mut stacks = StackCounts::new();
    stacks.add(&ids, count);
    SeriesBatch {
        labels,
        period_ns: 10_000_000,
        from_ms: 1_000,
        until_ms: 1_000,
        frames: table,
        spans: vec![SpanContribution {
            profile_id: ProfileId::Span(id),
            trace_id: None,
            span_name: Some("S".into()),
            stacks,
        }],
        process: StackCounts::new(),
        dropped_labels: Default::default(),
    }
}

fn open(dir: &Path) -> Generations {
    Generations::open(dir, EmbeddedOptions::default(), "test", 1_000).unwrap()
}

fn generation_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(GENERATIONS_DIR)).unwrap().count()
}

#[test]
fn inserts_racing_a_seal_land_in_exactly_one_generation() {
    let dir = tempfile::tempdir().unwrap();
    let gens = Arc::new(open(dir.path()));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let gens = gens.clone();
            std::thread::spawn(move || {
                for i in 0..300u64 {
                    gens.insert(vec![batch(1 + w * 1_000 + i, 1)]).unwrap();
                }
            })
        })
        .collect();
    let mut sealed = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        sealed += usize::from(gens.seal(2_000).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(sealed >= 2, "the test sealed while inserts ran ({sealed})");
    let all = gens.all().unwrap();
    assert_eq!(all.len(), sealed + 1);
    for w in 0..2u64 {
        for i in 0..300u64 {
            let id = ProfileId::Span(1 + w * 1_000 + i);
            let holders = all.iter().filter(|g| g.store.span_profile(id.clone()).unwrap().is_some()).count();
            assert_eq!(holders, 1, "{id} is in exactly one generation");
        }
    }
    let total: u64 = all.iter().map(|g| g.store.stats().unwrap().span_profiles).sum();
    assert_eq!(total, 600);
    gens.close();
}

#[test]
fn a_restart_seals_what_was_left_and_takes_over_an_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    // A plain embedded store (a server run without --object-store).
    let plain = store::open(dir.path(), EmbeddedOptions::default()).unwrap();
    plain.insert(vec![batch(7, 3)]).unwrap();
    plain.close();
    drop(plain);

    let gens = open(dir.path());
    let old = gens.oldest_sealed().unwrap().expect("the embedded store is sealed");
    assert_eq!(old.store.span_profile(ProfileId::Span(7)).unwrap().unwrap().summary.samples, 3);
    assert!(gens.head().unwrap().is_empty().unwrap());
    assert!(!dir.path().join(store::embedded::DIR_NAME).exists(), "moved, not copied");
    drop(old);
    gens.insert(vec![batch(8, 2)]).unwrap();
    gens.close();
    drop(gens);

    // The head of the last run is sealed too: two generations wait, oldest first.
    let gens = open(dir.path());
    let all = gens.all().unwrap();
    assert_eq!(all.len(), 3, "head + two sealed");
    assert!(all[1].store.span_profile(ProfileId::Span(7)).unwrap().is_some());
    assert!(all[2].store.span_profile(ProfileId::Span(8)).unwrap().is_some());
    drop(all);
    gens.close();
    drop(gens);
    // The empty head of that run is gone; nothing else.
    assert_eq!(generation_dirs(dir.path()), 2);

    // A generation whose delete the process did not finish (renamed first, so never half a
    // generation) is deleted at the start.
    let trash = dir.path().join(GENERATIONS_DIR).join(".deleting-1-test-0");
    std::fs::create_dir_all(trash.join(store::embedded::DIR_NAME)).unwrap();
    std::fs::write(trash.join(store::embedded::DIR_NAME).join("junk"), b"x").unwrap();
    let gens = open(dir.path());
    assert!(!trash.exists());
    assert_eq!(gens.all().unwrap().len(), 3, "the two sealed and a new head; nothing from the trash");
    gens.close();
    drop(gens);

    // A plain embedded store is refused here: it would leave the generations unseen.
    let err = store::open(dir.path(), EmbeddedOptions::default()).err().expect("refused");
    assert!(err.to_string().contains("--object-store"), "{err}");
}

#[test]
fn a_retired_generation_goes_when_its_last_reader_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let gens = open(dir.path());
    gens.insert(vec![batch(9, 1)]).unwrap();
    assert!(gens.seal(2_000).unwrap());
    assert!(!gens.seal(2_001).unwrap(), "an empty head is not sealed");
    let reader = gens.oldest_sealed().unwrap().unwrap();
    let id = reader.block_id.clone();
    gens.retire(&id).unwrap();
    assert!(gens.oldest_sealed().unwrap().is_none(), "new queries no longer see it");
    assert!(dir.path().join(GENERATIONS_DIR).join(&id).exists(), "still read");
    assert!(reader.store.span_profile(ProfileId::Span(9)).unwrap().is_some(), "a running query still reads it");
    drop(reader);
    assert!(!dir.path().join(GENERATIONS_DIR).join(&id).exists(), "gone with its last reader");
    gens.close();
}
