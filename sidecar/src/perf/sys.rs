//! The only module of the sidecar with `unsafe` code: `perf_event_open`, its ioctls, and the
//! memory-mapped ring buffers the kernel writes samples into. Everything it exports is safe.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use perf_event_open_sys as sys;
use sys::bindings::{self as b, perf_event_attr, perf_event_mmap_page};

/// x86-64 perf register numbers (`arch/x86/include/uapi/asm/perf_regs.h`): BP, SP, IP. The kernel
/// writes sampled registers in mask-bit order, so a sample's registers come back as `[bp, sp, ip]`.
pub const REGS_MASK: u64 = (1 << 6) | (1 << 7) | (1 << 8);

/// The sample fields we ask for; [`super::record`] parses exactly this layout.
pub const SAMPLE_TYPE: u64 = (b::PERF_SAMPLE_TID
    | b::PERF_SAMPLE_TIME
    | b::PERF_SAMPLE_CPU
    | b::PERF_SAMPLE_REGS_USER
    | b::PERF_SAMPLE_STACK_USER) as u64;

/// What kind of event to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// CPU-clock sampling of a thread (inherited by the threads it creates), with side-band
    /// MMAP2/COMM/FORK/EXIT records.
    Sampling { freq_hz: u64, stack_bytes: u32, exclude_kernel: bool },
    /// CPU-clock sampling of every task of a cgroup on one CPU (no per-thread state: nothing to
    /// save and restore at each context switch), with the same side-band records.
    CgroupSampling { freq_hz: u64, stack_bytes: u32, exclude_kernel: bool },
    /// A dummy event of the sidecar itself, bound to one CPU: owns that CPU's ring buffer.
    RingOwner,
}

/// An open perf event.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

fn attr_for(kind: EventKind) -> perf_event_attr {
    let mut attr = perf_event_attr { size: std::mem::size_of::<perf_event_attr>() as u32, ..Default::default() };
    attr.type_ = b::PERF_TYPE_SOFTWARE;
    attr.set_use_clockid(1);
    attr.clockid = libc::CLOCK_MONOTONIC;
    attr.set_disabled(1);
    attr.set_exclude_hv(1);
    attr.sample_type = SAMPLE_TYPE;
    attr.set_sample_id_all(1);
    // The kernel rejects REGS_USER with an empty mask, even on the ring owner.
    attr.sample_regs_user = REGS_MASK;
    match kind {
        EventKind::Sampling { freq_hz, stack_bytes, exclude_kernel }
        | EventKind::CgroupSampling { freq_hz, stack_bytes, exclude_kernel } => {
            attr.config = u64::from(b::PERF_COUNT_SW_CPU_CLOCK);
            attr.set_freq(1);
            attr.__bindgen_anon_1.sample_freq = freq_hz;
            attr.sample_stack_user = stack_bytes;
            attr.set_exclude_kernel(u64::from(exclude_kernel));
            // A cgroup event covers every task of the cgroup already, new ones included.
            attr.set_inherit(u64::from(matches!(kind, EventKind::Sampling { .. })));
            attr.set_mmap2(1);
            attr.set_comm(1);
            attr.set_comm_exec(1);
            attr.set_task(1);
        }
        EventKind::RingOwner => {
            attr.config = u64::from(b::PERF_COUNT_SW_DUMMY);
            attr.set_exclude_kernel(1);
        }
    }
    attr
}

impl EventFd {
    /// `perf_event_open(attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)`.
    pub fn open(kind: EventKind, pid: i32, cpu: i32) -> io::Result<EventFd> {
        Self::open_with(kind, pid, cpu, 0)
    }

    /// An event of every task in the cgroup whose directory is open as `cgroup_dir`, on `cpu`
    /// (`PERF_FLAG_PID_CGROUP`: the directory's fd goes where a pid would).
    pub fn open_cgroup(kind: EventKind, cgroup_dir: &std::fs::File, cpu: i32) -> io::Result<EventFd> {
        Self::open_with(kind, cgroup_dir.as_fd().as_raw_fd(), cpu, libc::c_ulong::from(b::PERF_FLAG_PID_CGROUP))
    }

    fn open_with(kind: EventKind, pid: i32, cpu: i32, flags: libc::c_ulong) -> io::Result<EventFd> {
        let mut attr = attr_for(kind);
        // SAFETY: `attr` is a fully initialised `perf_event_attr` whose `size` field is its own
        // size; the kernel only reads it. With PERF_FLAG_PID_CGROUP, `pid` is a directory fd the
        // caller keeps open for the call. The returned value is a new fd or -1.
        let fd = unsafe {
            sys::perf_event_open(&mut attr, pid, cpu, -1, libc::c_ulong::from(b::PERF_FLAG_FD_CLOEXEC) | flags)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn enable(&self) -> io::Result<()> {
        // SAFETY: ENABLE takes an integer argument; the fd is a perf event we own.
        check(unsafe { sys::ioctls::ENABLE(self.0.as_raw_fd(), 0) })
    }

    /// Redirects this event's records into `ring`'s buffer (same CPU, same clock).
    pub fn set_output(&self, ring: &Ring) -> io::Result<()> {
        // SAFETY: SET_OUTPUT takes another perf event fd, which `ring` keeps open.
        check(unsafe { sys::ioctls::SET_OUTPUT(self.0.as_raw_fd(), ring.fd.0.as_raw_fd()) })
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A resource limit the sampler raises from its soft to its hard value.
#[derive(Clone, Copy, Debug)]
pub enum SoftLimit {
    /// Every sampled thread takes one event fd per CPU, so the common soft default of 1,024 is
    /// used up by 16 threads on a 64-CPU node.
    OpenFiles,
    /// Ring buffers beyond `kernel.perf_event_mlock_kb` are charged to it (without CAP_IPC_LOCK).
    LockedMemory,
}

/// Raises this process's soft limit to its hard limit (what the container was granted; needs no
/// privilege) and returns the limit now in force (`u64::MAX`: unlimited).
pub fn raise_soft_limit(which: SoftLimit) -> io::Result<u64> {
    let resource = match which {
        SoftLimit::OpenFiles => libc::RLIMIT_NOFILE,
        SoftLimit::LockedMemory => libc::RLIMIT_MEMLOCK,
    };
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live, writable local.
    check(unsafe { libc::getrlimit(resource, &mut limit) })?;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the `rlimit` it is given; raising a soft limit up to the
        // hard one affects nothing but this process.
        check(unsafe { libc::setrlimit(resource, &raised) })?;
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

/// Gives the free memory of every malloc arena back to the kernel (glibc's `malloc_trim(0)`).
///
/// Why: the sampler's threads free large per-interval buffers (aggregates, profiles, uploads)
/// while small long-lived entries (symbol names) keep landing between them, so glibc keeps the
/// freed pages of its per-thread arenas resident; measured, RSS grew 2 MiB a minute with a flat
/// live heap of ~20 MB (`cargo bench --bench soak`). Returns whether memory was released.
#[cfg(target_env = "gnu")]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists under its arena locks; it has
    // no preconditions and does not touch memory that is still allocated.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries (musl) return freed memory on their own.
#[cfg(not(target_env = "gnu"))]
pub fn release_free_memory() -> bool {
    false
}

/// `sysconf(_SC_CLK_TCK)`: the unit of process start times in `/proc/<pid>/stat`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 { n as u64 } else { 100 }
}

/// A perf ring buffer: one metadata page and `2^n` data pages, shared with the kernel.
#[derive(Debug)]
pub struct Ring {
    fd: EventFd,
    base: *mut libc::c_void,
    len: usize,
    page: usize,
    data_size: u64,
}

// SAFETY: the mapping is owned by this value alone; the kernel is the only other party, and it
// synchronises through the head/tail words with the orderings used below.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps a ring of `data_pages` (rounded up to a power of two) data pages for `fd`.
    pub fn map(fd: EventFd, data_pages: usize) -> io::Result<Ring> {
        let page = page_size();
        let data_pages = data_pages.max(1).next_power_of_two();
        let len = page * (1 + data_pages);
        // SAFETY: a fresh shared mapping of a perf fd; the kernel validates the length. The
        // pointer is checked against MAP_FAILED and unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.0.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Ring { fd, base, len, page, data_size: (data_pages * page) as u64 })
    }

    /// The event that owns the buffer (enable it, redirect others to it).
    pub fn event(&self) -> &EventFd {
        &self.fd
    }

    fn head_tail(&self) -> (&AtomicU64, &AtomicU64) {
        let meta = self.base.cast::<perf_event_mmap_page>();
        // SAFETY: `meta` points at the mapped metadata page, which lives as long as `self`;
        // `data_head`/`data_tail` are naturally aligned u64 words the kernel accesses
        // atomically, so viewing them as `AtomicU64` is sound.
        unsafe {
            (
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*meta).data_head)),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*meta).data_tail)),
            )
        }
    }

    /// Hands every complete record the kernel has written since the last call to `f`, as
    /// contiguous bytes, then frees their space. The bytes are read in place from the ring; only
    /// when they wrap around its end are they copied into `scratch` first. Returns their length.
    pub fn drain_with(&mut self, scratch: &mut Vec<u8>, f: impl FnOnce(&[u8])) -> usize {
        let (head_w, tail_w) = self.head_tail();
        let head = head_w.load(Ordering::Acquire);
        let tail = tail_w.load(Ordering::Relaxed);
        let avail = head.wrapping_sub(tail).min(self.data_size);
        if avail == 0 {
            return 0;
        }
        let size = self.data_size as usize;
        let start = (tail % self.data_size) as usize;
        let first = (size - start).min(avail as usize);
        // SAFETY: the data area is `[base + page, base + page + size)`; `start + first <= size`
        // and `avail - first <= size`. The kernel does not write to `[tail, head)` until we
        // advance `data_tail` below, after `f` returned; the slices cannot outlive `f`.
        unsafe {
            let data = self.base.cast::<u8>().add(self.page);
            let first_part = std::slice::from_raw_parts(data.add(start), first);
            if first == avail as usize {
                f(first_part);
            } else {
                scratch.clear();
                scratch.extend_from_slice(first_part);
                scratch.extend_from_slice(std::slice::from_raw_parts(data, avail as usize - first));
                f(scratch);
            }
        }
        tail_w.store(tail.wrapping_add(avail), Ordering::Release);
        avail as usize
    }
}

/// Asks the CPU to start loading `bytes` into its caches without waiting for them.
pub fn prefetch(bytes: &[u8]) {
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is a hint that never faults nor changes memory; the pointer is
        // in bounds of a live slice anyway. SSE is part of the x86-64 baseline.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast::<i8>());
        }
    }
}

/// Blocks until the kernel signals one of `rings` (it does when a ring passes its watermark, half
/// its size) or `timeout` passes, whichever is first. Interrupted waits count as timeouts.
pub fn wait_any(rings: &[&Ring], timeout: std::time::Duration) -> io::Result<()> {
    let mut fds: Vec<libc::pollfd> =
        rings.iter().map(|r| libc::pollfd { fd: r.fd.0.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    // Rounded up: a timeout rounded down to 0 ms would make the caller spin until its deadline.
    let millis = timeout.as_micros().div_ceil(1000);
    let millis = libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` initialised pollfds whose
    // descriptors the rings keep open for the duration of the call; poll only writes `revents`.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping created in `map`, unmapped only here.
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}
