//! Parsing perf ring-buffer records (pure): exactly the layout asked for by
//! [`super::sys::SAMPLE_TYPE`] with `sample_id_all`.

/// `perf_event_header.type` values we handle.
const LOST: u32 = 2;
const COMM: u32 = 3;
const EXIT: u32 = 4;
const THROTTLE: u32 = 5;
const FORK: u32 = 7;
const SAMPLE: u32 = 9;
const MMAP2: u32 = 10;
const LOST_SAMPLES: u32 = 13;

/// `misc` bits.
const MISC_CPUMODE_MASK: u16 = 7;
const MISC_KERNEL: u16 = 1;
const MISC_COMM_EXEC: u16 = 1 << 13;

/// One sample: where a thread was at `time_ns` (CLOCK_MONOTONIC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample<'a> {
    pub pid: u32,
    pub tid: u32,
    pub time_ns: u64,
    /// The thread was in the kernel; the registers are its user-mode registers at entry.
    pub kernel: bool,
    /// `[bp, sp, ip]`, `None` for a kernel thread (no user registers).
    pub regs: Option<[u64; 3]>,
    /// The copy of the user stack from `sp` up.
    pub stack: &'a [u8],
}

/// A record from the ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Sample(Sample<'a>),
    /// A new mapping in `pid` (executable when `exec`).
    Mmap {
        pid: u32,
        exec: bool,
    },
    /// `pid` exec'd (its modules changed).
    Exec {
        pid: u32,
    },
    Fork {
        pid: u32,
        tid: u32,
    },
    Exit {
        pid: u32,
        tid: u32,
    },
    /// Records the kernel dropped because the ring was full.
    Lost(u64),
    Throttle,
    Other,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Splits a drained byte run into records. A malformed record ends the walk: `Err(bytes left)`.
///
/// Before each record goes to `f`, the stack copy of the sample after it (if the next record is
/// one) goes to `ahead`: the agent prefetches it, so that the cache misses of reading it overlap
/// the unwinding of this one instead of stalling the next.
pub fn for_each<'a>(
    bytes: &'a [u8],
    mut ahead: impl FnMut(&'a [u8]),
    mut f: impl FnMut(Record<'a>),
) -> Result<(), usize> {
    let mut off = 0;
    while off < bytes.len() {
        let (Some(kind), Some(misc), Some(size)) = (u32_at(bytes, off), u16_at(bytes, off + 4), u16_at(bytes, off + 6))
        else {
            return Err(bytes.len() - off);
        };
        let size = usize::from(size);
        if size < 8 || off + size > bytes.len() {
            return Err(bytes.len() - off);
        }
        if let Some(stack) = sample_stack_at(bytes, off + size) {
            ahead(stack);
        }
        match parse(kind, misc, &bytes[off + 8..off + size]) {
            Some(r) => f(r),
            None => return Err(bytes.len() - off),
        }
        off += size;
    }
    Ok(())
}

/// The stack copy of the sample record at `off`, if there is a whole one.
fn sample_stack_at(bytes: &[u8], off: usize) -> Option<&[u8]> {
    if u32_at(bytes, off)? != SAMPLE {
        return None;
    }
    let size = usize::from(u16_at(bytes, off + 6)?);
    let body = bytes.get(off.checked_add(8)?..off.checked_add(size)?)?;
    Some(parse_sample(0, body)?.stack)
}

fn parse(kind: u32, misc: u16, body: &[u8]) -> Option<Record<'_>> {
    Some(match kind {
        SAMPLE => Record::Sample(parse_sample(misc, body)?),
        MMAP2 => {
            // pid, tid, addr, len, pgoff, maj/min or build id (24 bytes), prot, flags, filename…
            let prot = u32_at(body, 56)?;
            Record::Mmap { pid: u32_at(body, 0)?, exec: prot & libc::PROT_EXEC as u32 != 0 }
        }
        COMM if misc & MISC_COMM_EXEC != 0 => Record::Exec { pid: u32_at(body, 0)? },
        FORK => Record::Fork { pid: u32_at(body, 0)?, tid: u32_at(body, 8)? },
        EXIT => Record::Exit { pid: u32_at(body, 0)?, tid: u32_at(body, 8)? },
        LOST => Record::Lost(u64_at(body, 8)?),
        LOST_SAMPLES => Record::Lost(u64_at(body, 0)?),
        THROTTLE => Record::Throttle,
        _ => Record::Other,
    })
}

fn parse_sample(misc: u16, b: &[u8]) -> Option<Sample<'_>> {
    let pid = u32_at(b, 0)?;
    let tid = u32_at(b, 4)?;
    let time_ns = u64_at(b, 8)?;
    // cpu, res at 16..24
    let abi = u64_at(b, 24)?;
    let mut o = 32;
    let regs = if abi != 0 {
        let r = [u64_at(b, o)?, u64_at(b, o + 8)?, u64_at(b, o + 16)?];
        o += 24;
        Some(r)
    } else {
        None
    };
    let size = usize::try_from(u64_at(b, o)?).ok()?;
    o += 8;
    let stack = if size > 0 {
        let data = b.get(o..o.checked_add(size)?)?;
        let dyn_size = usize::try_from(u64_at(b, o + size)?).ok()?;
        &data[..dyn_size.min(size)]
    } else {
        &[][..]
    };
    Some(Sample { pid, tid, time_ns, kernel: misc & MISC_CPUMODE_MASK == MISC_KERNEL, regs, stack })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn header(kind: u32, misc: u16, body: &[u8]) -> Vec<u8> {
        let mut v = kind.to_le_bytes().to_vec();
        v.extend_from_slice(&misc.to_le_bytes());
        v.extend_from_slice(&((body.len() + 8) as u16).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    /// A sample record as the kernel writes it for our sample type.
    pub(crate) fn sample_bytes(pid: u32, tid: u32, t: u64, regs: [u64; 3], stack: &[u8], reserved: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [pid, tid] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t.to_le_bytes());
        b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // cpu 1
        b.extend_from_slice(&2u64.to_le_bytes()); // PERF_SAMPLE_REGS_ABI_64
        for r in regs {
            b.extend_from_slice(&r.to_le_bytes());
        }
        b.extend_from_slice(&(reserved as u64).to_le_bytes());
        let mut data = stack.to_vec();
        data.resize(reserved, 0xAA);
        b.extend_from_slice(&data);
        b.extend_from_slice(&(stack.len() as u64).to_le_bytes());
        header(SAMPLE, 2, &b)
    }

    #[test]
    fn shows_each_next_sample_stack_before_the_record_ahead_of_it() {
        let mut bytes = sample_bytes(7, 8, 1, [1, 2, 3], &[1; 16], 64);
        bytes.extend(sample_bytes(7, 8, 2, [1, 2, 3], &[2; 24], 64));
        let mut mmap = vec![0u8; 72];
        mmap[0..4].copy_from_slice(&7u32.to_le_bytes());
        bytes.extend(header(MMAP2, 0, &mmap));
        bytes.extend(sample_bytes(7, 8, 3, [1, 2, 3], &[3; 8], 64));
        let events = std::cell::RefCell::new(Vec::new());
        for_each(
            &bytes,
            |stack| events.borrow_mut().push(format!("ahead {:?}", (stack[0], stack.len()))),
            |r| {
                events.borrow_mut().push(match r {
                    Record::Sample(s) => format!("sample {}", s.time_ns),
                    _ => "other".into(),
                })
            },
        )
        .unwrap();
        assert_eq!(events.into_inner(), ["ahead (2, 24)", "sample 1", "sample 2", "ahead (3, 8)", "other", "sample 3"]);
    }

    #[test]
    fn parses_samples_side_band_and_lost_records() {
        let mut bytes = sample_bytes(7, 8, 12345, [1, 2, 3], &[9; 16], 64);
        let mut mmap = vec![0u8; 72];
        mmap[0..4].copy_from_slice(&7u32.to_le_bytes());
        mmap[56..60].copy_from_slice(&(libc::PROT_READ | libc::PROT_EXEC).to_le_bytes());
        bytes.extend(header(MMAP2, 0, &mmap));
        let mut task = vec![0u8; 40];
        task[0..4].copy_from_slice(&7u32.to_le_bytes());
        task[8..12].copy_from_slice(&9u32.to_le_bytes());
        bytes.extend(header(FORK, 0, &task));
        bytes.extend(header(EXIT, 0, &task));
        bytes.extend(header(COMM, MISC_COMM_EXEC, &task));
        bytes.extend(header(COMM, 0, &task));
        let mut lost = vec![0u8; 40];
        lost[8..16].copy_from_slice(&5u64.to_le_bytes());
        bytes.extend(header(LOST, 0, &lost));
        let mut got = Vec::new();
        for_each(&bytes, |_| {}, |r| got.push(r)).unwrap();
        assert_eq!(
            got,
            vec![
                Record::Sample(Sample {
                    pid: 7,
                    tid: 8,
                    time_ns: 12345,
                    kernel: false,
                    regs: Some([1, 2, 3]),
                    stack: &[9; 16]
                }),
                Record::Mmap { pid: 7, exec: true },
                Record::Fork { pid: 7, tid: 9 },
                Record::Exit { pid: 7, tid: 9 },
                Record::Exec { pid: 7 },
                Record::Other,
                Record::Lost(5),
            ]
        );
    }

    #[test]
    fn truncated_records_stop_the_walk_without_panicking() {
        let bytes = sample_bytes(7, 8, 1, [1, 2, 3], &[9; 16], 64);
        for cut in 0..bytes.len() {
            let mut n = 0;
            let r = for_each(&bytes[..cut], |_| {}, |_| n += 1);
            assert_eq!(n, 0);
            assert_eq!(r.is_err(), cut > 0);
        }
        // A size field claiming more stack than the record holds.
        let mut bad = bytes.clone();
        let at = 8 + 32 + 24;
        bad[at..at + 8].copy_from_slice(&4096u64.to_le_bytes());
        assert!(for_each(&bad, |_| {}, |_| {}).is_err());
    }
}
