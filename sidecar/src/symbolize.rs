//! Symbolization off the sampling path: once per upload, each new (module, address) is resolved
//! with blazesym through the module's file (read via `/proc/<pid>/root`), then cached. Rust and
//! C++ names come demangled; what cannot be resolved is named `module+0xoffset`, never dropped.

use std::collections::BTreeMap;
use std::ops::Range;

// Keys here are hashed once per sample (whole stacks) or per frame: SipHash's DoS resistance buys
// nothing for our own data and costs several times more.
use ahash::AHashMap as HashMap;
use std::sync::Arc;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized};

use crate::modules::Registry;
use crate::unwind::FrameKey;

/// Names of one frame, innermost (inlined) first, as pprof's `Location.line` wants them: the
/// physical function alone, or with the functions inlined at that address when
/// [`Symbolizer::show_inlined`] is on.
pub type Names = Arc<[Arc<str>]>;

/// Entries kept at most; past that the cache starts over (bounded memory).
const MAX_CACHED: usize = 500_000;

pub struct Symbolizer {
    inner: blazesym::symbolize::Symbolizer,
    /// The sampler's own debug directories (`/usr/lib/debug`, `/lib/debug`).
    own_debug_dirs: Vec<PathBuf>,
    /// Per target root that has a `/usr/lib/debug` (identified by its device and inode): the
    /// directory, held open so it outlives the process, a symbolizer that searches it first, and
    /// the directories that one searches.
    in_root: HashMap<(u64, u64), (std::fs::File, blazesym::symbolize::Symbolizer, Vec<PathBuf>)>,
    /// Per module, the functions whose extent is known, by start address: (end, names). Any
    /// address inside one is named without asking blazesym again: a leaf frame's address is
    /// nearly unique per sample, its function is not.
    functions: HashMap<u32, BTreeMap<u64, (u64, Names)>>,
    /// Names of the frames looked up (not those named from a known function: leaf addresses
    /// would fill it).
    cache: HashMap<FrameKey, Names>,
    /// Per ELF file named from: the name perf would pick for each address with several C names
    /// (see [`preferred_aliases`]).
    aliases: HashMap<PathBuf, Arc<HashMap<u64, Arc<str>>>>,
    /// Per ELF file and target root: its debug file found by build ID, or none (asked again
    /// every interval otherwise: addresses nothing names stay unnamed).
    debug_files: HashMap<(PathBuf, Option<PathBuf>), Option<PathBuf>>,
    /// A symbolizer reading DWARF line tables for the functions inlined at each address; `None`:
    /// physical frames only.
    inlined: Option<blazesym::symbolize::Symbolizer>,
}

/// Target roots with debug directories kept at most (each holds a blazesym cache).
const MAX_ROOTS: usize = 32;

/// `/proc/<pid>/root` of a path opened through it.
fn target_root(path: &Path) -> Option<PathBuf> {
    let mut parts = path.components();
    let (root, proc_, pid, dir) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let is_pid = pid.as_os_str().to_str().is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    (root == std::path::Component::RootDir && proc_.as_os_str() == "proc" && is_pid && dir.as_os_str() == "root")
        .then(|| Path::new("/proc").join(pid).join("root"))
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

impl Symbolizer {
    pub fn new() -> Symbolizer {
        Symbolizer::with_own_debug_dirs(vec!["/usr/lib/debug".into(), "/lib/debug".into()])
    }

    /// A symbolizer whose own debug directories (searched after a target's) are `dirs`.
    pub fn with_own_debug_dirs(dirs: Vec<PathBuf>) -> Symbolizer {
        Symbolizer {
            inner: blazesym_with(&dirs),
            own_debug_dirs: dirs,
            in_root: HashMap::new(),
            functions: HashMap::new(),
            cache: HashMap::new(),
            aliases: HashMap::new(),
            debug_files: HashMap::new(),
            inlined: None,
        }
    }

    /// Also names the functions inlined at each address (from DWARF line tables, as `perf report`
    /// shows them), innermost first before the physical function. Costs a DWARF lookup per new
    /// address and the memory of the parsed line tables (BENCHMARKS.md, "Inlined frames").
    pub fn show_inlined(mut self, on: bool) -> Symbolizer {
        self.inlined = on.then(|| {
            blazesym::symbolize::Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .set_debug_dirs(Some(&self.own_debug_dirs))
                .build()
        });
        self
    }

    /// The symbolizer with the sampler's own debug directories, and those.
    fn own(&self) -> (&blazesym::symbolize::Symbolizer, &[PathBuf]) {
        (&self.inner, &self.own_debug_dirs)
    }

    /// The symbolizer for modules of the process whose root is `root`: one that looks for debug
    /// files (by build ID, then debug link) in the target's own `/usr/lib/debug` first — where an
    /// image with e.g. `libc6-dbg` has them — then in the sampler's.
    /// Returns it with the debug directories it searches, in order.
    fn for_root(&mut self, root: Option<&Path>) -> (&blazesym::symbolize::Symbolizer, &[PathBuf]) {
        let dir = root
            .and_then(|r| crate::procfs::resolve_in_root(r, Path::new("/usr/lib/debug")))
            .and_then(|d| std::fs::File::open(d).ok())
            .filter(|f| f.metadata().is_ok_and(|m| m.is_dir()));
        let Some(dir) = dir else { return self.own() };
        let Ok(m) = dir.metadata() else { return self.own() };
        let key = (m.dev(), m.ino());
        if !self.in_root.contains_key(&key) {
            if self.in_root.len() >= MAX_ROOTS {
                self.in_root.clear();
            }
            use std::os::fd::AsRawFd;
            // Searched through the open directory: it stays valid after the process exits, and
            // relative lookups under it stay in the target's filesystem.
            let mut dirs = vec![PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))];
            dirs.extend(self.own_debug_dirs.iter().cloned());
            let symbolizer = blazesym_with(&dirs);
            self.in_root.insert(key, (dir, symbolizer, dirs));
        }
        match self.in_root.get(&key) {
            Some((_, s, dirs)) => (s, dirs),
            None => self.own(),
        }
    }

    /// Frames looked up and functions known so far.
    pub fn cached(&self) -> usize {
        self.cache.len() + self.functions.values().map(BTreeMap::len).sum::<usize>()
    }

    /// The names of frame `f` if it was looked up or is inside a known function. Looked-up
    /// frames first: return addresses repeat in every stack, and a hash lookup is the cheaper.
    fn known(&self, f: &FrameKey) -> Option<&Names> {
        self.cache.get(f).or_else(|| {
            let (_, (end, names)) = self.functions.get(&f.module)?.range(..=f.addr).next_back()?;
            (f.addr < *end).then_some(names)
        })
    }

    /// Resolves every frame of `frames` not known yet.
    pub fn resolve<'a>(&mut self, registry: &Registry, frames: impl IntoIterator<Item = &'a FrameKey>) {
        if self.cached() > MAX_CACHED {
            self.cache.clear();
            self.functions.clear();
        }
        let mut todo: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for f in frames {
            if self.known(f).is_none() {
                todo.entry(f.module).or_default().push(f.addr);
            }
        }
        for (module, mut addrs) in todo {
            addrs.sort_unstable();
            addrs.dedup();
            let named = self.lookup(registry, module, &addrs);
            for (addr, (names, function)) in addrs.into_iter().zip(named) {
                if let Some(f) = function.filter(|f| f.contains(&addr)) {
                    self.functions.entry(module).or_default().insert(f.start, (f.end, Arc::clone(&names)));
                }
                self.cache.insert(FrameKey { module, addr }, names);
            }
        }
    }

    /// Names of `addrs` in `module`, each with the extent of the function they name all of.
    fn lookup(&mut self, registry: &Registry, module: u32, addrs: &[u64]) -> Vec<(Names, Option<Range<u64>>)> {
        let meta = registry.get(module);
        let fallback = |addr: u64| -> Names { Arc::from([fallback_name(registry, FrameKey { module, addr })]) };
        let Some(path) = meta.as_ref().and_then(|m| m.symbol_path()) else {
            // An image only in memory (the vDSO): its own symbol table, read when it was loaded.
            let elf = meta.as_ref().and_then(|m| m.elf.clone());
            return addrs
                .iter()
                .map(|&a| match elf.as_ref().and_then(|e| e.symbol(a)) {
                    Some(name) => (Arc::from([Arc::clone(name)]), None),
                    None => (fallback(a), None),
                })
                .collect();
        };
        // The symbol table first: it has the full, demangled path of every function
        // (`spanprof_demo::work::compute_route`), where DWARF of a release build
        // (`debug = "line-tables-only"`) names it `compute_route` only. DWARF (embedded, or
        // through a debug link such as libc6-dbg) names what the symbol table does not have.
        let root = meta.as_ref().and_then(|m| m.open_path.as_deref()).and_then(target_root);
        self.named_in(&path, root.as_deref(), addrs)
            .into_iter()
            .zip(addrs)
            .map(|(n, &addr)| n.unwrap_or_else(|| (fallback(addr), None)))
            .collect()
    }

    /// Names of `addrs` in the ELF file at `path` of a process whose root is `root`: the symbol
    /// table, then the symbol table of its debug file (found by build ID, the target's first, see
    /// [`Self::for_root`]), then DWARF, embedded or in a debug file; `None` where nothing names
    /// an address. A debug file's symbol table names what a stripped library does not export (as
    /// perf does) without DWARF, whose sections blazesym inflates and keeps in memory: ~12 MiB
    /// for libc6-dbg's libc.
    pub fn names_in(&mut self, path: &Path, root: Option<&Path>, addrs: &[u64]) -> Vec<Option<Names>> {
        self.named_in(path, root, addrs).into_iter().map(|n| n.map(|(names, _)| names)).collect()
    }

    /// [`Self::names_in`], each with the extent of the function its names hold for all of (with
    /// inlined calls shown, names differ within a function: none).
    fn named_in(&mut self, path: &Path, root: Option<&Path>, addrs: &[u64]) -> Vec<Option<Named>> {
        let mut names: Vec<Option<Named>> = self.symbol_names(path, addrs);
        let missing = |names: &[Option<Named>]| (0..addrs.len()).filter(|&i| names[i].is_none()).collect::<Vec<_>>();
        let mut todo = missing(&names);
        if !todo.is_empty()
            && let Some(debug_file) = self.debug_file(path, root)
        {
            let again: Vec<u64> = todo.iter().map(|&i| addrs[i]).collect();
            for (&i, n) in todo.iter().zip(self.symbol_names(&debug_file, &again)) {
                names[i] = n;
            }
            todo = missing(&names);
        }
        if !todo.is_empty() {
            let again: Vec<u64> = todo.iter().map(|&i| addrs[i]).collect();
            let with_debug = self.for_root(root).0;
            let named = each_symbol(with_debug, path, true, &again, |sym| {
                (Arc::from([Arc::from(sym.name.as_ref())]) as Names, extent(sym))
            });
            for (i, n) in todo.into_iter().zip(named) {
                names[i] = n;
            }
        }
        if let Some(inlined) = &self.inlined {
            for (names, calls) in names.iter_mut().zip(inlined_calls(inlined, path, addrs)) {
                if let Some((n, function)) = names.as_mut() {
                    *function = None;
                    if !calls.is_empty() {
                        // Innermost first; the physical function (named as above) last.
                        *n = calls.into_iter().rev().chain(n.iter().cloned()).collect();
                    }
                }
            }
        }
        names
    }
}

impl Symbolizer {
    /// [`debug_file_by_build_id`] in the directories of [`Self::for_root`], remembered.
    fn debug_file(&mut self, path: &Path, root: Option<&Path>) -> Option<PathBuf> {
        let key = (path.to_owned(), root.map(Path::to_owned));
        if let Some(found) = self.debug_files.get(&key) {
            return found.clone();
        }
        if self.debug_files.len() >= MAX_ALIAS_FILES {
            self.debug_files.clear();
        }
        let found = debug_file_by_build_id(path, self.for_root(root).1);
        self.debug_files.insert(key, found.clone());
        found
    }
}

/// The debug file of the ELF file at `path` by its build ID, `.build-id/<first byte>/<rest>.debug`
/// in the first of `dirs` that has it.
fn debug_file_by_build_id(path: &Path, dirs: &[PathBuf]) -> Option<PathBuf> {
    let id = blazesym::helper::read_elf_build_id(path).ok()??;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let (first, rest) = (hex.get(..2)?, hex.get(2..).filter(|r| !r.is_empty())?);
    dirs.iter().map(|d| d.join(".build-id").join(first).join(format!("{rest}.debug"))).find(|p| p.is_file())
}

fn blazesym_with(debug_dirs: &[PathBuf]) -> blazesym::symbolize::Symbolizer {
    blazesym::symbolize::Symbolizer::builder()
        // Physical frames only, as `perf --no-inline` shows them: inlined-call frames would
        // need code info (line tables), several times the cost per address.
        .enable_code_info(false)
        .enable_inlined_fns(false)
        .enable_demangling(true)
        .set_debug_dirs(Some(debug_dirs))
        .build()
}

impl Symbolizer {
    /// Names of `addrs` (virtual offsets) from the symbol tables of the ELF file at `path`, an
    /// alias named as perf names it; `None` where unknown.
    fn symbol_names(&mut self, path: &Path, addrs: &[u64]) -> Vec<Option<Named>> {
        if self.aliases.len() >= MAX_ALIAS_FILES {
            self.aliases.clear();
        }
        let aliases = Arc::clone(self.aliases.entry(path.to_owned()).or_insert_with(|| {
            let read = std::fs::File::open(path).ok().and_then(|f| preferred_aliases(&object::ReadCache::new(&f)));
            Arc::new(read.unwrap_or_default())
        }));
        each_symbol(&self.inner, path, false, addrs, |sym| {
            let name = aliases.get(&sym.addr).cloned().unwrap_or_else(|| Arc::from(sym.name.as_ref()));
            (Arc::from([name]) as Names, extent(sym))
        })
    }
}

/// Names of a frame, with the extent (virtual offsets) of the function they name all of.
type Named = (Names, Option<Range<u64>>);

/// Where the function `sym` names lies, when its size is known.
fn extent(sym: &blazesym::symbolize::Sym<'_>) -> Option<Range<u64>> {
    let size = sym.size.filter(|&s| s > 0)?;
    Some(sym.addr..sym.addr.checked_add(size as u64)?)
}

/// Files whose aliases (and debug files) are kept at most; past that the table starts over.
const MAX_ALIAS_FILES: usize = 256;

/// For each address where the symbol tables of an ELF image name one function several times
/// (glibc: `clone3` and `__clone3`; `poll`, weak, and `__poll`), the name perf shows, by its rules:
/// a sized symbol, then a non-weak one, then a global one, then the fewest leading underscores,
/// then the longest name. Only C names: which of several mangled aliases (functions the compiler
/// merged) is shown is left to the symbolizer, which demangles them. `None`: not a readable ELF.
fn preferred_aliases<'d, R: object::ReadRef<'d>>(data: R) -> Option<HashMap<u64, Arc<str>>> {
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(data).ok()?;
    let mut funcs: Vec<(u64, bool, bool, bool, &str)> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition())
        .filter_map(|s| Some((s.address(), s.size() > 0, !s.is_weak(), s.is_global(), s.name().ok()?)))
        .filter(|f| !f.4.is_empty())
        .collect();
    funcs.sort_unstable_by_key(|f| f.0);
    let rank = |f: &(u64, bool, bool, bool, &str)| {
        let underscores = f.4.bytes().take_while(|&b| b == b'_').count();
        (f.1, f.2, f.3, std::cmp::Reverse(underscores), f.4.len())
    };
    let mangled = |name: &str| name.starts_with("_Z") || name.starts_with("_R");
    let mut out = HashMap::new();
    for same in funcs.chunk_by(|a, b| a.0 == b.0) {
        let distinct = same.iter().any(|f| f.4 != same[0].4);
        if distinct
            && !same.iter().any(|f| mangled(f.4))
            && let Some(best) = same.iter().max_by_key(|f| rank(f))
        {
            out.insert(best.0, Arc::from(best.4));
        }
    }
    Some(out)
}

/// The functions inlined at each of `addrs` in the ELF file at `path`, outermost first (empty
/// where none is, or the file has no DWARF).
fn inlined_calls(symbolizer: &blazesym::symbolize::Symbolizer, path: &Path, addrs: &[u64]) -> Vec<Vec<Arc<str>>> {
    each_symbol(symbolizer, path, true, addrs, |sym| sym.inlined.iter().map(|f| Arc::from(f.name.as_ref())).collect())
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect()
}

/// `what` of the symbol at each of `addrs` (virtual offsets) in the ELF file at `path`; `None`
/// where no symbol is, or the file cannot be read (logged at debug level).
fn each_symbol<T: Clone>(
    symbolizer: &blazesym::symbolize::Symbolizer,
    path: &Path,
    debug_syms: bool,
    addrs: &[u64],
    what: impl Fn(&blazesym::symbolize::Sym<'_>) -> T,
) -> Vec<Option<T>> {
    let mut elf = Elf::new(path);
    elf.debug_syms = debug_syms;
    match symbolizer.symbolize(&Source::Elf(elf), Input::VirtOffset(addrs)) {
        Ok(syms) if syms.len() == addrs.len() => syms
            .into_iter()
            .map(|s| match s {
                Symbolized::Sym(sym) => Some(what(&sym)),
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

impl Symbolizer {
    /// The names of a resolved frame (resolve first).
    pub fn names(&self, registry: &Registry, f: FrameKey) -> Names {
        match self.known(&f) {
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
            let off = m.elf.as_ref().and_then(|e| e.file_offset(f.addr)).unwrap_or(f.addr);
            Arc::from(format!("{}+0x{off:x}", m.name))
        }
        None => Arc::from(format!("0x{:x}", f.addr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::Process;

    /// The frame key of address `avma` of this very process, through the unwinder's own mapping
    /// of addresses to modules.
    fn own_frame(registry: &Registry, avma: u64) -> FrameKey {
        let mut p = Process::new();
        p.set_modules(&crate::modules::mapped(std::process::id(), registry).unwrap());
        let mut frames = Vec::new();
        let _ = p.unwind([0, 0x1000, avma], &[0u8; 64], &mut frames);
        frames[0]
    }

    #[inline(never)]
    fn a_distinctly_named_function_for_symbolization(x: u64) -> u64 {
        std::hint::black_box(x.wrapping_mul(0x9e37_79b9).rotate_left(7))
    }

    #[test]
    fn resolves_own_functions_demangled_and_falls_back_to_offsets() {
        let registry = Registry::default();
        let here = a_distinctly_named_function_for_symbolization as *const () as u64;
        assert_eq!(a_distinctly_named_function_for_symbolization(1), a_distinctly_named_function_for_symbolization(1));
        let key = own_frame(&registry, here + 1);
        assert_ne!(key.module, FrameKey::NO_MODULE);
        let mut s = Symbolizer::new();
        let unknown = FrameKey { module: key.module, addr: 0x7fff_ffff_0000 };
        s.resolve(&registry, [&key, &unknown, &FrameKey::KERNEL]);
        let names = s.names(&registry, key);
        let leaf = names.last().unwrap();
        assert!(leaf.ends_with("a_distinctly_named_function_for_symbolization"), "{names:?}");
        assert!(!leaf.contains("::h"), "hash not stripped: {leaf}");
        let name = registry.get(key.module).unwrap().name.clone();
        assert!(s.names(&registry, unknown)[0].starts_with(&format!("{name}+0x")));
        assert_eq!(&*s.names(&registry, FrameKey::KERNEL)[0], "[kernel]");
        assert_eq!(&*fallback_name(&registry, FrameKey { module: FrameKey::NO_MODULE, addr: 0x42 }), "0x42");
        assert!(s.cached() >= 2);
    }

    /// A leaf frame's address is nearly unique per sample: once one address of a function is
    /// named, every other address in it is named from the function's extent, not looked up.
    #[test]
    fn other_addresses_of_a_named_function_are_named_without_a_lookup() {
        let registry = Registry::default();
        let here = a_distinctly_named_function_for_symbolization as *const () as u64;
        let key = own_frame(&registry, here + 1);
        let mut s = Symbolizer::new();
        s.resolve(&registry, [&key]);
        let cached = s.cached();
        let other = FrameKey { module: key.module, addr: key.addr + 2 };
        assert!(s.names(&registry, other)[0].ends_with("a_distinctly_named_function_for_symbolization"));
        s.resolve(&registry, [&other]);
        assert_eq!(s.cached(), cached, "nothing new to cache");
        // Past the function's end: not named from it.
        let far = FrameKey { module: key.module, addr: key.addr + (1 << 20) };
        assert!(!s.names(&registry, far)[0].ends_with("a_distinctly_named_function_for_symbolization"));
    }

    #[inline(always)]
    fn an_inlined_helper_for_symbolization(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(0x9e37_79b9).rotate_left(13)
    }

    #[inline(never)]
    fn calls_an_inlined_helper_for_symbolization(x: u64) -> u64 {
        an_inlined_helper_for_symbolization(x) ^ an_inlined_helper_for_symbolization(x + 1)
    }

    #[test]
    fn inlined_functions_are_named_innermost_first_when_asked() {
        let registry = Registry::default();
        let here = calls_an_inlined_helper_for_symbolization as *const () as u64;
        assert_ne!(calls_an_inlined_helper_for_symbolization(1), 0);
        let start = own_frame(&registry, here);
        let keys: Vec<FrameKey> = (0..256).map(|d| FrameKey { module: start.module, addr: start.addr + d }).collect();
        let mut plain = Symbolizer::new();
        plain.resolve(&registry, &keys);
        assert!(keys.iter().all(|k| plain.names(&registry, *k).len() == 1), "physical frames only by default");
        let mut s = Symbolizer::new().show_inlined(true);
        s.resolve(&registry, &keys);
        let names = keys
            .iter()
            .map(|k| s.names(&registry, *k))
            .find(|n| n.len() > 1)
            .expect("an address of the inlined helper named with it");
        assert!(names[0].ends_with("an_inlined_helper_for_symbolization"), "{names:?}");
        assert!(names.last().unwrap().ends_with("calls_an_inlined_helper_for_symbolization"), "{names:?}");
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn vdso_frames_are_named_from_its_own_symbols() {
        let registry = Registry::default();
        let mut p = Process::new();
        p.set_modules(&crate::modules::mapped(std::process::id(), &registry).unwrap());
        let vdso = (0..registry.len() as u32)
            .filter_map(|i| registry.get(i))
            .find(|m| m.name == "[vdso]")
            .expect("a vDSO mapping");
        let elf = vdso.elf.as_ref().expect("the vDSO image");
        let (range, name) =
            elf.symbols.iter().find(|(_, n)| &**n == "clock_gettime").expect("clock_gettime in the vDSO's symbols");
        assert_eq!(&**name, "clock_gettime", "the plain name, not __vdso_clock_gettime");
        let key = FrameKey { module: vdso.id, addr: range.start + 1 };
        let mut s = Symbolizer::new();
        s.resolve(&registry, [&key]);
        assert_eq!(&*s.names(&registry, key)[0], "clock_gettime");
    }

    /// The libc this test runs on, its debug file (the host's libc6-dbg) and its build ID in hex.
    /// Skips nothing: a machine without libc6-dbg fails, with the package to install.
    fn libc_and_its_debug_file() -> (String, PathBuf, String) {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("/libc.so"))
            .expect("this test links glibc")
            .to_owned();
        let id = blazesym::helper::read_elf_build_id(Path::new(&libc)).unwrap().expect("libc has a build ID");
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let debug = PathBuf::from(format!("/usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]));
        assert!(debug.exists(), "{} missing: install libc6-dbg (scripts/test does)", debug.display());
        (libc, debug, hex)
    }

    /// The address (virtual offset) of symbol `name` in the ELF file at `path`.
    fn address_of(path: &Path, name: &str) -> u64 {
        let inspector = blazesym::inspect::Inspector::new();
        let found = inspector
            .lookup(&blazesym::inspect::source::Source::Elf(blazesym::inspect::source::Elf::new(path)), &[name])
            .unwrap();
        found[0].first().unwrap_or_else(|| panic!("{name} in {}", path.display())).addr
    }

    /// glibc names several functions twice; the sampler shows the name perf shows.
    #[test]
    fn aliases_are_named_as_perf_names_them() {
        let (libc, debug, _) = libc_and_its_debug_file();
        let mut s = Symbolizer::new();
        let name = |s: &mut Symbolizer, addr: u64| {
            s.names_in(Path::new(&libc), None, &[addr])[0].clone().unwrap()[0].to_string()
        };
        // Two local names, from the debug file's symbol table: the one with fewer underscores.
        assert_eq!(name(&mut s, address_of(&debug, "__clone3") + 4), "clone3");
        // An exported function, from libc's own table: the global name over the weak alias.
        assert_eq!(name(&mut s, address_of(Path::new(&libc), "poll") + 4), "__poll");
    }

    /// The debug file is placed only inside a fake target root, so naming glibc's internals
    /// proves it was found there.
    #[test]
    fn debug_files_are_found_inside_the_targets_root() {
        let (libc, debug, hex) = libc_and_its_debug_file();

        let root = tempfile::tempdir().unwrap();
        let lib_in_root = root.path().join("lib/libc.so.6");
        std::fs::create_dir_all(lib_in_root.parent().unwrap()).unwrap();
        std::fs::copy(&libc, &lib_in_root).unwrap();
        let debug_in_root = root.path().join(format!("usr/lib/debug/.build-id/{}/{}.debug", &hex[..2], &hex[2..]));
        std::fs::create_dir_all(debug_in_root.parent().unwrap()).unwrap();
        std::fs::copy(&debug, &debug_in_root).unwrap();

        let addr = address_of(&debug, "start_thread");

        // The sampler has no debug files of its own here.
        let mut s = Symbolizer::with_own_debug_dirs(Vec::new());
        assert_eq!(s.names_in(&lib_in_root, None, &[addr + 4]), vec![None], "not named without the debug file");
        let names = s.names_in(&lib_in_root, Some(root.path()), &[addr + 4]);
        assert_eq!(names[0].as_deref().map(|n| n[0].to_string()), Some("start_thread".to_owned()));
        // And from the sampler's own directories when the target has none.
        let mut s = Symbolizer::with_own_debug_dirs(vec!["/usr/lib/debug".into()]);
        let names = s.names_in(&lib_in_root, Some(&root.path().join("no-such-root")), &[addr + 4]);
        assert_eq!(names[0].as_deref().map(|n| n[0].to_string()), Some("start_thread".to_owned()));
    }
}
