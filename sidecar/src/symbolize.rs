//! Symbolization off the sampling path: once per upload, each new (module, address) is resolved
//! with blazesym through the module's file (read via `/proc/<pid>/root`), then cached. Rust and
//! C++ names come demangled; what cannot be resolved is named `module+0xoffset`, never dropped.

use std::collections::BTreeMap;

// Keys here are hashed once per sample (whole stacks) or per frame: SipHash's DoS resistance buys
// nothing for our own data and costs several times more.
use ahash::AHashMap as HashMap;
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized};

use crate::modules::Registry;
use crate::unwind::FrameKey;

/// Names of one frame, innermost (inlined) first, as pprof's `Location.line` wants them (one
/// name today: physical frames only).
pub type Names = Arc<[Arc<str>]>;

/// Entries kept at most; past that the cache starts over (bounded memory).
const MAX_CACHED: usize = 500_000;

pub struct Symbolizer {
    inner: blazesym::symbolize::Symbolizer,
    cache: HashMap<FrameKey, Names>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

impl Symbolizer {
    pub fn new() -> Symbolizer {
        let inner = blazesym::symbolize::Symbolizer::builder()
            // Physical frames only, as `perf --no-inline` shows them: inlined-call frames would
            // need code info (line tables), several times the cost per address.
            .enable_code_info(false)
            .enable_inlined_fns(false)
            .enable_demangling(true)
            .build();
        Symbolizer {
            inner,
            cache: HashMap::new(),
        }
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Resolves every frame of `frames` not cached yet.
    pub fn resolve<'a>(
        &mut self,
        registry: &Registry,
        frames: impl IntoIterator<Item = &'a FrameKey>,
    ) {
        if self.cache.len() > MAX_CACHED {
            self.cache.clear();
        }
        let mut todo: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for f in frames {
            if !self.cache.contains_key(f) {
                todo.entry(f.module).or_default().push(f.addr);
            }
        }
        for (module, mut addrs) in todo {
            addrs.sort_unstable();
            addrs.dedup();
            let names = self.lookup(registry, module, &addrs);
            for (addr, names) in addrs.into_iter().zip(names) {
                self.cache.insert(FrameKey { module, addr }, names);
            }
        }
    }

    fn lookup(&self, registry: &Registry, module: u32, addrs: &[u64]) -> Vec<Names> {
        let meta = registry.get(module);
        let fallback = |addr: u64| -> Names {
            Arc::from([fallback_name(registry, FrameKey { module, addr })])
        };
        let Some(path) = meta.as_ref().and_then(|m| m.symbol_path()) else {
            // An image only in memory (the vDSO): its own symbol table, read when it was loaded.
            let elf = meta.as_ref().and_then(|m| m.elf.clone());
            return addrs
                .iter()
                .map(|&a| match elf.as_ref().and_then(|e| e.symbol(a)) {
                    Some(name) => Arc::from([Arc::clone(name)]),
                    None => fallback(a),
                })
                .collect();
        };
        // The symbol table first: it has the full, demangled path of every function
        // (`spanprof_demo::work::compute_route`), where DWARF of a release build
        // (`debug = "line-tables-only"`) names it `compute_route` only. DWARF (embedded, or
        // through a debug link such as libc6-dbg) names what the symbol table does not have.
        let mut names: Vec<Option<Names>> = self.symbolize(&path, false, addrs);
        let missing: Vec<usize> = (0..addrs.len()).filter(|&i| names[i].is_none()).collect();
        if !missing.is_empty() {
            let again: Vec<u64> = missing.iter().map(|&i| addrs[i]).collect();
            for (i, n) in missing.into_iter().zip(self.symbolize(&path, true, &again)) {
                names[i] = n;
            }
        }
        names
            .into_iter()
            .zip(addrs)
            .map(|(n, &addr)| n.unwrap_or_else(|| fallback(addr)))
            .collect()
    }

    /// Names of `addrs` (file offsets) in the ELF file at `path`; `None` where unknown.
    fn symbolize(
        &self,
        path: &std::path::Path,
        debug_syms: bool,
        addrs: &[u64],
    ) -> Vec<Option<Names>> {
        let mut elf = Elf::new(path);
        elf.debug_syms = debug_syms;
        match self
            .inner
            .symbolize(&Source::Elf(elf), Input::VirtOffset(addrs))
        {
            Ok(syms) if syms.len() == addrs.len() => syms
                .into_iter()
                .map(|s| match s {
                    Symbolized::Sym(sym) => Some(Arc::from([Arc::from(sym.name.as_ref())])),
                    Symbolized::Unknown(_) => None,
                })
                .collect(),
            Ok(_) => vec![None; addrs.len()],
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "symbolization failed");
                vec![None; addrs.len()]
            }
        }
    }

    /// The names of a resolved frame (resolve first).
    pub fn names(&self, registry: &Registry, f: FrameKey) -> Names {
        match self.cache.get(&f) {
            Some(n) => Arc::clone(n),
            None => Arc::from([fallback_name(registry, f)]),
        }
    }
}

/// `module+0xfileoffset` for frames without a symbol; `[kernel]`; `0xaddr` outside any module.
pub fn fallback_name(registry: &Registry, f: FrameKey) -> Arc<str> {
    if f == FrameKey::KERNEL {
        return Arc::from("[kernel]");
    }
    if f.module == FrameKey::NO_MODULE {
        return Arc::from(format!("0x{:x}", f.addr));
    }
    match registry.get(f.module) {
        Some(m) => {
            let off = m
                .elf
                .as_ref()
                .and_then(|e| e.file_offset(f.addr))
                .unwrap_or(f.addr);
            Arc::from(format!("{}+0x{off:x}", m.name))
        }
        None => Arc::from(format!("0x{:x}", f.addr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::Process;

    #[inline(never)]
    fn a_distinctly_named_function_for_symbolization(x: u64) -> u64 {
        std::hint::black_box(x.wrapping_mul(0x9e37_79b9).rotate_left(7))
    }

    #[test]
    fn resolves_own_functions_demangled_and_falls_back_to_offsets() {
        let registry = Registry::default();
        let mut p = Process::new(std::process::id());
        p.refresh(&registry).unwrap();
        let here = a_distinctly_named_function_for_symbolization as *const () as u64;
        assert_eq!(
            a_distinctly_named_function_for_symbolization(1),
            a_distinctly_named_function_for_symbolization(1)
        );
        // Through the unwinder's own mapping of addresses to modules.
        let mut frames = Vec::new();
        let stack = [0u8; 64];
        let _ = p.unwind(&registry, [0, 0x1000, here + 1], &stack, &mut frames);
        let key = frames[0];
        assert_ne!(key.module, FrameKey::NO_MODULE);
        let mut s = Symbolizer::new();
        let unknown = FrameKey {
            module: key.module,
            addr: 0x7fff_ffff_0000,
        };
        s.resolve(&registry, [&key, &unknown, &FrameKey::KERNEL]);
        let names = s.names(&registry, key);
        let leaf = names.last().unwrap();
        assert!(
            leaf.ends_with("a_distinctly_named_function_for_symbolization"),
            "{names:?}"
        );
        assert!(!leaf.contains("::h"), "hash not stripped: {leaf}");
        let name = registry.get(key.module).unwrap().name.clone();
        assert!(s.names(&registry, unknown)[0].starts_with(&format!("{name}+0x")));
        assert_eq!(&*s.names(&registry, FrameKey::KERNEL)[0], "[kernel]");
        assert_eq!(
            &*fallback_name(
                &registry,
                FrameKey {
                    module: FrameKey::NO_MODULE,
                    addr: 0x42
                }
            ),
            "0x42"
        );
        assert!(s.cached() >= 2);
    }

    #[test]
    fn vdso_frames_are_named_from_its_own_symbols() {
        let registry = Registry::default();
        let mut p = Process::new(std::process::id());
        p.refresh(&registry).unwrap();
        let vdso = (0..registry.len() as u32)
            .filter_map(|i| registry.get(i))
            .find(|m| m.name == "[vdso]")
            .expect("a vDSO mapping");
        let elf = vdso.elf.as_ref().expect("the vDSO image");
        let (range, name) = elf
            .symbols
            .iter()
            .find(|(_, n)| &**n == "clock_gettime")
            .expect("clock_gettime in the vDSO's symbols");
        assert_eq!(
            &**name, "clock_gettime",
            "the plain name, not __vdso_clock_gettime"
        );
        let key = FrameKey {
            module: vdso.id,
            addr: range.start + 1,
        };
        let mut s = Symbolizer::new();
        s.resolve(&registry, [&key]);
        assert_eq!(&*s.names(&registry, key)[0], "clock_gettime");
    }
}
