//! The sampler side: opens a process's channel file read-only and answers "which root span was
//! thread `tid` running at time `t`?" — exactly, or `Unknown`, never a wrong span.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{Ordering, fence};

use crate::error::{Error, Result};
use crate::layout::{self, Layout, entry, header, slot, state};
use crate::sys::{Loads, Mapping};
use crate::{NameRef, Root};

/// The answer of [`Reader::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// The thread was inside this local root span.
    Span(Root),
    /// The thread was known and inside no span.
    NoSpan,
    /// Cannot tell: the thread never registered (or not yet at that time), or the slot changed
    /// under the reader. Such samples stay unattributed.
    Unknown,
    /// Cannot tell because the thread's ring has been overwritten past `t`: the reader came too
    /// late for this thread's rate of root-span changes (reading sooner would have known).
    Overwritten,
}

/// What the header of a channel file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u64,
    pub pid: u32,
    /// Clock ticks since boot, as field 22 of `/proc/<pid>/stat`: with the PID, identifies the
    /// process (a file whose PID now belongs to a process with another start time is stale).
    pub start_time: u64,
    pub clock_id: u64,
    pub layout: Layout,
}

/// Counters the writer keeps in the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Transitions not published because their thread had no slot.
    pub dropped_transitions: u64,
    /// Threads that found every slot taken.
    pub dropped_registrations: u64,
    /// Span names that did not fit.
    pub dropped_names: u64,
}

/// How often a lookup starts over when a writer changed what it was reading, before it gives up
/// with `Unknown`.
const ATTEMPTS: usize = 16;

/// The most a reader maps of one file (the SDK's default layout takes 12.6 MiB; a ring of 64 Ki
/// transitions per thread, 400 MiB). Mapped is not resident: pages count only once touched.
pub const MAX_READ_BYTES: u64 = 1 << 30;
/// The most slots a reader accepts (the SDK's default is 256): indexing touches a page per slot,
/// so a hostile header claiming 65,536 live slots would otherwise cost 256 MiB of memory.
pub const MAX_READ_SLOTS: usize = 4096;

/// A read-only view of one channel file (possibly another process's).
pub struct Reader {
    map: Mapping,
    header: Header,
    path: PathBuf,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("path", &self.path).field("header", &self.header).finish()
    }
}

/// Which slots may answer for which thread, as of when [`Reader::index`] built it: lets
/// [`Reader::lookup_indexed`] read a thread's own slots instead of the whole slot table (each
/// slot sits on its own pages, so a full scan costs a cache and TLB miss per slot).
#[derive(Clone, Debug, Default)]
pub struct SlotIndex {
    by_tid: HashMap<u32, Vec<usize>>,
    /// Slots being taken over: their new owner is not known yet.
    claiming: Vec<usize>,
}

/// One slot's verdict during a lookup.
enum Step {
    NotThis,
    Match(Answer),
    Changed,
}

impl Reader {
    /// Opens `pid`'s channel file in `dir` only when it is that very process's: its header names
    /// the same PID and start time (a file an earlier process with the same PID left is
    /// [`Error::Stale`]), and the process's user owns it (the directory is writable by every app
    /// of a pod: a file another user put there is [`Error::Untrusted`]). `start_time` is field 22
    /// of `/proc/<pid>/stat` ([`layout::parse_stat`]).
    pub fn open_for(dir: &Path, pid: u32, start_time: u64) -> Result<Reader> {
        use std::os::unix::fs::MetadataExt;
        let path = dir.join(crate::file_name(pid));
        let file_uid = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?.uid();
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let process_uid = std::fs::metadata(&proc).map_err(|e| Error::io(&proc, e))?.uid();
        if file_uid != process_uid {
            return Err(Error::Untrusted { path, file_uid, process_uid });
        }
        let reader = Reader::open(&path)?;
        let h = reader.header();
        if h.pid != pid || h.start_time != start_time {
            return Err(Error::Stale(path));
        }
        Ok(reader)
    }

    /// Maps `path` read-only and checks its header.
    /// The file is the other process's and untrusted: a symbolic link is not followed, a FIFO or
    /// device does not block or count (only regular files are read), a header claiming more than
    /// [`MAX_READ_BYTES`] or [`MAX_READ_SLOTS`] is refused, and a file shrunk later reads as zeros (see
    /// [`Reader::is_damaged`]) instead of raising SIGBUS.
    pub fn open(path: &Path) -> Result<Reader> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.file_type().is_file() {
            return Err(Error::Layout(format!("{}: not a regular file", path.display())));
        }
        let len = meta.len();
        let header_bytes = (layout::HEADER_WORDS * 8) as u64;
        if len < header_bytes {
            return Err(Error::BadMagic(path.to_owned()));
        }
        // Map the header first: the file length alone does not say how much of it is ours.
        let head = Mapping::map(&file, header_bytes as usize, false).map_err(|e| Error::io(path, e))?;
        let header = read_header(head.loads(), path)?;
        drop(head);
        let total = header.layout.total_bytes() as u64;
        if header.layout.slot_count > MAX_READ_SLOTS {
            return Err(Error::Layout(format!(
                "{}: its header claims {} thread slots, more than a reader takes ({MAX_READ_SLOTS})",
                path.display(),
                header.layout.slot_count
            )));
        }
        if total > MAX_READ_BYTES {
            return Err(Error::Layout(format!(
                "{}: its header describes {total} bytes, more than a reader maps ({MAX_READ_BYTES})",
                path.display()
            )));
        }
        if len < total {
            return Err(Error::Layout(format!("{}: file has {len} bytes, its header says {total}", path.display())));
        }
        let map = Mapping::map(&file, total as usize, false).map_err(|e| Error::io(path, e))?;
        Ok(Reader { map, header, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file shrank under the reader (its owner truncated it): parts of it now read as
    /// zeros, so answers are `Unknown` there; drop the reader and open the file again.
    pub fn is_damaged(&self) -> bool {
        self.map.damaged()
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn counters(&self) -> Counters {
        let w = self.map.loads();
        let get = |i| w.load(i, Ordering::Relaxed).unwrap_or(0);
        Counters {
            dropped_transitions: get(header::DROPPED_TRANSITIONS),
            dropped_registrations: get(header::DROPPED_REGISTRATIONS),
            dropped_names: get(header::DROPPED_NAMES),
        }
    }

    /// The span name behind `r`, if it was stored.
    pub fn name(&self, r: NameRef) -> Option<String> {
        let l = &self.header.layout;
        let w = self.map.loads();
        let index = (r.0 as usize).checked_sub(1)?;
        if index >= l.name_capacity {
            return None;
        }
        let word = w.load(l.names_base() + index, Ordering::Acquire)?;
        if word == 0 {
            return None;
        }
        let (offset, len) = layout::split_name_word(word);
        if len > layout::MAX_NAME_BYTES || offset + layout::words_for(len) > l.arena_words {
            return None;
        }
        let mut bytes = Vec::with_capacity(len);
        for k in 0..layout::words_for(len) {
            bytes.extend_from_slice(&w.load(l.arena_base() + offset + k, Ordering::Relaxed)?.to_le_bytes());
        }
        bytes.truncate(len);
        String::from_utf8(bytes).ok()
    }

    /// The local root span thread `tid` was running at `t_ns` (CLOCK_MONOTONIC).
    ///
    /// Exact for every time up to the thread's latest published transition; `Unknown` whenever it
    /// cannot be sure. Runs concurrently with the writers; costs a scan of the slot table.
    pub fn lookup(&self, tid: u32, t_ns: u64) -> Answer {
        self.lookup_in(0..self.header.layout.slot_count, tid, t_ns)
    }

    /// Which slots hold which thread now. Lookups through it ([`Reader::lookup_indexed`]) give
    /// the same answers as [`Reader::lookup`] for every time before the index was built: a slot
    /// claimed later records a claim time after that, so it cannot answer for earlier times.
    pub fn index(&self) -> SlotIndex {
        let w = self.map.loads();
        let mut index = SlotIndex::default();
        for i in 0..self.header.layout.slot_count {
            let base = self.header.layout.slot_base(i);
            let st = w.load(base + slot::STATE, Ordering::Acquire).unwrap_or(0) & 3;
            match st {
                state::LIVE | state::EXITED => {
                    let tid = w.load(base + slot::TID, Ordering::Relaxed).unwrap_or(0) as u32;
                    index.by_tid.entry(tid).or_default().push(i);
                }
                state::CLAIMING => index.claiming.push(i),
                // Every later slot is FREE too (see `state::FREE`); one claimed after this read
                // records a claim time after it.
                _ => break,
            }
        }
        index
    }

    /// [`Reader::lookup`] through `index`, for a time `t_ns` before the index was built.
    pub fn lookup_indexed(&self, index: &SlotIndex, tid: u32, t_ns: u64) -> Answer {
        let own = index.by_tid.get(&tid).map(Vec::as_slice).unwrap_or_default();
        self.lookup_in(own.iter().chain(&index.claiming).copied(), tid, t_ns)
    }

    fn lookup_in(&self, slots: impl Iterator<Item = usize> + Clone, tid: u32, t_ns: u64) -> Answer {
        'attempt: for _ in 0..ATTEMPTS {
            let mut found = None;
            for i in slots.clone() {
                match self.slot_step(i, tid, t_ns) {
                    Step::NotThis => {}
                    Step::Changed => {
                        std::hint::spin_loop();
                        continue 'attempt;
                    }
                    Step::Match(answer) => {
                        if found.is_some() {
                            // Two owners claim the thread at that time: a thread that died without
                            // releasing its slot, and its TID's next owner. Refuse to guess.
                            return Answer::Unknown;
                        }
                        found = Some(answer);
                    }
                }
            }
            return found.unwrap_or(Answer::Unknown);
        }
        Answer::Unknown
    }

    /// The transitions of thread `tid` still in its ring, oldest first, as `(t_monotonic_ns,
    /// root)` (`None`: no span from then on), from the newest slot that thread owns. For
    /// debugging and tests; a concurrent writer may make it miss entries it overwrote meanwhile.
    pub fn history(&self, tid: u32) -> Vec<(u64, Option<Root>)> {
        let l = &self.header.layout;
        let w = self.map.loads();
        let mut best: Option<(u64, usize)> = None;
        for i in 0..l.slot_count {
            let base = l.slot_base(i);
            let st = w.load(base + slot::STATE, Ordering::Acquire).unwrap_or(0) & 3;
            let owner = w.load(base + slot::TID, Ordering::Relaxed).unwrap_or(0);
            let claimed = w.load(base + slot::CLAIMED_NS, Ordering::Relaxed).unwrap_or(0);
            if (st == state::LIVE || st == state::EXITED)
                && owner == u64::from(tid)
                && best.is_none_or(|(c, _)| claimed > c)
            {
                best = Some((claimed, base));
            }
        }
        let Some((_, base)) = best else { return Vec::new() };
        let first = w.load(base + slot::FIRST_SEQ, Ordering::Relaxed).unwrap_or(0);
        let head = w.load(base + slot::HEAD, Ordering::Acquire).unwrap_or(0);
        let mut out = Vec::new();
        for n in first.max(head.saturating_sub(l.ring_capacity as u64))..head {
            let e = l.entry_base(base, n);
            let get = |k: usize| w.load(e + k, Ordering::Relaxed).unwrap_or(0);
            let seq1 = w.load(e + entry::SEQ, Ordering::Acquire).unwrap_or(0);
            let (t_ns, span_id) = (get(entry::T_NS), get(entry::SPAN_ID));
            let trace_id = (u128::from(get(entry::TRACE_HI)) << 64) | u128::from(get(entry::TRACE_LO));
            let name = NameRef(get(entry::NAME) as u32);
            fence(Ordering::Acquire);
            if seq1 == done_seq(n) && w.load(e + entry::SEQ, Ordering::Relaxed) == Some(seq1) {
                out.push((t_ns, (span_id != 0).then_some(Root { span_id, trace_id, name })));
            }
        }
        out
    }

    fn slot_step(&self, i: usize, tid: u32, t: u64) -> Step {
        let l = &self.header.layout;
        let w = self.map.loads();
        let base = l.slot_base(i);
        let Some(s1) = w.load(base + slot::STATE, Ordering::Acquire) else {
            return Step::NotThis;
        };
        let st = s1 & 3;
        if st != state::LIVE && st != state::EXITED {
            return Step::NotThis;
        }
        let field = |k: usize, o: Ordering| w.load(base + k, o).unwrap_or(0);
        let owner = field(slot::TID, Ordering::Relaxed);
        let claimed = field(slot::CLAIMED_NS, Ordering::Relaxed);
        let released = field(slot::RELEASED_NS, Ordering::Relaxed);
        let first = field(slot::FIRST_SEQ, Ordering::Relaxed);
        let head = field(slot::HEAD, Ordering::Acquire);
        let mine = owner == u64::from(tid) && t >= claimed && (st == state::LIVE || t <= released);
        let answer = if mine { self.scan(w, base, first, head, t) } else { Some(Answer::Unknown) };
        // Seqlock read side: if the slot changed owner or state meanwhile, what we read may mix
        // two owners.
        fence(Ordering::Acquire);
        if w.load(base + slot::STATE, Ordering::Relaxed) != Some(s1) {
            return Step::Changed;
        }
        match answer {
            None => Step::Changed,
            Some(a) if mine => Step::Match(a),
            Some(_) => Step::NotThis,
        }
    }

    /// Finds the last transition at or before `t` among `[first, head)`. `None`: the writer was
    /// in the middle of the next transition; look again.
    ///
    /// A binary search: one thread's transitions are in time order, and a busy thread (an async
    /// worker switching tasks) can have hundreds of them between a sample and its lookup.
    fn scan(&self, w: Loads<'_>, base: usize, first: u64, head: u64, t: u64) -> Option<Answer> {
        let l = &self.header.layout;
        let cap = l.ring_capacity as u64;
        if head < first || head - first > (1 << 62) {
            return Some(Answer::Unknown);
        }
        // A transition started (or finished) after we read `head` may be at or before `t`.
        let next = w.load(l.entry_base(base, head) + entry::SEQ, Ordering::Acquire)?;
        if next == done_seq(head).wrapping_sub(1) || next == done_seq(head) {
            return None;
        }
        let lowest = first.max(head.saturating_sub(cap));
        // Invariant: every entry in [lo, hi) is unread; entries below `lo` are at or before `t`
        // (the newest of them is `best`) or were overwritten (`lost`); entries from `hi` on
        // are after `t`.
        let (mut lo, mut hi) = (lowest, head);
        let (mut best, mut lost) = (None, false);
        while lo < hi {
            let n = lo + (hi - lo) / 2;
            let e = l.entry_base(base, n);
            let seq1 = w.load(e + entry::SEQ, Ordering::Acquire)?;
            if seq1 != done_seq(n) {
                // Overwritten by a later lap: everything at or before `n` is gone, including
                // any `best` found so far (a newer entry at or before `t` may have been lost).
                (lo, best, lost) = (n + 1, None, true);
                continue;
            }
            let get = |k: usize| w.load(e + k, Ordering::Relaxed).unwrap_or(0);
            let (t_ns, span_id) = (get(entry::T_NS), get(entry::SPAN_ID));
            let trace_id = (u128::from(get(entry::TRACE_HI)) << 64) | u128::from(get(entry::TRACE_LO));
            let name = NameRef(get(entry::NAME) as u32);
            fence(Ordering::Acquire);
            if w.load(e + entry::SEQ, Ordering::Relaxed)? != seq1 {
                return Some(Answer::Unknown);
            }
            if t_ns <= t {
                best = Some(if span_id == 0 { Answer::NoSpan } else { Answer::Span(Root { span_id, trace_id, name }) });
                lo = n + 1;
            } else {
                hi = n;
            }
        }
        Some(match best {
            Some(answer) => answer,
            // Entries at or before `t` were overwritten.
            None if lost => Answer::Overwritten,
            // Every transition of this owner still in the ring is after `t`. If the ring still
            // holds the owner's first one, the thread was in no span since it registered; else
            // the transitions around `t` were overwritten.
            None if lowest == first => Answer::NoSpan,
            None => Answer::Overwritten,
        })
    }
}

/// The seqlock value of transition `n` once written (`2n + 2`; `2n + 1` while being written).
/// Wrapping, as the writer's counters would: a hostile header's sequence numbers must not
/// overflow the reader's arithmetic.
fn done_seq(n: u64) -> u64 {
    n.wrapping_mul(2).wrapping_add(2)
}

fn read_header(w: Loads<'_>, path: &Path) -> Result<Header> {
    if w.load(header::MAGIC, Ordering::Acquire) != Some(layout::MAGIC) {
        return Err(Error::BadMagic(path.to_owned()));
    }
    let get = |i| w.load(i, Ordering::Relaxed).unwrap_or(0);
    let version = get(header::VERSION);
    if version != layout::VERSION {
        return Err(Error::UnsupportedVersion { path: path.to_owned(), found: version, expected: layout::VERSION });
    }
    let clock_id = get(header::CLOCK_ID);
    if clock_id != layout::CLOCK_MONOTONIC {
        return Err(Error::Layout(format!("{}: clock id {clock_id}, expected CLOCK_MONOTONIC", path.display())));
    }
    let layout = Layout::new(
        get(header::SLOT_COUNT),
        get(header::RING_CAPACITY),
        get(header::NAME_CAPACITY),
        get(header::ARENA_WORDS),
    )?;
    if get(header::TOTAL_WORDS) != layout.total_words() as u64 || w.len() < layout::HEADER_WORDS {
        return Err(Error::Layout(format!("{}: header sizes do not add up", path.display())));
    }
    Ok(Header { version, pid: get(header::PID) as u32, start_time: get(header::START_TIME), clock_id, layout })
}
