//! `/ingest`: the query string, then the body as folded stacks, lines, pprof or multipart
//! (the first byte picks), into a batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spanprof_server::ingest::{Limits, legacy};

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == b'\n') else { return };
    let (query, body) = (&data[..split], &data[split + 1..]);
    let Ok(query) = std::str::from_utf8(query) else { return };
    let Ok(params) = legacy::parse_params(query, 1_700_000_000_000) else { return };
    let limits = Limits { max_decompressed_bytes: 4 << 20, ..Limits::default() };
    if body.first() == Some(&b'-') {
        // A multipart body with the boundary `b`.
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let _ = rt.block_on(legacy::multipart_profile(bytes::Bytes::copy_from_slice(body), "b"));
        return;
    }
    let _ = legacy::build_batch(params, body, &limits);
});
