//! spanprof-channel: the span-context channel, the memory-mapped file through which an app's
//! tracing layer tells the sampler which local root span each thread is running.
//!
//! The app (through the `spanprof` SDK) is the [`Writer`]; the `spanprof-sidecar` is the
//! [`Reader`]. This crate is the single source of truth for the file layout below; both sides use
//! it, so they cannot disagree.
//!
//! # Files
//!
//! One file per app process, `<SPANPROF_CONTEXT_DIR>/<pid>.spanctx` (the PID as the app sees it).
//! It is written under a temporary name and renamed into place once initialised, so a reader
//! never sees a half-built file. It is never shrunk. A file whose PID now belongs to a process
//! with another start time (field 22 of `/proc/<pid>/stat`) is stale.
//!
//! # Layout (version 1)
//!
//! The file is an array of little-endian `u64` words, all accessed atomically. Indices are in
//! words ([`layout`] has the constants).
//!
//! | words | what |
//! |---|---|
//! | header, 64 words | `0` magic `b"SPANCTX\0"` (stored last, release) · `1` version (1) · `2` pid · `3` process start time (clock ticks since boot) · `4` clock id (1 = `CLOCK_MONOTONIC`, the clock of every timestamp) · `5` slot count · `6` ring capacity (power of two) · `7` name capacity · `8` name arena words · `9` total words · `10` dropped transitions · `11` dropped names · `12` next name index · `13` next arena word · `14` dropped registrations · rest zero |
//! | slots, `slot count × (8 + 6 × ring capacity)` | per thread: `0` state (`generation << 2 \| FREE/LIVE/EXITED/CLAIMING`) · `1` tid · `2` claimed at (ns) · `3` released at (ns) · `4` first seq · `5` head · `6..8` zero · then the ring: entries of 6 words `seq, t_monotonic_ns, root span id, trace id high, trace id low, span name ref` |
//! | name index, `name capacity` words | name ref `k` is word `k − 1`: `len << 32 \| arena word offset`, 0 until published (release) |
//! | name arena, `arena words` | UTF-8 bytes packed little-endian into words, each name starting on a word |
//!
//! # Protocol
//!
//! - **Slots.** A thread claims a slot on its first transition: it CASes a `FREE` (else the
//!   longest-`EXITED`) slot to `CLAIMING` with the next generation, fills `tid`, `claimed at` and
//!   `first seq = head`, then stores `LIVE` (release). At thread exit it stores `released at`, then
//!   `EXITED` (release). An exited slot still answers for `[claimed at, released at]` until it is
//!   reclaimed. Readers treat the state word as a seqlock over the slot: they read it (acquire),
//!   read the slot, then re-read it after an acquire fence and start over if it changed. A thread
//!   ID reused by a later thread cannot mislead a reader: each owner only answers for its own time
//!   window, and if two slots claim the same (tid, t) the answer is `Unknown`.
//! - **Transitions.** A ring entry is written only when the thread's local root changes (span id 0
//!   = no span from now on). Sequence numbers count every transition of the slot, across owners.
//!   Writing transition `n` into entry `n mod capacity`: store `seq = 2n + 1`, release fence, read
//!   the clock, store the fields, store `seq = 2n + 2` (release), then `head = n + 1` (release).
//!   The ring overwrites its oldest entries; a reader that meets an entry whose `seq` is not the
//!   one it expects knows the transitions it needs are gone and answers `Unknown`.
//! - **Lookup** of (tid, t): the slot owned by `tid` at `t`, then the newest entry with
//!   `t_monotonic_ns <= t`. Before the owner's first transition (but after its claim) the answer
//!   is "no span". The writer never blocks, allocates or makes a system call on this path (the
//!   clock is read through the vDSO); what it cannot record (no free slot, name table full) is
//!   dropped and counted in the header.
// `deny`, not `forbid`: the `sys` module alone opts back in, and must justify every block.
#![deny(unsafe_code)]

pub mod error;
pub mod ids;
pub mod layout;
pub mod pod;
mod reader;
// The one module allowed unsafe code (it says so itself): mmap, clock_gettime, gettid.
mod sys;
mod writer;

pub use error::{Error, Result};
pub use reader::{Answer, Counters, Header, Reader, SlotIndex};
pub use sys::{current_tid, monotonic_ns};
pub use writer::{Options, ThreadSlot, Writer, file_name};

/// File name suffix of channel files.
pub const FILE_SUFFIX: &str = ".spanctx";

/// A span name stored in the file; 0 ([`NameRef::NONE`]) means no name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NameRef(pub u32);

impl NameRef {
    pub const NONE: NameRef = NameRef(0);
}

/// A local root span as published for a thread, and as a reader finds it at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Root {
    /// Non-zero: the local root's span ID, which is the profile ID.
    pub span_id: u64,
    pub trace_id: u128,
    /// Resolve with [`Reader::name`].
    pub name: NameRef,
}
