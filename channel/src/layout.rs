//! The file layout: word indices of the header, slots, ring entries and the name table.
//!
//! Pure arithmetic, shared by the writer and the reader so both agree by construction. Every
//! position is an index into the file seen as little-endian `u64` words.

use crate::error::{Error, Result};

/// `b"SPANCTX\0"` read as a little-endian word; written last (release) when a file is ready.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SPANCTX\0");
/// Layout version; a reader refuses any other.
pub const VERSION: u64 = 1;
/// `CLOCK_MONOTONIC` (Linux clock id 1): the clock of every timestamp in the file.
pub const CLOCK_MONOTONIC: u64 = 1;
/// Words reserved for the header (512 bytes); unused words are zero.
pub const HEADER_WORDS: usize = 64;

/// Word indices of the header fields.
pub mod header {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 1;
    pub const PID: usize = 2;
    /// Process start time, clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub const START_TIME: usize = 3;
    pub const CLOCK_ID: usize = 4;
    pub const SLOT_COUNT: usize = 5;
    /// Entries per ring, a power of two.
    pub const RING_CAPACITY: usize = 6;
    /// Entries in the name index.
    pub const NAME_CAPACITY: usize = 7;
    /// Words in the name arena.
    pub const ARENA_WORDS: usize = 8;
    pub const TOTAL_WORDS: usize = 9;
    /// Transitions the writer could not publish (no free slot). Counter.
    pub const DROPPED_TRANSITIONS: usize = 10;
    /// Span names that did not fit in the name table. Counter.
    pub const DROPPED_NAMES: usize = 11;
    /// Name index entries handed out so far (may exceed the capacity: those were dropped).
    pub const NAMES_NEXT: usize = 12;
    /// Arena words handed out so far.
    pub const ARENA_NEXT: usize = 13;
    /// Threads that found no free slot. Counter.
    pub const DROPPED_REGISTRATIONS: usize = 14;
}

/// Words of a slot before its ring.
pub const SLOT_META_WORDS: usize = 8;

/// Word offsets inside a slot.
pub mod slot {
    /// `generation << 2 | state`.
    pub const STATE: usize = 0;
    /// Kernel thread ID of the owner (or of the last owner, once exited).
    pub const TID: usize = 1;
    /// When the owner claimed the slot (before its first transition).
    pub const CLAIMED_NS: usize = 2;
    /// When the owner exited (state `EXITED`), else 0.
    pub const RELEASED_NS: usize = 3;
    /// Sequence number of the owner's first transition.
    pub const FIRST_SEQ: usize = 4;
    /// Sequence number of the next transition: every transition below it is published.
    pub const HEAD: usize = 5;
}

/// Slot states (low two bits of [`slot::STATE`]).
pub mod state {
    /// Never used. Writers take the lowest never-used slot first and a slot never becomes FREE
    /// again, so the FREE slots are always a suffix of the table: readers stop at the first one.
    pub const FREE: u64 = 0;
    /// Owned by a running thread.
    pub const LIVE: u64 = 1;
    /// Its thread exited; its ring still answers for `[CLAIMED_NS, RELEASED_NS]` until reclaimed.
    pub const EXITED: u64 = 2;
    /// Being taken over by a new thread; readers must not use it.
    pub const CLAIMING: u64 = 3;
}

/// Words of one ring entry.
pub const ENTRY_WORDS: usize = 6;

/// Word offsets inside a ring entry.
pub mod entry {
    /// Per-entry seqlock: `2n + 1` while transition `n` is being written, `2n + 2` once complete.
    pub const SEQ: usize = 0;
    pub const T_NS: usize = 1;
    /// Local root span ID; 0 = the thread is in no span from here on.
    pub const SPAN_ID: usize = 2;
    pub const TRACE_HI: usize = 3;
    pub const TRACE_LO: usize = 4;
    /// A [`crate::NameRef`] (0 = no name).
    pub const NAME: usize = 5;
}

/// Longest span name stored, bytes (longer names are cut at a character boundary).
pub const MAX_NAME_BYTES: usize = 256;

/// Bounds that keep a file (even one with a corrupt header) to a sane size.
const MAX_SLOTS: u64 = 1 << 16;
const MAX_RING: u64 = 1 << 20;
const MAX_NAMES: u64 = 1 << 20;
const MAX_ARENA_WORDS: u64 = 1 << 24;
const MAX_TOTAL_WORDS: u64 = 1 << 30;

/// Sizes of a file, and every offset derived from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub slot_count: usize,
    pub ring_capacity: usize,
    pub name_capacity: usize,
    pub arena_words: usize,
}

impl Layout {
    /// Checks the sizes: ring capacity a power of two ≥ 2, everything within bounds.
    pub fn new(slot_count: u64, ring_capacity: u64, name_capacity: u64, arena_words: u64) -> Result<Layout> {
        if slot_count == 0 || slot_count > MAX_SLOTS {
            return Err(Error::Layout(format!("slot count {slot_count} not in 1..={MAX_SLOTS}")));
        }
        if !ring_capacity.is_power_of_two() || !(2..=MAX_RING).contains(&ring_capacity) {
            return Err(Error::Layout(format!(
                "ring capacity {ring_capacity} is not a power of two in 2..={MAX_RING}"
            )));
        }
        if name_capacity > MAX_NAMES {
            return Err(Error::Layout(format!("name capacity {name_capacity} above {MAX_NAMES}")));
        }
        if arena_words > MAX_ARENA_WORDS {
            return Err(Error::Layout(format!("name arena of {arena_words} words above {MAX_ARENA_WORDS}")));
        }
        let layout = Layout {
            slot_count: slot_count as usize,
            ring_capacity: ring_capacity as usize,
            name_capacity: name_capacity as usize,
            arena_words: arena_words as usize,
        };
        if layout.total_words() as u64 > MAX_TOTAL_WORDS {
            return Err(Error::Layout(format!("file of {} words is too large", layout.total_words())));
        }
        Ok(layout)
    }

    pub fn slot_words(&self) -> usize {
        SLOT_META_WORDS + self.ring_capacity * ENTRY_WORDS
    }

    /// First word of slot `i`.
    pub fn slot_base(&self, i: usize) -> usize {
        HEADER_WORDS + i * self.slot_words()
    }

    /// First word of the entry holding transition `seq` of the slot starting at `slot_base`.
    pub fn entry_base(&self, slot_base: usize, seq: u64) -> usize {
        let index = (seq & (self.ring_capacity as u64 - 1)) as usize;
        slot_base + SLOT_META_WORDS + index * ENTRY_WORDS
    }

    /// First word of the name index: one word per name, `len << 32 | arena word offset`, 0 until
    /// published (release) — a name's bytes never change afterwards.
    pub fn names_base(&self) -> usize {
        HEADER_WORDS + self.slot_count * self.slot_words()
    }

    /// First word of the name arena: UTF-8 bytes packed little-endian into words.
    pub fn arena_base(&self) -> usize {
        self.names_base() + self.name_capacity
    }

    pub fn total_words(&self) -> usize {
        self.arena_base() + self.arena_words
    }

    pub fn total_bytes(&self) -> usize {
        self.total_words() * 8
    }
}

/// Words needed to hold `len` bytes.
pub fn words_for(len: usize) -> usize {
    len.div_ceil(8)
}

/// Packs a name index word.
pub fn name_word(arena_offset: usize, len: usize) -> u64 {
    ((len as u64) << 32) | arena_offset as u64
}

/// Unpacks a name index word into (arena word offset, byte length).
pub fn split_name_word(word: u64) -> (usize, usize) {
    ((word & 0xffff_ffff) as usize, (word >> 32) as usize)
}

/// Cuts `name` to at most [`MAX_NAME_BYTES`] at a character boundary.
pub fn clip_name(name: &str) -> &str {
    if name.len() <= MAX_NAME_BYTES {
        return name;
    }
    let mut end = MAX_NAME_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The start time (field 22: clock ticks since boot) and command name (field 2) from the text of
/// a `/proc/<pid>/stat` file. The command name is in parentheses and may itself contain spaces
/// or ')': the fields after it are counted from the last ')'.
pub fn parse_stat(stat: &str) -> Option<(u64, String)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // Fields after the command start at field 3 (state); starttime is field 22.
    let start = stat.get(close + 1..)?.split_whitespace().nth(22 - 3)?.parse().ok()?;
    Some((start, comm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_regions_follow_each_other_without_overlap() {
        let l = Layout::new(4, 8, 16, 32).unwrap();
        assert_eq!(l.slot_words(), SLOT_META_WORDS + 8 * ENTRY_WORDS);
        assert_eq!(l.slot_base(0), HEADER_WORDS);
        assert_eq!(l.slot_base(1), HEADER_WORDS + l.slot_words());
        assert_eq!(l.names_base(), l.slot_base(4));
        assert_eq!(l.arena_base(), l.names_base() + 16);
        assert_eq!(l.total_words(), l.arena_base() + 32);
        // The ring wraps: seq 8 lands where seq 0 was.
        assert_eq!(l.entry_base(l.slot_base(1), 8), l.entry_base(l.slot_base(1), 0));
        assert_eq!(l.entry_base(l.slot_base(1), 7) + ENTRY_WORDS, l.slot_base(2));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert!(Layout::new(0, 8, 1, 1).is_err());
        assert!(Layout::new(1, 6, 1, 1).is_err());
        assert!(Layout::new(1, 1, 1, 1).is_err());
        assert!(Layout::new(1, 1 << 21, 1, 1).is_err());
        assert!(Layout::new(1 << 17, 8, 1, 1).is_err());
        assert!(Layout::new(1 << 16, 1 << 20, 1, 1).is_err(), "total size is bounded");
    }

    #[test]
    fn stat_start_time_survives_odd_command_names() {
        let stat = "4242 (my) app (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 4 0 987654 1000 200";
        assert_eq!(parse_stat(stat), Some((987654, "my) app (x)".into())));
        assert_eq!(parse_stat("12 (short) S 1"), None);
        assert_eq!(parse_stat("no parens"), None);
    }

    #[test]
    fn names_are_clipped_at_char_boundaries() {
        let long = "é".repeat(200); // 400 bytes
        let clipped = clip_name(&long);
        assert!(clipped.len() <= MAX_NAME_BYTES);
        assert_eq!(clipped.len(), MAX_NAME_BYTES);
        assert_eq!(clip_name("short"), "short");
        let (off, len) = split_name_word(name_word(77, 12));
        assert_eq!((off, len), (77, 12));
    }
}
