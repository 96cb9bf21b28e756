//! Per-process unwinding with framehop: DWARF CFI from `.eh_frame`/`.eh_frame_hdr` of every
//! executable mapping, frame pointers where there is none. No I/O: the agent hands each process
//! its mappings as [`crate::modules::mapped`] reads them (framehop's own rule).

use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{CacheStats, ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use crate::modules::{Bytes, ElfInfo, Mapping};

/// One frame, as aggregated before symbolization: a module and an address in its own address
/// space (svma, the lookup address of a return address: return address − 1), or a raw address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameKey {
    pub module: u32,
    pub addr: u64,
}

impl FrameKey {
    /// `module` of an address in no known module.
    pub const NO_MODULE: u32 = u32::MAX;
    /// The leaf of a sample taken in kernel mode.
    pub const KERNEL: FrameKey = FrameKey { module: u32::MAX - 1, addr: 0 };
}

/// How an unwind went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the end of the stack.
    Complete,
    /// Stopped early (framehop gave up after these frames, or the stack copy ended).
    Truncated,
    /// Not even one step beyond the leaf.
    Failed,
}

struct Mapped {
    range: std::ops::Range<u64>,
    module: u32,
    bias: u64,
}

/// A process's modules and unwinder.
pub struct Process {
    unwinder: UnwinderX86_64<Bytes>,
    /// framehop's rule cache is direct-mapped with 509 slots (`address % 509`); a tokio + axum
    /// service's stacks touch a few thousand return addresses, so one such cache misses about one
    /// lookup in six, each miss a DWARF CFI evaluation. [`RuleCaches`] picks one of several caches
    /// by the address's next digits, which makes them one direct-mapped cache of
    /// `509 × RULE_CACHES` slots.
    caches: RuleCaches,
    mapped: Vec<Mapped>,
    dirty: bool,
    refreshed: Option<Instant>,
    /// The rule cache's counts when last reported ([`Process::rule_cache_since_last`]).
    reported: CacheStats,
}

/// Rule-cache lookups of the unwinder: a miss means DWARF CFI evaluated for an address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCacheCounts {
    pub hits: u64,
    /// Misses on an address seen before whose rule was dropped because the modules were reloaded.
    pub stale: u64,
    /// Other misses: a new address, or its slot held another address.
    pub other: u64,
}

/// How often a process's maps are re-read at most when an address falls outside every module.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

fn section_info(elf: &ElfInfo) -> ExplicitModuleSectionInfo<Bytes> {
    let split =
        |s: &Option<(std::ops::Range<u64>, Bytes)>| (s.as_ref().map(|s| s.0.clone()), s.as_ref().map(|s| s.1.clone()));
    let (eh_frame_svma, eh_frame) = split(&elf.eh_frame);
    let (eh_frame_hdr_svma, eh_frame_hdr) = split(&elf.eh_frame_hdr);
    ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: elf.text.clone(),
        got_svma: elf.got.clone(),
        eh_frame_svma,
        eh_frame,
        eh_frame_hdr_svma,
        eh_frame_hdr,
        debug_frame: elf.debug_frame.clone(),
        ..Default::default()
    }
}

impl Default for Process {
    fn default() -> Self {
        Process::new()
    }
}

impl Process {
    pub fn new() -> Process {
        Process {
            unwinder: UnwinderX86_64::new(),
            caches: RuleCaches::new(),
            mapped: Vec::new(),
            dirty: true,
            refreshed: None,
            reported: CacheStats::default(),
        }
    }

    /// The process mapped or unmapped code: re-read its maps before the next unwind.
    pub fn invalidate(&mut self) {
        self.dirty = true;
    }

    /// Whether the process's mappings should be read again before unwinding a sample at `ip`:
    /// they changed (or were never read), or `ip` is in no known module; at most once per
    /// [`REFRESH_EVERY`].
    pub fn wants_modules(&self, ip: u64) -> bool {
        // The clock last: most samples fall in a known module of an unchanged process.
        (self.dirty || self.module_of(ip).is_none()) && self.refreshed.is_none_or(|t| t.elapsed() >= REFRESH_EVERY)
    }

    /// The mappings could not be read: keep the modules known, ask again after [`REFRESH_EVERY`].
    pub fn keep_modules(&mut self) {
        self.refreshed = Some(Instant::now());
        self.dirty = false;
    }

    /// Rebuilds the unwinder from the process's mappings.
    pub fn set_modules(&mut self, mappings: &[Mapping]) {
        self.keep_modules();
        let mut unwinder = UnwinderX86_64::new();
        let mut mapped = Vec::with_capacity(mappings.len());
        for m in mappings {
            if m.unwindable
                && let Some(elf) = m.module.elf.as_ref()
            {
                unwinder.add_module(Module::new(m.module.name.clone(), m.range.clone(), m.bias, section_info(elf)));
            }
            mapped.push(Mapped { range: m.range.clone(), module: m.module.id, bias: m.bias });
        }
        mapped.sort_by_key(|m| m.range.start);
        self.unwinder = unwinder;
        self.mapped = mapped;
    }

    /// Rule-cache lookups since the last call.
    pub fn rule_cache_since_last(&mut self) -> RuleCacheCounts {
        let (now, was) = (self.caches.stats(), std::mem::replace(&mut self.reported, self.caches.stats()));
        RuleCacheCounts {
            hits: now.hit_count - was.hit_count,
            stale: now.miss_wrong_modules_count - was.miss_wrong_modules_count,
            other: (now.miss_empty_slot_count + now.miss_wrong_address_count)
                - (was.miss_empty_slot_count + was.miss_wrong_address_count),
        }
    }

    fn module_of(&self, avma: u64) -> Option<&Mapped> {
        module_of(&self.mapped, avma)
    }

    #[cfg(test)]
    fn key(&self, lookup_avma: u64) -> FrameKey {
        key_in(&self.mapped, lookup_avma)
    }

    /// Unwinds one sample from its registers `[bp, sp, ip]` and user-stack copy; pushes the
    /// frames leaf first into `out`.
    pub fn unwind(&mut self, regs: [u64; 3], stack: &[u8], out: &mut Vec<FrameKey>) -> Outcome {
        let [bp, sp, ip] = regs;
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let off = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let word = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(word.try_into().map_err(|_| ())?))
        };
        let mapped = &self.mapped;
        let mut regs = UnwindRegsX86_64::new(ip, sp, bp);
        let mut frame = FrameAddress::InstructionPointer(ip);
        let mut n = 0usize;
        loop {
            n += 1;
            let lookup = frame.address_for_lookup();
            out.push(key_in(mapped, lookup));
            if n > 512 {
                break Outcome::Truncated;
            }
            let cache = self.caches.for_address(lookup);
            match self.unwinder.unwind_frame(frame, &mut regs, cache, &mut read_stack) {
                Ok(Some(ra)) => match FrameAddress::from_return_address(ra) {
                    Some(next) => frame = next,
                    None if n <= 1 => break Outcome::Failed,
                    None => break Outcome::Truncated,
                },
                Ok(None) => break Outcome::Complete,
                Err(_) if n <= 1 => break Outcome::Failed,
                Err(_) => break Outcome::Truncated,
            }
        }
    }
}

/// How many framehop rule caches a process has (see [`Process`]'s `caches`).
const RULE_CACHES: usize = 16;
/// framehop's slots per rule cache (its `CACHE_ENTRY_COUNT`; a slot is `address % 509`).
const RULE_CACHE_SLOTS: u64 = 509;

/// Several framehop rule caches used as one larger direct-mapped cache: an address always goes
/// to the same cache (chosen by `address / 509`), and within it to framehop's slot `address % 509`.
struct RuleCaches(Box<[CacheX86_64]>);

impl RuleCaches {
    fn new() -> RuleCaches {
        RuleCaches((0..RULE_CACHES).map(|_| CacheX86_64::new()).collect())
    }

    fn for_address(&mut self, lookup_address: u64) -> &mut CacheX86_64 {
        // The modulo keeps the index in range, so the indexing cannot panic.
        let i = (lookup_address / RULE_CACHE_SLOTS) as usize % self.0.len();
        &mut self.0[i]
    }

    fn stats(&self) -> CacheStats {
        self.0.iter().map(CacheX86_64::stats).fold(CacheStats::default(), |a, b| CacheStats {
            hit_count: a.hit_count + b.hit_count,
            miss_empty_slot_count: a.miss_empty_slot_count + b.miss_empty_slot_count,
            miss_wrong_modules_count: a.miss_wrong_modules_count + b.miss_wrong_modules_count,
            miss_wrong_address_count: a.miss_wrong_address_count + b.miss_wrong_address_count,
        })
    }
}

/// The mapping that holds `avma` (`mapped` is sorted by start address).
fn module_of(mapped: &[Mapped], avma: u64) -> Option<&Mapped> {
    let i = mapped.partition_point(|m| m.range.start <= avma);
    mapped.get(i.checked_sub(1)?).filter(|m| m.range.contains(&avma))
}

/// The frame key of a lookup address: module and module-relative address.
fn key_in(mapped: &[Mapped], lookup_avma: u64) -> FrameKey {
    match module_of(mapped, lookup_avma) {
        Some(m) => FrameKey { module: m.module, addr: lookup_avma.wrapping_sub(m.bias) },
        None => FrameKey { module: FrameKey::NO_MODULE, addr: lookup_avma },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_addresses_into_module_space() {
        let mut p = Process::new();
        p.mapped = vec![
            Mapped { range: 0x1000..0x2000, module: 3, bias: 0x800 },
            Mapped { range: 0x5000..0x6000, module: 4, bias: 0x5000 },
        ];
        assert_eq!(p.key(0x1010), FrameKey { module: 3, addr: 0x810 });
        assert_eq!(p.key(0x5fff), FrameKey { module: 4, addr: 0xfff });
        assert_eq!(p.key(0x2000), FrameKey { module: FrameKey::NO_MODULE, addr: 0x2000 });
        assert_eq!(p.key(0x10), FrameKey { module: FrameKey::NO_MODULE, addr: 0x10 });
    }

    #[test]
    fn its_own_mappings_give_the_own_binary_and_the_vdso() {
        let registry = crate::modules::Registry::default();
        let mut p = Process::new();
        assert!(p.wants_modules(0));
        p.set_modules(&crate::modules::mapped(std::process::id(), &registry).unwrap());
        assert!(!p.wants_modules(0), "asked again at most once a second");
        let here = its_own_mappings_give_the_own_binary_and_the_vdso as *const () as u64;
        let k = p.key(here);
        assert_ne!(k.module, FrameKey::NO_MODULE);
        let meta = registry.get(k.module).unwrap();
        assert!(meta.elf.is_some());
        let text = meta.elf.as_ref().unwrap().text.as_ref().unwrap();
        assert!(text.contains(&k.addr));
        assert!((0..registry.len() as u32).any(|i| registry.get(i).unwrap().name == "[vdso]"));
    }
}
