//! Writers and readers at full speed on the same file: every answer a reader gets is checked
//! against what the writers really published.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{root, small, truth, writer};
use spanprof_channel::{Answer, NameRef, Reader, Root, monotonic_ns};

const WRITERS: usize = 3;
const READERS: usize = 2;
const RUN_FOR: Duration = Duration::from_millis(1500);
/// Readers ask about times at least this far back, the way a sampler reads samples after the
/// fact (a transition is published within nanoseconds of its timestamp).
const MARGIN_NS: u64 = 20_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[test]
fn concurrent_readers_never_get_a_wrong_answer() {
    // A small ring, so readers constantly race the writer lapping it.
    let (_dir, w) = writer(small(8, 32));
    let names: Vec<NameRef> = ["OrderVehicle", "CarHandler", "FindNearest"].iter().map(|n| w.intern(n)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(WRITERS + READERS));
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();

    let writers: Vec<_> = (0..WRITERS)
        .map(|k| {
            let (w, stop, start, tid_tx, names) =
                (Arc::clone(&w), Arc::clone(&stop), Arc::clone(&start), tid_tx.clone(), names.clone());
            std::thread::spawn(move || {
                let mut slot = w.register_thread().unwrap();
                tid_tx.send(slot.tid()).unwrap();
                start.wait();
                let mut rng = Rng(k as u64 + 1);
                let mut history: Vec<(u64, Option<Root>)> = Vec::new();
                let mut current: Option<Root> = None;
                let mut next_id = (k as u64 + 1) << 40;
                while !stop.load(Ordering::Relaxed) {
                    let roll = rng.next();
                    let new = if roll.is_multiple_of(4) {
                        None
                    } else {
                        next_id += 1;
                        let mut r = root(next_id, names[(roll % 3) as usize]);
                        r.trace_id ^= u128::from(rng.next()) << 3;
                        Some(r)
                    };
                    if new == current {
                        continue;
                    }
                    let t = slot.record(new.as_ref());
                    history.push((t, new));
                    current = new;
                    // Vary the pace: bursts that lap the ring, and pauses that readers can catch.
                    let pause = rng.next();
                    let spin = if pause.is_multiple_of(64) { 20_000 } else { pause % 500 };
                    for _ in 0..spin {
                        std::hint::spin_loop();
                    }
                }
                (slot.tid(), history)
            })
        })
        .collect();
    let tids: Vec<u32> = (0..WRITERS).map(|_| tid_rx.recv().unwrap()).collect();

    let readers: Vec<_> = (0..READERS)
        .map(|k| {
            let (path, stop, start, tids) = (w.path().to_owned(), Arc::clone(&stop), Arc::clone(&start), tids.clone());
            std::thread::spawn(move || {
                let reader = Reader::open(&path).unwrap();
                start.wait();
                let mut rng = Rng(1000 + k as u64);
                let mut answers = Vec::new();
                // Odd readers go through a slot index rebuilt every 64 lookups, as the sampler
                // does per batch: asked only for times before the index was built.
                let indexed = k % 2 == 1;
                let (mut index, mut built_ns) = (reader.index(), monotonic_ns());
                for n in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let tid = tids[(rng.next() % tids.len() as u64) as usize];
                    let answer = if indexed {
                        if n % 64 == 0 {
                            built_ns = monotonic_ns();
                            index = reader.index();
                        }
                        let t = built_ns - MARGIN_NS - rng.next() % 200_000;
                        (tid, t, reader.lookup_indexed(&index, tid, t))
                    } else {
                        let t = monotonic_ns() - MARGIN_NS - rng.next() % 200_000;
                        (tid, t, reader.lookup(tid, t))
                    };
                    answers.push(answer);
                }
                answers
            })
        })
        .collect();

    let began = Instant::now();
    while began.elapsed() < RUN_FOR {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    type History = Vec<(u64, Option<Root>)>;
    let histories: Vec<(u32, History)> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    let answers: Vec<(u32, u64, Answer)> = readers.into_iter().flat_map(|h| h.join().unwrap()).collect();

    let (mut spans, mut none, mut unknown) = (0usize, 0usize, 0usize);
    for (tid, t, answer) in &answers {
        let history = &histories.iter().find(|(x, _)| x == tid).unwrap().1;
        let expected = truth(history, *t);
        match answer {
            Answer::Unknown | Answer::Overwritten => unknown += 1,
            Answer::NoSpan => {
                assert!(matches!(expected, Ok(None) | Err(())), "tid {tid} at {t}: NoSpan, truth {expected:?}");
                none += 1;
            }
            Answer::Span(s) => {
                let Ok(Some(r)) = expected else { panic!("tid {tid} at {t}: {s:?}, truth {expected:?}") };
                assert_eq!((s.span_id, s.trace_id, s.name), (r.span_id, r.trace_id, r.name), "tid {tid} at {t}");
                spans += 1;
            }
        }
    }
    let transitions: usize = histories.iter().map(|(_, h)| h.len()).sum();
    eprintln!("{transitions} transitions; {} answers: {spans} span, {none} no span, {unknown} unknown", answers.len());
    assert!(transitions > 10_000, "writers were too slow to race: {transitions}");
    assert!(spans > 1_000 && none > 100, "too few exact answers to mean anything: {spans} span, {none} no span");
    assert!(unknown > 0, "the ring should have been overrun at times");
}
