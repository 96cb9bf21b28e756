//! The channel file belongs to the app, which may be buggy or hostile: whatever it does to the
//! file, the reader (the sampler) must not crash, hang or blow up its memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spanprof_channel::{Answer, Options, Reader, Root, Writer};

fn writer_with_a_span(dir: &std::path::Path) -> (Arc<Writer>, u32, u64) {
    let w = Arc::new(Writer::create(dir, &Options::default()).unwrap());
    let mut slot = w.register_thread().unwrap();
    let name = w.intern("CarHandler");
    slot.record(Some(&Root { span_id: 7, trace_id: 8, name }));
    let tid = slot.tid();
    std::mem::forget(slot);
    (w, tid, spanprof_channel::monotonic_ns())
}

#[test]
fn a_file_truncated_under_the_reader_reads_as_unknown_instead_of_killing_it() {
    let dir = tempfile::tempdir().unwrap();
    let (w, tid, t) = writer_with_a_span(dir.path());
    let reader = Reader::open(w.path()).unwrap();
    assert!(matches!(reader.lookup(tid, t), Answer::Span(_)));
    assert!(!reader.is_damaged());
    // What `truncate -s 0 <pid>.spanctx` does: every mapped page is now past the end of the file.
    std::fs::OpenOptions::new().write(true).open(w.path()).unwrap().set_len(0).unwrap();
    // Without the guard this raises SIGBUS and the test process dies.
    assert_eq!(reader.lookup(tid, t), Answer::Unknown);
    let index = reader.index();
    assert_eq!(reader.lookup_indexed(&index, tid, t), Answer::Unknown);
    let _ = reader.counters();
    assert!(reader.is_damaged(), "the reader says the file shrank");
    assert!(Reader::open(w.path()).is_err(), "a file too short for a header is refused");
}

#[test]
fn a_fifo_named_like_a_channel_file_neither_blocks_nor_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(spanprof_channel::file_name(4242));
    let status = std::process::Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    let e = Reader::open(&path).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "open must not wait for a writer");
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn a_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _, _) = writer_with_a_span(dir.path());
    let link = dir.path().join(spanprof_channel::file_name(4243));
    std::os::unix::fs::symlink(w.path(), &link).unwrap();
    assert!(Reader::open(w.path()).is_ok());
    let e = Reader::open(&link).unwrap_err();
    assert!(e.to_string().contains("symbolic link") || e.to_string().contains("loop"), "{e}");
}

#[test]
fn a_header_claiming_a_huge_file_is_refused_before_anything_is_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _, _) = writer_with_a_span(dir.path());
    // A copy whose header claims 65,536 slots, made sparse to the length it claims.
    let bytes = std::fs::read(w.path()).unwrap();
    let crafted = dir.path().join("crafted.spanctx");
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
    let (slots, ring, names, arena) = (65_536u64, word(6), word(7), word(8));
    let layout = spanprof_channel::layout::Layout::new(slots, ring, names, arena).unwrap();
    let mut header = bytes[..spanprof_channel::layout::HEADER_WORDS * 8].to_vec();
    header[5 * 8..6 * 8].copy_from_slice(&slots.to_le_bytes());
    header[9 * 8..10 * 8].copy_from_slice(&(layout.total_words() as u64).to_le_bytes());
    std::fs::write(&crafted, &header).unwrap();
    std::fs::OpenOptions::new().write(true).open(&crafted).unwrap().set_len(layout.total_bytes() as u64).unwrap();
    let e = Reader::open(&crafted).unwrap_err();
    assert!(e.to_string().contains("more than a reader takes"), "{e}");
}

#[test]
fn sequence_numbers_near_the_top_of_u64_do_not_overflow_the_reader() {
    // Found by `scripts/fuzz` (target `channel`): a slot whose head is near u64::MAX.
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/channel/overflowing-sequence");
    let bytes = std::fs::read(seed).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("1.spanctx");
    std::fs::write(&path, &bytes[1..]).unwrap();
    let reader = Reader::open(&path).expect("the crafted file has a valid header");
    let index = reader.index();
    for tid in [0, 1, 7, u32::MAX] {
        let _ = reader.lookup(tid, u64::MAX / 2);
        let _ = reader.lookup_indexed(&index, tid, 1);
        let _ = reader.history(tid);
    }
}
