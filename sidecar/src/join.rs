//! Joining samples to the span-context channel: which local root span was thread `tid` running
//! at the sample's time? A span, no span (whole-process only), or unknown (never guessed).

use std::path::Path;

// Looked up per sample: aHash, not SipHash (names the target wrote are no DoS risk to a table
// that only holds this target's names).
use ahash::AHashMap as HashMap;
use std::sync::Arc;

use spanprof_channel::{Answer, NameRef, Reader, SlotIndex};

/// The span labels a sample carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanLabels {
    pub span_id: u64,
    pub trace_id: u128,
    pub name: Arc<str>,
}

/// Where a sample goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribution {
    Span(SpanLabels),
    /// The thread was in no span: whole-process profile only.
    NoSpan,
    /// The channel cannot tell (unregistered thread, slot in flux): counted, unattributed.
    Unknown,
    /// The thread's span history was overwritten before the sample was joined (the rings were
    /// drained too late for its rate of root-span changes): counted, unattributed.
    Late,
    /// The process has no (valid) channel file.
    NoChannel,
}

/// What the join needs of a channel (the real [`IndexedReader`], or a table in tests).
pub trait SpanLookup {
    /// Called before each batch of samples: answers must hold for every time before the call.
    fn refresh(&mut self) {}
    fn lookup(&self, tid: u32, t_ns: u64) -> Answer;
    fn name(&self, r: NameRef) -> Option<String>;
    /// Whether the file shrank under the reader (see `Reader::is_damaged`).
    fn is_damaged(&self) -> bool {
        false
    }
}

/// A channel reader with a slot index refreshed once per batch of samples, so a lookup reads
/// only the sampled thread's slots.
pub struct IndexedReader {
    reader: Reader,
    index: SlotIndex,
}

impl IndexedReader {
    pub fn new(reader: Reader) -> IndexedReader {
        let index = reader.index();
        IndexedReader { reader, index }
    }
}

impl SpanLookup for IndexedReader {
    fn refresh(&mut self) {
        self.index = self.reader.index();
    }
    fn lookup(&self, tid: u32, t_ns: u64) -> Answer {
        self.reader.lookup_indexed(&self.index, tid, t_ns)
    }
    fn name(&self, r: NameRef) -> Option<String> {
        self.reader.name(r)
    }
    fn is_damaged(&self) -> bool {
        self.reader.is_damaged()
    }
}

/// A process's channel with its span names cached.
pub struct Channel<L> {
    lookup: L,
    names: HashMap<NameRef, Arc<str>>,
}

impl<L: SpanLookup> Channel<L> {
    pub fn new(lookup: L) -> Channel<L> {
        Channel { lookup, names: HashMap::new() }
    }

    /// Whether the app shrank its channel file under the reader: drop the channel.
    pub fn is_damaged(&self) -> bool {
        self.lookup.is_damaged()
    }

    /// Brings the lookup up to date before a batch of samples taken until now.
    pub fn refresh(&mut self) {
        self.lookup.refresh();
    }

    pub fn attribute(&mut self, tid: u32, t_ns: u64) -> Attribution {
        match self.lookup.lookup(tid, t_ns) {
            Answer::Span(s) => {
                let lookup = &self.lookup;
                let name = self
                    .names
                    .entry(s.name)
                    .or_insert_with(|| Arc::from(lookup.name(s.name).unwrap_or_default()))
                    .clone();
                Attribution::Span(SpanLabels { span_id: s.span_id, trace_id: s.trace_id, name })
            }
            Answer::NoSpan => Attribution::NoSpan,
            Answer::Unknown => Attribution::Unknown,
            Answer::Overwritten => Attribution::Late,
        }
    }
}

/// Attributes a sample of a process that may have no channel.
pub fn attribute<L: SpanLookup>(channel: Option<&mut Channel<L>>, tid: u32, t_ns: u64) -> Attribution {
    match channel {
        Some(c) => c.attribute(tid, t_ns),
        None => Attribution::NoChannel,
    }
}

/// Finds and opens `pid`'s channel: in `container`'s directory of the context volume when the
/// container is known (see `spanprof_channel::pod`), else in any container's directory, then in
/// `dir` itself (one app, or a local run). Returns the reader and the container directory it was
/// found in.
pub fn find_channel(
    dir: &Path,
    pid: u32,
    start_time: u64,
    container: Option<&str>,
) -> Option<(IndexedReader, Option<String>)> {
    let name = spanprof_channel::file_name(pid);
    let subdirs: Vec<String> = match container {
        Some(c) => vec![c.to_owned()],
        None => std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.path().join(&name).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
    };
    for sub in subdirs {
        let in_container = spanprof_channel::pod::container_dir(dir, &sub);
        if let Some(reader) = open_channel(&in_container, pid, start_time) {
            return Some((reader, Some(sub)));
        }
    }
    open_channel(dir, pid, start_time).map(|r| (r, None))
}

/// Whether `pid` has a channel file anywhere `find_channel` looks.
pub fn has_channel_file(dir: &Path, pid: u32) -> bool {
    let name = spanprof_channel::file_name(pid);
    dir.join(&name).exists()
        || std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()) && e.path().join(&name).exists())
}

/// Opens `<dir>/<pid>.spanctx` when it belongs to this very process and its user
/// ([`Reader::open_for`]); a missing file or process is no channel, a stale one is logged at
/// debug level, anything else (untrusted, unusable) is warned about once per file.
pub fn open_channel(dir: &Path, pid: u32, start_time: u64) -> Option<IndexedReader> {
    match Reader::open_for(dir, pid, start_time) {
        Ok(reader) => Some(IndexedReader::new(reader)),
        Err(spanprof_channel::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e @ spanprof_channel::Error::Stale(_)) => {
            tracing::debug!(error = %e, "ignoring a channel file");
            None
        }
        Err(e) => {
            warn_once(&dir.join(spanprof_channel::file_name(pid)), &e.to_string());
            None
        }
    }
}

/// Logs a warning about `path` once (the discovery loop looks at the same files every pass),
/// remembering at most a few thousand paths.
pub fn warn_once(path: &Path, what: &str) {
    static WARNED: std::sync::Mutex<Option<std::collections::HashSet<std::path::PathBuf>>> =
        std::sync::Mutex::new(None);
    let Ok(mut warned) = WARNED.lock() else { return };
    let set = warned.get_or_insert_with(Default::default);
    if set.len() >= 4096 {
        set.clear();
    }
    if set.insert(path.to_owned()) {
        tracing::warn!(path = %path.display(), "{what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spanprof_channel::{Options, Root, Writer};

    struct Table(Vec<(u32, u64, Answer)>);
    impl SpanLookup for Table {
        fn lookup(&self, tid: u32, t: u64) -> Answer {
            self.0.iter().rev().find(|(x, from, _)| *x == tid && *from <= t).map_or(Answer::Unknown, |e| e.2)
        }
        fn name(&self, r: NameRef) -> Option<String> {
            (r.0 == 1).then(|| "OrderVehicle".to_owned())
        }
    }

    #[test]
    fn answers_map_to_attributions() {
        let span = Root { span_id: 0xab, trace_id: 0xcd, name: NameRef(1) };
        let mut c =
            Channel::new(Table(vec![(5, 100, Answer::NoSpan), (5, 200, Answer::Span(span)), (5, 300, Answer::NoSpan)]));
        assert_eq!(c.attribute(5, 150), Attribution::NoSpan);
        let labels = SpanLabels { span_id: 0xab, trace_id: 0xcd, name: Arc::from("OrderVehicle") };
        assert_eq!(c.attribute(5, 250), Attribution::Span(labels.clone()));
        assert_eq!(c.attribute(5, 299), Attribution::Span(labels));
        assert_eq!(c.attribute(5, 50), Attribution::Unknown);
        assert_eq!(c.attribute(6, 250), Attribution::Unknown);
        assert_eq!(attribute::<Table>(None, 5, 250), Attribution::NoChannel);
    }

    #[test]
    fn opens_only_the_channel_of_this_very_process() {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let (start, _) = crate::procfs::stat(pid).unwrap();
        let w = std::sync::Arc::new(Writer::create(dir.path(), &Options::default()).unwrap());
        let mut slot = w.register_thread().unwrap();
        let name = w.intern("CarHandler");
        let tid = slot.tid();
        slot.record(Some(&spanprof_channel::Root { span_id: 0x77, trace_id: 0x88, name }));
        let t = spanprof_channel::monotonic_ns();
        let reader = open_channel(dir.path(), pid, start).unwrap();
        let mut c = Channel::new(reader);
        match c.attribute(tid, t) {
            Attribution::Span(s) => assert_eq!((s.span_id, s.trace_id, &*s.name), (0x77, 0x88, "CarHandler")),
            other => panic!("{other:?}"),
        }
        assert!(open_channel(dir.path(), pid, start + 1).is_none());
        assert!(open_channel(dir.path(), pid + 1, start).is_none());
    }

    #[test]
    fn finds_a_channel_in_its_containers_directory_and_says_which() {
        let volume = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let (start, _) = crate::procfs::stat(pid).unwrap();
        std::fs::create_dir(volume.path().join("sidecar-of-nothing")).unwrap();
        let api = volume.path().join("api");
        std::fs::create_dir(&api).unwrap();
        let _w = Writer::create(&api, &Options::default()).unwrap();
        assert!(has_channel_file(volume.path(), pid));
        assert!(!has_channel_file(volume.path(), pid + 1));
        let (_, found) = find_channel(volume.path(), pid, start, None).expect("found by scanning");
        assert_eq!(found.as_deref(), Some("api"));
        let (_, found) = find_channel(volume.path(), pid, start, Some("api")).expect("found where expected");
        assert_eq!(found.as_deref(), Some("api"));
        assert!(find_channel(volume.path(), pid, start, Some("worker")).is_none(), "not another container's");
        assert!(find_channel(volume.path(), pid, start + 1, None).is_none(), "stale");
    }
}
