//! Random span and trace IDs: a per-thread splitmix64 generator, seeded from std's per-process
//! random keys, the thread ID and the clock — no dependency, no lock, no system call per ID.

use std::cell::Cell;
use std::hash::BuildHasher;

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0) };
}

fn seed() -> u64 {
    let keys = std::collections::hash_map::RandomState::new();
    keys.hash_one((spanprof_channel::monotonic_ns(), spanprof_channel::current_tid())) | 1
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random 64-bit value, never 0 (0 means "no span" in the channel).
pub(crate) fn nonzero_u64() -> u64 {
    let next = |state: &Cell<u64>| {
        let mut s = state.get();
        if s == 0 {
            s = seed();
        }
        let v = splitmix(&mut s);
        state.set(s);
        v
    };
    // During thread teardown the thread-local may be gone: fall back to a fresh seed.
    let v = STATE.try_with(next).unwrap_or_else(|_| splitmix(&mut seed()));
    if v == 0 { 1 } else { v }
}

/// A random non-zero 128-bit trace ID.
pub(crate) fn nonzero_u128() -> u128 {
    (u128::from(nonzero_u64()) << 64) | u128::from(nonzero_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_and_distinct() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| nonzero_u64()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
        assert_ne!(nonzero_u128() >> 64, 0);
    }

    #[test]
    fn threads_get_different_sequences() {
        let here = nonzero_u64();
        let there = std::thread::spawn(nonzero_u64).join().unwrap();
        assert_ne!(here, there);
    }
}
