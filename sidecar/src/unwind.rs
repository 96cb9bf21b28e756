//! Per-process unwinding with framehop: DWARF CFI from `.eh_frame`/`.eh_frame_hdr` of every
//! executable mapping, frame pointers where there is none. No I/O: the agent hands each process
//! its mappings as [`crate::modules::mapped`] reads them (framehop's own rule).

use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

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
    cache: CacheX86_64,
    mapped: Vec<Mapped>,
    dirty: bool,
    refreshed: Option<Instant>,
}

/// How often a process's maps are re-read at most when an address falls outside every module.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

fn section_info(elf: &ElfInfo) -> ExplicitModuleSectionInfo<Bytes> {
    let split =
        |s: &Option<(std::ops::Range<u64>, Bytes)>| (s.as_ref().map(|s| s.0.clone()), s.as_ref().map(|s| s.1.clone()));
    let (text_svma, text) = split(&elf.text);
    let (eh_frame_svma, eh_frame) = split(&elf.eh_frame);
    let (eh_frame_hdr_svma, eh_frame_hdr) = split(&elf.eh_frame_hdr);
    ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma,
        text,
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
            cache: CacheX86_64::new(),
            mapped: Vec::new(),
            dirty: true,
            refreshed: None,
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
        let mut frames =
            self.unwinder.iter_frames(ip, UnwindRegsX86_64::new(ip, sp, bp), &mut self.cache, &mut read_stack);
        let mut n = 0usize;
        loop {
            match frames.next() {
                Ok(Some(f)) => {
                    n += 1;
                    out.push(key_in(
                        mapped,
                        match f {
                            FrameAddress::InstructionPointer(_) => f.address(),
                            FrameAddress::ReturnAddress(_) => f.address_for_lookup(),
                        },
                    ));
                    if n > 512 {
                        break Outcome::Truncated;
                    }
                }
                Ok(None) => break Outcome::Complete,
                Err(_) if n <= 1 => break Outcome::Failed,
                Err(_) => break Outcome::Truncated,
            }
        }
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
        let text = &meta.elf.as_ref().unwrap().text.as_ref().unwrap().0;
        assert!(text.contains(&k.addr));
        assert!((0..registry.len() as u32).any(|i| registry.get(i).unwrap().name == "[vdso]"));
    }
}
