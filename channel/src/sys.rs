//! The crate's only unsafe code: mapping the channel file, the monotonic clock and the thread ID.
//!
//! Everything above this module sees the mapped file as a slice of `AtomicU64` words (writers) or
//! through [`Loads`] (readers), so no other module needs `unsafe`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// A shared mapping of a whole channel file, unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<AtomicU64>,
    words: usize,
    writable: bool,
}

// SAFETY: the mapping is owned by this value and only ever reached through shared references to
// `AtomicU64` (which is `Sync`), so moving it to or sharing it with another thread is sound.
unsafe impl Send for Mapping {}
// SAFETY: see `Send` above: all access is through atomics.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file` shared; `writable` needs the file opened read-write.
    pub(crate) fn map(file: &File, len: usize, writable: bool) -> io::Result<Mapping> {
        if len == 0 || !len.is_multiple_of(8) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "mapping length must be a non-zero multiple of 8"));
        }
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh mapping at an address the kernel chooses (null hint) cannot alias any Rust
        // object; the fd is valid for the duration of the call (borrowed `File`); failure is reported
        // as MAP_FAILED and checked below.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Mapping { ptr, words: len / 8, writable })
    }

    /// The mapping as words that may be stored to, or `None` for a read-only mapping.
    pub(crate) fn words_mut(&self) -> Option<&[AtomicU64]> {
        self.writable.then(|| self.all_words())
    }

    /// Load-only access, for readers (works for read-only and writable mappings).
    pub(crate) fn loads(&self) -> Loads<'_> {
        Loads(self.all_words())
    }

    fn all_words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` is page-aligned (so aligned for AtomicU64) and valid for `words * 8` bytes
        // until `Drop` unmaps it, which cannot happen while `&self` is borrowed. Every access goes
        // through atomics, so concurrent stores by other threads or processes sharing the file are
        // not data races. A read-only (PROT_READ) mapping is only handed out as `Loads`, which
        // performs nothing but plain atomic loads of a lock-free 8-byte type: std documents such
        // loads as permitted on read-only memory, unlike read-modify-write operations.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.words) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`words` describe exactly the region mapped in `map`, and no reference into
        // it outlives `self` (all are borrows of `self`). A failure cannot be acted upon here.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.words * 8);
        }
    }
}

/// Plain atomic loads of a mapped file; out-of-range indices read as `None` (a corrupt header
/// must not crash the reader).
#[derive(Clone, Copy)]
pub(crate) struct Loads<'a>(&'a [AtomicU64]);

impl Loads<'_> {
    pub(crate) fn load(&self, index: usize, order: Ordering) -> Option<u64> {
        self.0.get(index).map(|w| w.load(order))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// CLOCK_MONOTONIC in nanoseconds (through the vDSO: no system call).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call; CLOCK_MONOTONIC is
    // always available on Linux, and on a (theoretical) failure `ts` stays zero.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// The kernel thread ID of the calling thread (what perf samples carry as `tid`).
pub fn current_tid() -> u32 {
    // SAFETY: gettid takes no arguments, cannot fail and touches no memory.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    tid as u32
}
