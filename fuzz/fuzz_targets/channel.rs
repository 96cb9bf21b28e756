//! A span-context channel file as an app may leave it: any bytes, read by the sampler's reader,
//! and then truncated under it (the reader must neither crash nor map more than it may).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spanprof_channel::Reader;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("1.spanctx");
    std::fs::write(&path, bytes).expect("write");
    let Ok(reader) = Reader::open(&path) else { return };
    let index = reader.index();
    for tid in [0, 1, 7, u32::MAX] {
        let _ = reader.lookup(tid, u64::MAX / 2);
        let _ = reader.lookup_indexed(&index, tid, 1);
        let _ = reader.history(tid);
    }
    let _ = reader.counters();
    // The owner shrinks the file under the mapping.
    let keep = bytes.len() * usize::from(cut) / 256;
    std::fs::OpenOptions::new().write(true).open(&path).expect("open").set_len(keep as u64).expect("truncate");
    let index = reader.index();
    for tid in [0, 1, 7] {
        let _ = reader.lookup_indexed(&index, tid, 1);
    }
});
