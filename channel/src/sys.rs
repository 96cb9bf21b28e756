//! The crate's only unsafe code: mapping the channel file, the monotonic clock and the thread ID.
//!
//! Everything above this module sees the mapped file as a slice of `AtomicU64` words (writers) or
//! through [`Loads`] (readers), so no other module needs `unsafe`.
//!
//! A reader maps a file another process owns, and that process may shrink it: touching a mapped
//! page past the new end of the file raises SIGBUS, which would kill the sampler. So read-only
//! mappings are *guarded*: a SIGBUS handler that finds the faulting address inside a guarded
//! mapping maps a page of zeros over the faulting page and returns (the load then reads zeros,
//! which no seqlock or magic check accepts) and marks the mapping damaged; any other SIGBUS goes
//! to the disposition that was there before (Rust's own handler, or the default: death).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Read-only mappings guarded at once, at most (one per sampled process).
const GUARDS: usize = 4096;
/// Guarded ranges: start address (0 = free entry), length, and whether a SIGBUS hit it.
static GUARD_START: [AtomicUsize; GUARDS] = [const { AtomicUsize::new(0) }; GUARDS];
static GUARD_LEN: [AtomicUsize; GUARDS] = [const { AtomicUsize::new(0) }; GUARDS];
static GUARD_HIT: [AtomicBool; GUARDS] = [const { AtomicBool::new(false) }; GUARDS];
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS disposition before ours (set once, when ours is installed).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Installs the SIGBUS handler, once per process.
fn install_guard_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE_SIZE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: both sigaction structs are valid, zero-initialised plain data that the kernel
        // reads or fills; the handler is an `extern "C"` function with the SA_SIGINFO signature,
        // async-signal-safe (atomics and one mmap call, see `on_sigbus`).
        unsafe {
            let mut ours: libc::sigaction = std::mem::zeroed();
            ours.sa_sigaction = on_sigbus as *const () as usize;
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut ours.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &ours, &mut previous) != 0 {
                return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            let _ = PREVIOUS.set(previous);
        }
        Ok(())
    });
    result.map_err(io::Error::from_raw_os_error)
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    for i in 0..GUARDS {
        let start = GUARD_START[i].load(Ordering::Acquire);
        if start <= 1 || addr < start || addr >= start.saturating_add(GUARD_LEN[i].load(Ordering::Acquire)) {
            continue;
        }
        let at = addr & !(page - 1);
        // SAFETY: `at..at + page` lies inside a live guarded mapping of ours (registered until
        // just before it is unmapped, and the faulting thread is reading it through a borrow, so
        // it cannot be unmapped now); replacing that page with anonymous zeros changes no Rust
        // object's validity: readers only perform atomic loads there. mmap is async-signal-safe.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            GUARD_HIT[i].store(true, Ordering::Release);
            return;
        }
    }
    // Not ours: what was there before decides.
    match PREVIOUS.get() {
        Some(prev) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: with SA_SIGINFO, `sa_sigaction` is a three-argument handler, installed
                // by whoever set it before us; we pass the kernel's own arguments on.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig, info, context);
            } else {
                // SAFETY: without SA_SIGINFO it is a one-argument handler.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // SAFETY: restoring the default disposition; returning re-executes the faulting access,
            // which then terminates the process as it would have without us.
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
            }
        }
    }
}

/// Registers `start..start + len` as guarded; `None` when every entry is taken.
fn guard(start: usize, len: usize) -> Option<usize> {
    for i in 0..GUARDS {
        // Reserve the entry (1 is never a mapping's address), fill it, then publish the start.
        if GUARD_START[i].compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            GUARD_LEN[i].store(len, Ordering::Release);
            GUARD_HIT[i].store(false, Ordering::Release);
            GUARD_START[i].store(start, Ordering::Release);
            return Some(i);
        }
    }
    None
}

/// A shared mapping of a whole channel file, unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<AtomicU64>,
    words: usize,
    writable: bool,
    /// The guard entry of a read-only mapping.
    guard: Option<usize>,
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
        let ptr =
            NonNull::new(p.cast::<AtomicU64>()).ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        let mut mapping = Mapping { ptr, words: len / 8, writable, guard: None };
        if !writable {
            install_guard_handler()?;
            // Dropping `mapping` on error unmaps it.
            mapping.guard = Some(
                guard(ptr.as_ptr() as usize, len)
                    .ok_or_else(|| io::Error::other(format!("more than {GUARDS} channel files mapped at once")))?,
            );
        }
        Ok(mapping)
    }

    /// Whether the file shrank under this (read-only) mapping: some of it now reads as zeros.
    pub(crate) fn damaged(&self) -> bool {
        self.guard.is_some_and(|g| GUARD_HIT[g].load(Ordering::Acquire))
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
        // Unguarded before unmapped: the range may be reused by an unrelated mapping.
        if let Some(g) = self.guard {
            GUARD_START[g].store(0, Ordering::Release);
        }
        // SAFETY: `ptr`/`words` describe exactly the region mapped in `map` (pages the SIGBUS
        // handler replaced included), and no reference into it outlives `self` (all are borrows
        // of `self`). A failure cannot be acted upon here.
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
