//! The app side: creates the process's channel file, hands out per-thread slots, publishes
//! transitions (lock-free, allocation-free, no system call but the vDSO clock).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::marker::PhantomData;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::layout::{self, Layout, entry, header, slot, state};
use crate::sys::{self, Mapping};
use crate::{NameRef, Root};

/// Sizes of a new channel file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Threads that can hold a slot at once; more are dropped and counted.
    pub slots: u32,
    /// Transitions kept per thread (power of two); older ones are overwritten, and a reader
    /// answers `Unknown` for times they covered.
    pub ring_capacity: u32,
    /// Distinct span names per process.
    pub max_names: u32,
    /// Bytes for span names.
    pub name_bytes: u32,
}

impl Default for Options {
    /// 256 threads × 1024 transitions, 4096 names in 256 KiB: a 12.5 MiB sparse file whose pages
    /// are only allocated as threads use them.
    fn default() -> Self {
        Options { slots: 256, ring_capacity: 1024, max_names: 4096, name_bytes: 256 << 10 }
    }
}

/// The file name of a process's channel file in the context directory.
pub fn file_name(pid: u32) -> String {
    format!("{pid}{}", crate::FILE_SUFFIX)
}

/// The writing end of one process's channel file. Share it with `Arc`; each thread publishes
/// through its own [`ThreadSlot`].
pub struct Writer {
    map: Mapping,
    layout: Layout,
    path: PathBuf,
    /// Names already in the file. Taken only when a thread meets a name its own cache lacks.
    names: Mutex<HashMap<Box<str>, NameRef>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).field("layout", &self.layout).finish()
    }
}

impl Writer {
    /// Creates `<dir>/<pid>.spanctx` for this process (replacing a stale file of a former process
    /// with the same PID). The directory must exist.
    pub fn create(dir: &Path, options: &Options) -> Result<Writer> {
        Writer::create_at(&dir.join(file_name(std::process::id())), options)
    }

    /// Creates the channel file at an explicit path: written under a temporary name, then renamed
    /// into place, so a reader never sees a half-initialised file.
    pub fn create_at(path: &Path, options: &Options) -> Result<Writer> {
        let layout = Layout::new(
            u64::from(options.slots),
            u64::from(options.ring_capacity),
            u64::from(options.max_names),
            layout::words_for(options.name_bytes as usize) as u64,
        )?;
        let start_time =
            fs::read_to_string("/proc/self/stat").map_err(|e| Error::io("/proc/self/stat", e)).and_then(|stat| {
                layout::parse_stat(&stat)
                    .map(|(start, _)| start)
                    .ok_or_else(|| Error::Layout("cannot parse the start time in /proc/self/stat".into()))
            })?;
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("spanctx");
        let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let result = (|| {
            file.set_len(layout.total_bytes() as u64).map_err(|e| Error::io(&tmp, e))?;
            let map = Mapping::map(&file, layout.total_bytes(), true).map_err(|e| Error::io(&tmp, e))?;
            let words = map.words_mut().ok_or_else(|| Error::Layout("mapping is not writable".into()))?;
            let set = |i: usize, v: u64| words[i].store(v, Ordering::Relaxed);
            set(header::VERSION, layout::VERSION);
            set(header::PID, u64::from(std::process::id()));
            set(header::START_TIME, start_time);
            set(header::CLOCK_ID, layout::CLOCK_MONOTONIC);
            set(header::SLOT_COUNT, layout.slot_count as u64);
            set(header::RING_CAPACITY, layout.ring_capacity as u64);
            set(header::NAME_CAPACITY, layout.name_capacity as u64);
            set(header::ARENA_WORDS, layout.arena_words as u64);
            set(header::TOTAL_WORDS, layout.total_words() as u64);
            // Publishes the header: a reader that sees the magic (acquire) sees every field above.
            words[header::MAGIC].store(layout::MAGIC, Ordering::Release);
            fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
            Ok(map)
        })();
        match result {
            Ok(map) => Ok(Writer { map, layout, path: path.to_owned(), names: Mutex::new(HashMap::new()) }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn words(&self) -> &[AtomicU64] {
        // A writer's mapping is always writable (created so in `create_at`).
        self.map.words_mut().unwrap_or(&[])
    }

    fn word(&self, i: usize) -> Option<&AtomicU64> {
        self.words().get(i)
    }

    fn bump(&self, counter: usize) {
        if let Some(w) = self.word(counter) {
            w.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Transitions dropped because their thread had no slot.
    pub fn dropped_transitions(&self) -> u64 {
        self.word(header::DROPPED_TRANSITIONS).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// Counts a transition that could not be published (the caller had no slot).
    pub fn count_dropped_transition(&self) {
        self.bump(header::DROPPED_TRANSITIONS);
    }

    /// Stores `name` once in the file and returns its reference; the same name always gets the
    /// same reference. [`NameRef::NONE`] when the name table is full (counted in the header).
    /// Takes a mutex: call it when a name is first met, not per transition.
    pub fn intern(&self, name: &str) -> NameRef {
        let name = layout::clip_name(name);
        let mut names = match self.names.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(r) = names.get(name) {
            return *r;
        }
        let r = self.store_name(name);
        if r != NameRef::NONE {
            names.insert(name.into(), r);
        }
        r
    }

    /// Called with `names` locked: the lock (one writer process per file) serialises every
    /// allocation in the name table, so plain loads and stores of its counters suffice.
    fn store_name(&self, name: &str) -> NameRef {
        let words = self.words();
        let l = &self.layout;
        let index = words[header::NAMES_NEXT].load(Ordering::Relaxed) as usize;
        let need = layout::words_for(name.len());
        let offset = words[header::ARENA_NEXT].load(Ordering::Relaxed) as usize;
        if index >= l.name_capacity || offset + need > l.arena_words {
            self.bump(header::DROPPED_NAMES);
            return NameRef::NONE;
        }
        words[header::NAMES_NEXT].store(index as u64 + 1, Ordering::Relaxed);
        words[header::ARENA_NEXT].store((offset + need) as u64, Ordering::Relaxed);
        for (k, chunk) in name.as_bytes().chunks(8).enumerate() {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            words[l.arena_base() + offset + k].store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
        // Release: a reader that sees the index word sees the bytes.
        words[l.names_base() + index].store(layout::name_word(offset, name.len()), Ordering::Release);
        NameRef(index as u32 + 1)
    }

    /// Claims a slot for the calling thread. `None` when every slot is taken by a live thread
    /// (counted in the header); the caller counts its transitions as dropped and may retry later.
    pub fn register_thread(self: &Arc<Self>) -> Option<ThreadSlot> {
        self.register_with_tid(sys::current_tid())
    }

    /// Claims a slot recorded under `tid` instead of the caller's own thread ID — for tests and
    /// simulations of thread-ID reuse. The slot must still be used by one thread only (it is `!Send`).
    pub fn register_with_tid(self: &Arc<Self>, tid: u32) -> Option<ThreadSlot> {
        let l = &self.layout;
        let words = self.words();
        for _pass in 0..4 {
            // Never-used slots first, lowest first (readers rely on FREE slots being a suffix of
            // the table); else the exited slot that has been free longest, which keeps recently
            // exited threads answerable for as long as possible.
            let mut oldest: Option<(usize, u64, u64)> = None;
            for i in 0..l.slot_count {
                let base = l.slot_base(i);
                let st = words[base + slot::STATE].load(Ordering::Acquire);
                match st & 3 {
                    state::FREE => {
                        if let Some(claimed) = self.claim(i, st, tid) {
                            return Some(claimed);
                        }
                    }
                    state::EXITED => {
                        let released = words[base + slot::RELEASED_NS].load(Ordering::Relaxed);
                        if oldest.is_none_or(|(_, _, r)| released < r) {
                            oldest = Some((i, st, released));
                        }
                    }
                    _ => {}
                }
            }
            match oldest {
                Some((i, st, _)) => {
                    if let Some(claimed) = self.claim(i, st, tid) {
                        return Some(claimed);
                    }
                }
                None => break,
            }
        }
        self.bump(header::DROPPED_REGISTRATIONS);
        None
    }

    fn claim(self: &Arc<Self>, i: usize, seen: u64, tid: u32) -> Option<ThreadSlot> {
        let words = self.words();
        let base = self.layout.slot_base(i);
        let generation = (seen >> 2) + 1;
        let claiming = (generation << 2) | state::CLAIMING;
        words[base + slot::STATE].compare_exchange(seen, claiming, Ordering::Acquire, Ordering::Relaxed).ok()?;
        // Seqlock write side: readers that see any store below also see CLAIMING (or later).
        fence(Ordering::Release);
        // Sequence numbers continue across owners, so an entry of the previous owner can never
        // pass for one of ours.
        let first = words[base + slot::HEAD].load(Ordering::Relaxed);
        words[base + slot::TID].store(u64::from(tid), Ordering::Relaxed);
        words[base + slot::RELEASED_NS].store(0, Ordering::Relaxed);
        words[base + slot::FIRST_SEQ].store(first, Ordering::Relaxed);
        words[base + slot::CLAIMED_NS].store(sys::monotonic_ns(), Ordering::Relaxed);
        let live = (generation << 2) | state::LIVE;
        words[base + slot::STATE].store(live, Ordering::Release);
        Some(ThreadSlot { writer: Arc::clone(self), base, next: first, live, tid, not_send: PhantomData })
    }
}

/// One thread's slot: the only writer of its ring. Dropping it (at thread exit) marks the slot
/// exited; its ring keeps answering for the thread's lifetime until another thread reclaims it.
pub struct ThreadSlot {
    writer: Arc<Writer>,
    base: usize,
    next: u64,
    live: u64,
    tid: u32,
    /// Single writer per ring: the slot stays on the thread that claimed it.
    not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for ThreadSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadSlot").field("tid", &self.tid).field("next", &self.next).finish()
    }
}

impl ThreadSlot {
    pub fn tid(&self) -> u32 {
        self.tid
    }

    /// Publishes "from now on this thread runs `root`" (`None`: no span) and returns the timestamp
    /// written. Never blocks, never allocates; the only system interaction is the vDSO clock.
    // Inlined into the SDK's publishing path: it runs on every root change.
    #[inline]
    pub fn record(&mut self, root: Option<&Root>) -> u64 {
        let words = self.writer.words();
        let n = self.next;
        let e = self.writer.layout.entry_base(self.base, n);
        let Some(fields) = words.get(e..e + layout::ENTRY_WORDS) else {
            return 0;
        };
        // Mark the entry in progress *before* reading the clock: a reader that finds the entry
        // complete or in progress never answers from the previous one for a later time.
        fields[entry::SEQ].store(2 * n + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        let t = sys::monotonic_ns();
        let (span, trace, name) = match root {
            Some(r) => (r.span_id, r.trace_id, r.name.0),
            None => (0, 0, 0),
        };
        fields[entry::T_NS].store(t, Ordering::Relaxed);
        fields[entry::SPAN_ID].store(span, Ordering::Relaxed);
        fields[entry::TRACE_HI].store((trace >> 64) as u64, Ordering::Relaxed);
        fields[entry::TRACE_LO].store(trace as u64, Ordering::Relaxed);
        fields[entry::NAME].store(u64::from(name), Ordering::Relaxed);
        fields[entry::SEQ].store(2 * n + 2, Ordering::Release);
        words[self.base + slot::HEAD].store(n + 1, Ordering::Release);
        self.next = n + 1;
        t
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        let words = self.writer.words();
        words[self.base + slot::RELEASED_NS].store(sys::monotonic_ns(), Ordering::Relaxed);
        // Release: a reader that sees EXITED sees the release time.
        let exited = (self.live & !3) | state::EXITED;
        words[self.base + slot::STATE].store(exited, Ordering::Release);
    }
}
