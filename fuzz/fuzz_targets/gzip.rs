//! The gzip decoder with its expansion limit (gzip bombs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spanprof_server::ingest::decode::gunzip_limited(data, 1 << 20, "fuzz");
});
