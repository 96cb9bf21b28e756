//! A Connect push request, protobuf or JSON (first byte picks), through to the batches the store
//! would get and the request limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spanprof_server::ingest::{self, Limits, push};

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let encoding = if first & 1 == 0 { push::Encoding::Proto } else { push::Encoding::Json };
    let limits = Limits { max_decompressed_bytes: 4 << 20, ..Limits::default() };
    if let Ok(req) = push::decode_request(body, encoding)
        && let Ok(batches) = push::to_batches(req, &limits, 1_700_000_000_000)
    {
        let _ = ingest::check_limits(&batches, &limits);
    }
});
