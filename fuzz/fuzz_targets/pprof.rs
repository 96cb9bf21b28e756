//! A pprof profile (gzipped or not) as `/ingest` and the push API receive it: decoded, split into
//! span profiles, stored-shape checked; never a panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spanprof_server::ingest::pprof;

fuzz_target!(|data: &[u8]| {
    if let Ok(profile) = pprof::decode(data, 4 << 20) {
        let _ = pprof::split(&profile, None);
    }
});
