//! Executable modules (ELF files and the vDSO): a process's executable mappings read from
//! `/proc/<pid>/maps` with their files loaded once (through `/proc/<pid>/root`), their unwind
//! sections for framehop, the load-bias arithmetic, and a registry shared with the symbolizer.
//! All the file and `/proc` reading of unwinding happens here; the unwinder is handed the result.

use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SegmentFlags};

use crate::error::{Error, Result};
use crate::procfs;

/// Section bytes shared between every process that maps the module.
#[derive(Clone, Debug, Default)]
pub struct Bytes(pub Arc<[u8]>);

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// A loadable segment: `p_vaddr`, `p_offset`, `p_filesz`, executable or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub exec: bool,
}

/// What the unwinder needs of an ELF file.
#[derive(Clone, Debug, Default)]
pub struct ElfInfo {
    pub segments: Vec<Segment>,
    /// Where `.text` is (svma): CFI may encode addresses relative to it. Its bytes are not kept:
    /// framehop analyses instructions only for Mach-O and PE images, never for ELF.
    pub text: Option<Range<u64>>,
    pub eh_frame: Option<(Range<u64>, Bytes)>,
    pub eh_frame_hdr: Option<(Range<u64>, Bytes)>,
    /// DWARF CFI outside `.eh_frame`: Go binaries have only this (zlib-compressed by default).
    pub debug_frame: Option<Bytes>,
    pub got: Option<Range<u64>>,
    /// Function symbols by address (svma), sorted: kept only for images that exist in memory
    /// alone (the vDSO), which the symbolizer cannot open as a file.
    pub symbols: Vec<(Range<u64>, Arc<str>)>,
}

/// A `.debug_frame` larger than this (uncompressed) is ignored.
const MAX_DEBUG_FRAME_BYTES: u64 = 64 << 20;

fn parse<'d, R: object::ReadRef<'d>>(data: R, path: &Path) -> Result<ElfInfo> {
    let bad = |e: object::Error| Error::Elf { path: path.to_owned(), message: e.to_string() };
    let file = object::File::parse(data).map_err(bad)?;
    let range = |name: &str| file.section_by_name(name).map(|s| s.address()..s.address() + s.size());
    let section = |name: &str| -> Result<Option<(Range<u64>, Bytes)>> {
        let Some(s) = file.section_by_name(name) else {
            return Ok(None);
        };
        Ok(Some((s.address()..s.address() + s.size(), Bytes(Arc::from(s.data().map_err(bad)?)))))
    };
    let segments = file
        .segments()
        .filter_map(|s| {
            let (offset, filesz) = s.file_range();
            let exec = matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
            Some(Segment { vaddr: s.address(), offset, filesz, exec }).filter(|s| s.filesz > 0)
        })
        .collect();
    // Only where `.eh_frame` is missing: a C or Rust binary built with debug info has both.
    let debug_frame = match file.section_by_name(".eh_frame") {
        Some(_) => None,
        None => file.section_by_name(".debug_frame").and_then(|s| debug_frame(&s)),
    };
    Ok(ElfInfo {
        segments,
        text: range(".text"),
        eh_frame: section(".eh_frame")?,
        eh_frame_hdr: section(".eh_frame_hdr")?,
        debug_frame,
        symbols: Vec::new(),
        got: range(".got"),
    })
}

/// The contents of a `.debug_frame` section, inflated when zlib-compressed (`SHF_COMPRESSED`, as
/// Go writes it); `None` when unreadable, in another compression or too large.
fn debug_frame<'d, 'f, R: object::ReadRef<'d>>(s: &object::Section<'d, 'f, R>) -> Option<Bytes> {
    use std::io::Read;
    let c = s.compressed_data().ok()?;
    if c.uncompressed_size > MAX_DEBUG_FRAME_BYTES {
        return None;
    }
    match c.format {
        object::CompressionFormat::None => Some(Bytes(Arc::from(c.data))),
        object::CompressionFormat::Zlib => {
            let mut out = Vec::with_capacity(c.uncompressed_size as usize);
            flate2::read::ZlibDecoder::new(c.data).take(c.uncompressed_size).read_to_end(&mut out).ok()?;
            Some(Bytes(Arc::from(out)))
        }
        _ => None,
    }
}

/// Reads the unwind sections of the ELF file at `path`, section by section.
pub fn load_elf(file: &std::fs::File, path: &Path) -> Result<ElfInfo> {
    parse(&object::ReadCache::new(file), path)
}

/// Parses an ELF image held in memory (the vDSO), with its function symbols.
pub fn load_elf_bytes(bytes: &[u8], name: &Path) -> Result<ElfInfo> {
    let mut info = parse(bytes, name)?;
    if let Ok(file) = object::File::parse(bytes) {
        let mut symbols: Vec<(Range<u64>, Arc<str>)> = file
            .dynamic_symbols()
            .chain(file.symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
            .filter_map(|s| Some((s.address()..s.address() + s.size(), Arc::from(s.name().ok()?))))
            .collect();
        // The vDSO exports each function twice (`clock_gettime` and `__vdso_clock_gettime`):
        // keep the plain name.
        symbols.sort_by_key(|(range, name)| (range.start, name.starts_with("__")));
        symbols.dedup_by(|later, first| later.0.start == first.0.start);
        info.symbols = symbols;
    }
    Ok(info)
}

impl ElfInfo {
    /// The function symbol at `svma`, for in-memory images (see [`ElfInfo::symbols`]).
    pub fn symbol(&self, svma: u64) -> Option<&Arc<str>> {
        let i = self.symbols.partition_point(|(r, _)| r.start <= svma).checked_sub(1)?;
        let (range, name) = &self.symbols[i];
        range.contains(&svma).then_some(name)
    }

    /// The load bias (`avma - svma`) of a mapping of this file at `map_start` with file offset
    /// `map_offset`. The segment is the one whose page-aligned file range holds `map_offset`,
    /// executable first: a Rust binary's executable segment starts at a file offset that is not
    /// page aligned while the mapping's is, so the arithmetic must use that segment's own
    /// `p_vaddr`/`p_offset` (`svma = p_vaddr + (map_offset - p_offset)`).
    pub fn bias(&self, map_start: u64, map_offset: u64, exec_mapping: bool, page: u64) -> Option<u64> {
        let holds = |s: &&Segment| s.offset & !(page - 1) <= map_offset && map_offset < s.offset + s.filesz;
        let seg = self
            .segments
            .iter()
            .filter(holds)
            .find(|s| s.exec == exec_mapping)
            .or_else(|| self.segments.iter().find(holds))?;
        let svma = seg.vaddr.wrapping_add(map_offset).wrapping_sub(seg.offset);
        Some(map_start.wrapping_sub(svma))
    }

    /// File offset of `svma` (for `module+0xoffset` names), through the segment that holds it.
    pub fn file_offset(&self, svma: u64) -> Option<u64> {
        let s = self.segments.iter().find(|s| s.vaddr <= svma && svma < s.vaddr + s.filesz)?;
        Some(svma - s.vaddr + s.offset)
    }
}

/// Identity of a module file across processes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModuleKey {
    pub dev: String,
    pub inode: u64,
    pub path: String,
}

/// A module as the symbolizer sees it.
#[derive(Debug)]
pub struct ModuleMeta {
    pub id: u32,
    /// File name shown for unsymbolized frames (`libfoo.so+0x1234`).
    pub name: String,
    /// Where to open it (through `/proc/<pid>/root`); `None` for the vDSO.
    pub open_path: Option<PathBuf>,
    /// The file, opened while a process that maps it was alive: `/proc/<pid>/root` disappears
    /// with the process, and its last samples are symbolized after it exited.
    file: Option<std::fs::File>,
    pub elf: Option<Arc<ElfInfo>>,
}

impl ModuleMeta {
    /// The path the symbolizer opens: the file held open (`/proc/self/fd/<fd>`), else where it
    /// was found.
    pub fn symbol_path(&self) -> Option<PathBuf> {
        use std::os::fd::AsRawFd;
        match &self.file {
            Some(f) => Some(PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))),
            None => self.open_path.clone(),
        }
    }
}

/// What loading a module found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Where it was found (through `/proc/<pid>/root`); `None` for the vDSO.
    pub open_path: Option<PathBuf>,
    /// The file, kept open for the symbolizer.
    pub file: Option<std::fs::File>,
    pub elf: Option<Arc<ElfInfo>>,
}

/// Every module seen, with stable small IDs. Shared by the sampler and the symbolizer.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    by_key: HashMap<ModuleKey, u32>,
    metas: Vec<Arc<ModuleMeta>>,
}

impl Registry {
    /// The module for `key`, loading it with `load` the first time.
    pub fn get_or_insert(&self, key: ModuleKey, load: impl FnOnce() -> Loaded) -> Arc<ModuleMeta> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = inner.by_key.get(&key)
            && let Some(m) = inner.metas.get(id as usize)
        {
            return Arc::clone(m);
        }
        let Loaded { open_path, file, elf } = load();
        let id = inner.metas.len() as u32;
        let name = key.path.rsplit('/').next().unwrap_or(&key.path).trim_end_matches(" (deleted)").to_owned();
        let meta = Arc::new(ModuleMeta { id, name, open_path, file, elf });
        inner.metas.push(Arc::clone(&meta));
        inner.by_key.insert(key, id);
        meta
    }

    pub fn get(&self, id: u32) -> Option<Arc<ModuleMeta>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).metas.get(id as usize).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One executable mapping of a process and the module it maps.
#[derive(Clone, Debug)]
pub struct Mapping {
    /// Where it is mapped (avma).
    pub range: Range<u64>,
    pub module: Arc<ModuleMeta>,
    /// avma − svma: added to a module address to find it in the process.
    pub bias: u64,
    /// Whether `module.elf` gives unwind sections for this mapping (else frame pointers).
    pub unwindable: bool,
}

/// The sidecar's own vDSO image (the kernel maps the same one into every process).
fn own_vdso() -> Option<Arc<ElfInfo>> {
    let maps = procfs::maps(std::process::id()).ok()?;
    let v = maps.iter().find(|m| m.path == "[vdso]")?;
    let bytes = procfs::read_own_memory(v.start, v.end).ok()?;
    load_elf_bytes(&bytes, Path::new("[vdso]")).ok().map(Arc::new)
}

/// Loads a module the first time a process maps it: its file opened through the process's root
/// (kept open for the symbolizer) and parsed.
fn load(root: &Path, path: &str) -> Loaded {
    if path == "[vdso]" {
        return Loaded { elf: own_vdso(), ..Loaded::default() };
    }
    let path: PathBuf = root.join(path.trim_start_matches('/').trim_end_matches(" (deleted)"));
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "module file unreadable");
            return Loaded { open_path: Some(path), ..Loaded::default() };
        }
    };
    let elf = match load_elf(&file, &path) {
        Ok(elf) => Some(Arc::new(elf)),
        Err(e) => {
            tracing::debug!(error = %e, "module without unwind information");
            None
        }
    };
    Loaded { open_path: Some(path), file: Some(file), elf }
}

/// The executable file mappings of `pid` and the vDSO, sorted by address, each module loaded into
/// `registry` the first time any process maps it.
pub fn mapped(pid: u32, registry: &Registry) -> Result<Vec<Mapping>> {
    const PAGE: u64 = 4096;
    let maps = procfs::maps(pid)?;
    let root = procfs::proc_dir(pid).join("root");
    let mut mapped = Vec::new();
    for m in maps.iter().filter(|m| m.exec) {
        let vdso = m.path == "[vdso]";
        if !(vdso || m.path.starts_with('/')) {
            continue;
        }
        let key = ModuleKey { dev: m.dev.clone(), inode: m.inode, path: m.path.clone() };
        let module = registry.get_or_insert(key, || load(&root, &m.path));
        let range = m.start..m.end;
        let (bias, unwindable) = match module.elf.as_ref() {
            None => (m.start.wrapping_sub(m.offset), false),
            // The vDSO image is mapped whole: file offsets are its memory offsets.
            Some(elf) => match elf.bias(m.start, m.offset, true, PAGE) {
                Some(bias) => (bias, true),
                None => continue,
            },
        };
        mapped.push(Mapping { range, module, bias, unwindable });
    }
    mapped.sort_by_key(|m| m.range.start);
    Ok(mapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rust_like() -> ElfInfo {
        // As `readelf -l` shows for a Rust PIE: the executable segment's offset is not page aligned.
        ElfInfo {
            segments: vec![
                Segment { vaddr: 0, offset: 0, filesz: 0x5b8c0, exec: false },
                Segment { vaddr: 0x5c8c0, offset: 0x5b8c0, filesz: 0x1a0000, exec: true },
                Segment { vaddr: 0x1fd8c0, offset: 0x1fb8c0, filesz: 0x10000, exec: false },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn bias_uses_the_executable_segment() {
        let elf = rust_like();
        // The kernel maps the executable segment at bias + page_down(p_vaddr), file offset
        // page_down(p_offset).
        let bias = 0x5555_0000_0000;
        let start = bias + 0x5c000;
        assert_eq!(elf.bias(start, 0x5b000, true, 0x1000), Some(bias));
        // The read-only first mapping gives the same bias.
        assert_eq!(elf.bias(bias, 0, false, 0x1000), Some(bias));
        // Non-PIE: bias 0.
        assert_eq!(elf.bias(0x5c000, 0x5b000, true, 0x1000), Some(0));
        assert_eq!(elf.file_offset(0x5c8c0 + 0x10), Some(0x5b8c0 + 0x10));
        assert_eq!(elf.file_offset(0x9999_0000), None);
    }

    #[test]
    fn loads_its_own_binary_and_finds_unwind_sections() {
        let exe = std::env::current_exe().unwrap();
        let elf = load_elf(&std::fs::File::open(&exe).unwrap(), &exe).unwrap();
        assert!(elf.eh_frame.is_some() && elf.eh_frame_hdr.is_some() && elf.text.is_some());
        assert!(elf.segments.iter().any(|s| s.exec));
        // The bias computed from our own maps puts our own code inside .text.
        let maps = crate::procfs::maps(std::process::id()).unwrap();
        let canon = exe.canonicalize().unwrap();
        let m = maps.iter().find(|m| m.exec && Path::new(&m.path) == canon).unwrap();
        let bias = elf.bias(m.start, m.offset, true, 4096).unwrap();
        let here = loads_its_own_binary_and_finds_unwind_sections as *const () as u64;
        let text = elf.text.as_ref().unwrap();
        assert!(text.contains(&(here - bias)), "{:x} not in {:x?}", here - bias, text);
    }

    #[test]
    fn registry_gives_stable_ids() {
        let r = Registry::default();
        let key = |p: &str| ModuleKey { dev: "fd:01".into(), inode: 1, path: p.into() };
        let a = r.get_or_insert(key("/usr/lib/libc.so.6"), Loaded::default);
        let b = r.get_or_insert(key("/usr/lib/libc.so.6"), || panic!("loaded twice"));
        let c = r.get_or_insert(key("/app/demo (deleted)"), Loaded::default);
        assert_eq!((a.id, b.id, c.id), (0, 0, 1));
        assert_eq!((a.name.as_str(), c.name.as_str()), ("libc.so.6", "demo"));
        assert_eq!(r.get(1).unwrap().id, 1);
        assert_eq!(r.len(), 2);
    }
}
