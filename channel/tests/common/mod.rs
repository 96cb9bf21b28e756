//! Helpers shared by the channel's integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use spanprof_channel::{NameRef, Options, Root, Writer, monotonic_ns};

/// A writer in a fresh temporary directory (kept alive by the returned guard).
pub fn writer(options: Options) -> (tempfile::TempDir, Arc<Writer>) {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::create(dir.path(), &options).unwrap();
    (dir, Arc::new(w))
}

pub fn small(slots: u32, ring_capacity: u32) -> Options {
    Options { slots, ring_capacity, max_names: 64, name_bytes: 4096 }
}

pub fn root(span_id: u64, name: NameRef) -> Root {
    Root { span_id, trace_id: (u128::from(span_id) << 64) | u128::from(!span_id), name }
}

/// Waits until the monotonic clock has moved past `t`, so successive transitions get distinct
/// timestamps.
pub fn tick_after(t: u64) {
    while monotonic_ns() <= t {
        std::hint::spin_loop();
    }
}

/// What a thread's root was at `t` according to its transitions `(t, root)`: `Ok(root)` or
/// `Err(())` before the first transition.
pub fn truth(transitions: &[(u64, Option<Root>)], t: u64) -> Result<Option<Root>, ()> {
    let i = transitions.partition_point(|(ts, _)| *ts <= t);
    if i == 0 { Err(()) } else { Ok(transitions[i - 1].1) }
}
