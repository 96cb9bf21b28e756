//! Lookups against known transitions: exact answers, overrun, thread-ID reuse, names, counters,
//! headers and bad files.

mod common;

use std::sync::Arc;

use common::{root, small, tick_after, writer};
use spanprof_channel::{Answer, Error, NameRef, Options, Reader, Root, Writer, monotonic_ns};

/// `reader.lookup`, checked against a lookup through a slot index built now (the index must
/// give the same answers for every time before it was built).
fn lookup(reader: &Reader, tid: u32, t: u64) -> Answer {
    let answer = reader.lookup(tid, t);
    assert_eq!(reader.lookup_indexed(&reader.index(), tid, t), answer, "indexed lookup of tid {tid} at {t}");
    answer
}

fn span(r: &spanprof_channel::Root) -> Answer {
    Answer::Span(Root { span_id: r.span_id, trace_id: r.trace_id, name: r.name })
}

#[test]
fn answers_follow_transitions_exactly() {
    let (_dir, w) = writer(small(4, 16));
    let reader = Reader::open(w.path()).unwrap();
    let name = w.intern("OrderVehicle");
    let before_claim = monotonic_ns();
    tick_after(before_claim);
    let mut slot = w.register_thread().unwrap();
    let claimed_gap = monotonic_ns();
    tick_after(claimed_gap);
    let (a, b) = (root(1, name), root(2, NameRef::NONE));
    let t1 = slot.record(Some(&a));
    tick_after(t1);
    let t2 = slot.record(None);
    tick_after(t2);
    let t3 = slot.record(Some(&b));
    let tid = slot.tid();

    assert_eq!(lookup(&reader, tid, before_claim), Answer::Unknown, "before the thread registered");
    assert_eq!(lookup(&reader, tid, claimed_gap), Answer::NoSpan, "registered, before its first span");
    assert_eq!(lookup(&reader, tid, t1), span(&a));
    assert_eq!(lookup(&reader, tid, t2 - 1), span(&a));
    assert_eq!(lookup(&reader, tid, t2), Answer::NoSpan);
    assert_eq!(lookup(&reader, tid, t3 - 1), Answer::NoSpan);
    assert_eq!(lookup(&reader, tid, t3), span(&b));
    assert_eq!(lookup(&reader, tid, u64::MAX), span(&b), "a live thread stays in its last root");
    assert_eq!(lookup(&reader, tid.wrapping_add(1), t3), Answer::Unknown, "unregistered thread");
    assert_eq!(reader.name(name).as_deref(), Some("OrderVehicle"));
    assert_eq!(reader.name(NameRef::NONE), None);
}

#[test]
fn overrun_answers_unknown_never_a_wrong_span() {
    let (_dir, w) = writer(small(2, 8));
    let reader = Reader::open(w.path()).unwrap();
    let mut slot = w.register_thread().unwrap();
    let mut times = Vec::new();
    for i in 0..20u64 {
        let t = slot.record(Some(&root(100 + i, NameRef::NONE)));
        times.push(t);
        tick_after(t);
    }
    let tid = slot.tid();
    // Transitions 0..12 were overwritten (capacity 8, head 20): their times are unknown.
    for (i, &t) in times.iter().enumerate() {
        let answer = lookup(&reader, tid, t);
        if i < 12 {
            assert_eq!(answer, Answer::Overwritten, "transition {i} was overwritten");
            assert_eq!(lookup(&reader, tid, t + 1), Answer::Overwritten);
        } else {
            assert_eq!(answer, span(&root(100 + i as u64, NameRef::NONE)), "transition {i} is still in the ring");
        }
    }
    // Keep writing past several laps: the oldest kept transition moves on.
    for i in 20..100u64 {
        tick_after(slot.record(Some(&root(100 + i, NameRef::NONE))));
    }
    assert_eq!(lookup(&reader, tid, times[19]), Answer::Overwritten);
}

#[test]
fn exited_thread_answers_for_its_lifetime_until_its_slot_is_reused() {
    let (_dir, w) = writer(small(2, 16));
    let reader = Reader::open(w.path()).unwrap();
    let tid = 4242;
    let a = root(7, NameRef::NONE);
    let (t_a, released) = {
        let mut slot = w.register_with_tid(tid).unwrap();
        let t = slot.record(Some(&a));
        tick_after(t);
        drop(slot);
        (t, monotonic_ns())
    };
    tick_after(released);
    assert_eq!(lookup(&reader, tid, t_a), span(&a), "exited threads still answer for their lifetime");
    assert_eq!(lookup(&reader, tid, released), Answer::Unknown, "after the thread exited");

    // The TID comes back for a new thread, which takes the other (never used) slot.
    let b = root(8, NameRef::NONE);
    let mut second = w.register_with_tid(tid).unwrap();
    let t_b = second.record(Some(&b));
    assert_eq!(lookup(&reader, tid, t_a), span(&a), "the old owner's window is still its own");
    assert_eq!(lookup(&reader, tid, released), Answer::Unknown, "between the two owners");
    assert_eq!(lookup(&reader, tid, t_b), span(&b));
}

#[test]
fn reused_slot_and_tid_never_answer_for_the_previous_owner() {
    // One slot: the second thread with the same TID takes over the first one's slot.
    let (_dir, w) = writer(small(1, 16));
    let reader = Reader::open(w.path()).unwrap();
    let tid = 777;
    let a = root(1, NameRef::NONE);
    let t_a = {
        let mut slot = w.register_with_tid(tid).unwrap();
        let t = slot.record(Some(&a));
        tick_after(t);
        t
    };
    let mut slot = w.register_with_tid(tid).unwrap();
    let mid = monotonic_ns();
    tick_after(mid);
    let b = root(2, NameRef::NONE);
    let t_b = slot.record(Some(&b));
    assert_eq!(lookup(&reader, tid, t_a), Answer::Unknown, "the previous owner's history is gone");
    assert_eq!(lookup(&reader, tid, mid), Answer::NoSpan, "new owner, before its first span");
    assert_eq!(lookup(&reader, tid, t_b), span(&b));
    // The new owner's entries are numbered after the old owner's: the stale entry is not reused.
    tick_after(t_b);
    let t_none = slot.record(None);
    assert_eq!(lookup(&reader, tid, t_none), Answer::NoSpan);
}

#[test]
fn a_thread_that_died_without_releasing_its_slot_cannot_mislead() {
    let (_dir, w) = writer(small(2, 16));
    let reader = Reader::open(w.path()).unwrap();
    let tid = 999;
    let mut leaked = w.register_with_tid(tid).unwrap();
    let t_a = leaked.record(Some(&root(1, NameRef::NONE)));
    std::mem::forget(leaked); // as if the thread vanished without running its destructors
    tick_after(t_a);
    let mut slot = w.register_with_tid(tid).unwrap();
    let t_b = slot.record(Some(&root(2, NameRef::NONE)));
    assert_eq!(lookup(&reader, tid, t_b), Answer::Unknown, "two owners claim the time: refuse");
}

#[test]
fn full_slot_table_drops_and_counts() {
    let (_dir, w) = writer(small(2, 8));
    let reader = Reader::open(w.path()).unwrap();
    let _a = w.register_with_tid(1).unwrap();
    let _b = w.register_with_tid(2).unwrap();
    assert!(w.register_with_tid(3).is_none());
    w.count_dropped_transition();
    w.count_dropped_transition();
    let c = reader.counters();
    assert_eq!(c.dropped_registrations, 1);
    assert_eq!(c.dropped_transitions, 2);
    assert_eq!(w.dropped_transitions(), 2);
    drop(_a);
    assert!(w.register_with_tid(3).is_some(), "an exited thread's slot is reused");
}

#[test]
fn names_are_interned_once_and_overflow_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { slots: 1, ring_capacity: 2, max_names: 3, name_bytes: 64 };
    let w = Writer::create(dir.path(), &options).unwrap();
    let reader = Reader::open(w.path()).unwrap();
    let a = w.intern("CarHandler");
    assert_eq!(w.intern("CarHandler"), a);
    let long = "ü".repeat(300);
    let b = w.intern(&long);
    assert_ne!(a, b);
    assert_eq!(reader.name(a).as_deref(), Some("CarHandler"));
    // 64 arena bytes: the clipped long name (256 bytes) did not fit.
    assert_eq!(b, NameRef::NONE);
    // A name that did not fit takes no room: short names still fit after it.
    let c = w.intern("x");
    let d = w.intern("y");
    assert_eq!(reader.name(c).as_deref(), Some("x"));
    assert_eq!(reader.name(d).as_deref(), Some("y"));
    assert_eq!(w.intern("z"), NameRef::NONE, "three names fit");
    assert_eq!(reader.counters().dropped_names, 2);
    assert_eq!(reader.name(NameRef(1000)), None);
}

#[test]
fn long_names_are_clipped_not_lost() {
    let (_dir, w) = writer(Options::default());
    let reader = Reader::open(w.path()).unwrap();
    let long = "ü".repeat(300);
    let r = w.intern(&long);
    let stored = reader.name(r).unwrap();
    assert!(long.starts_with(&stored));
    assert_eq!(stored.len(), 256);
}

#[test]
fn header_identifies_the_process() {
    let (dir, w) = writer(Options::default());
    assert_eq!(w.path(), dir.path().join(format!("{}.spanctx", std::process::id())));
    let reader = Reader::open(w.path()).unwrap();
    let h = reader.header();
    assert_eq!(h.pid, std::process::id());
    assert_eq!(h.version, 1);
    assert_eq!(h.clock_id, 1);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    assert_eq!(Some(h.start_time), spanprof_channel::layout::parse_stat(&stat).map(|(start, _)| start));
    assert_eq!(h.layout, *w.layout());
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn a_reader_opens_only_the_very_process_s_file_of_its_user() {
    let (dir, w) = writer(Options::default());
    let pid = std::process::id();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let (start, _) = spanprof_channel::layout::parse_stat(&stat).unwrap();
    let reader = Reader::open_for(dir.path(), pid, start).unwrap();
    assert_eq!(reader.header().start_time, start);
    // Another process that had this PID before: stale.
    assert!(matches!(Reader::open_for(dir.path(), pid, start + 1), Err(Error::Stale(_))));
    // No file: the I/O error says so.
    let Err(Error::Io { source, .. }) = Reader::open_for(dir.path(), pid + 1, start) else { panic!("no file") };
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    // A file another user owns (root can hand it over; others cannot run this part).
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    if me == 0 && std::os::unix::fs::chown(w.path(), Some(4242), None).is_ok() {
        let Err(Error::Untrusted { file_uid, process_uid, .. }) = Reader::open_for(dir.path(), pid, start) else {
            panic!("a file of uid 4242 is not trusted")
        };
        assert_eq!((file_uid, process_uid), (4242, 0));
    }
}

#[test]
fn recreating_replaces_a_stale_file_without_disturbing_open_readers() {
    let (dir, w) = writer(small(1, 4));
    let old_reader = Reader::open(w.path()).unwrap();
    let mut slot = w.register_with_tid(5).unwrap();
    let t = slot.record(Some(&root(3, NameRef::NONE)));
    let w2 = Arc::new(Writer::create(dir.path(), &small(2, 4)).unwrap());
    assert_eq!(w2.path(), w.path());
    assert_eq!(lookup(&old_reader, 5, t), span(&root(3, NameRef::NONE)));
    let new_reader = Reader::open(w2.path()).unwrap();
    assert_eq!(new_reader.header().layout.slot_count, 2);
    assert_eq!(lookup(&new_reader, 5, t), Answer::Unknown);
}

#[test]
fn bad_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Reader::open(&dir.path().join("nope.spanctx")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");

    let zeros = dir.path().join("zeros.spanctx");
    std::fs::write(&zeros, vec![0u8; 4096]).unwrap();
    assert!(matches!(Reader::open(&zeros).unwrap_err(), Error::BadMagic(_)));

    let short = dir.path().join("short.spanctx");
    std::fs::write(&short, b"SPANCTX").unwrap();
    assert!(matches!(Reader::open(&short).unwrap_err(), Error::BadMagic(_)));

    // A valid header over a truncated body.
    let w = Writer::create(dir.path(), &small(4, 8)).unwrap();
    let bytes = std::fs::read(w.path()).unwrap();
    let cut = dir.path().join("cut.spanctx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(Reader::open(&cut).unwrap_err(), Error::Layout(_)));

    // A newer version.
    let mut newer = bytes.clone();
    newer[8..16].copy_from_slice(&2u64.to_le_bytes());
    let newer_path = dir.path().join("newer.spanctx");
    std::fs::write(&newer_path, &newer).unwrap();
    assert!(matches!(Reader::open(&newer_path).unwrap_err(), Error::UnsupportedVersion { found: 2, .. }));

    // Absurd sizes.
    let mut huge = bytes;
    huge[5 * 8..6 * 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let huge_path = dir.path().join("huge.spanctx");
    std::fs::write(&huge_path, &huge).unwrap();
    assert!(matches!(Reader::open(&huge_path).unwrap_err(), Error::Layout(_)));

    assert!(Writer::create(&dir.path().join("no/such/dir"), &Options::default()).is_err());
    assert!(Writer::create(dir.path(), &small(1, 3)).is_err(), "ring capacity must be a power of two");
}
