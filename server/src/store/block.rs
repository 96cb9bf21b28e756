//! The block format: an immutable, self-describing, checksummed object in the bucket holding the
//! span profiles and whole-process buckets one replica cut from its local store. Pure: bytes in,
//! bytes out; the bucket I/O lives in [`super::bucket`].
//!
//! A block is sorted tables (SSTable-like) one after another, then a footer:
//!
//! ```text
//! [table spans] [table traces] [table list] [table series] [table process] [table frames] [table stacks]
//! [footer: protobuf BlockFooter] [footer length u32 LE] [footer CRC-32 u32 LE] [magic "SPBLOCK1"]
//! ```
//!
//! A table is pages of at most [`PAGE_BYTES`] of `(key, value)` entries sorted by key, each page
//! LZ4-compressed (its size first, 4 bytes LE) and ending in the CRC-32 of its stored bytes.
//! The footer holds, per table, each page's first key, offset and length (so a reader finds the
//! one page a key can be in and fetches it with one ranged read) and a Bloom filter of the keys
//! of the tables that are looked up by key (spans by profile ID, traces by trace ID), so most
//! blocks are ruled out without a read. Keys:
//!
//! | table | key | value |
//! |---|---|---|
//! | `spans` | profile ID ([`super::shared::id_key`]) | `SpanRecord` (stack IDs of this block, its labels a `series` number) |
//! | `traces` | trace ID (16 bytes) + profile ID | — |
//! | `list` | `!last_seen_ms` (8 bytes BE, newest first) + profile ID | `ListEntry` |
//! | `series` | series number (4 bytes BE) | `SeriesRecord` (whole-process series and span label sets) |
//! | `process` | series number (4) + bucket start ms (8) | `StacksRecord` |
//! | `frames` | frame ID (4) | name |
//! | `stacks` | stack ID (4) | `StackRecord` |

use spanprof_proto::labels as wire;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use prost::Message;

use super::codec::{self, SpanRecord, StackRecord, StacksRecord};
use super::shared::{SeriesRecord, SpanPart, id_from_key, id_key};
use super::{SpanProfile, SpanSummary, Stacks};
use crate::error::{Error, Result};
use crate::model::{Labels, ProfileId, TraceId};
use crate::proto::push::LabelPair;

/// The format version this code writes and reads. 2: span records name their label set in the
/// series table instead of carrying it (1 repeated it in every record), and pages are
/// LZ4-compressed.
pub const FORMAT_VERSION: u32 = 2;
/// Ends every block.
pub const MAGIC: &[u8; 8] = b"SPBLOCK1";
/// Bytes after the footer: its length, its CRC-32 and the magic.
pub const TRAILER_BYTES: usize = 16;
/// A table page holds entries up to about this many bytes (one ranged read).
pub const PAGE_BYTES: usize = 64 << 10;
/// Bloom filter bits per key: about 1 % false positives with [`BLOOM_HASHES`] hashes.
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_HASHES: u32 = 7;

/// The tables of a block, in the order they are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    Spans,
    Traces,
    List,
    Series,
    Process,
    Frames,
    Stacks,
}

impl Table {
    pub const ALL: [Table; 7] =
        [Table::Spans, Table::Traces, Table::List, Table::Series, Table::Process, Table::Frames, Table::Stacks];

    pub fn name(self) -> &'static str {
        match self {
            Table::Spans => "spans",
            Table::Traces => "traces",
            Table::List => "list",
            Table::Series => "series",
            Table::Process => "process",
            Table::Frames => "frames",
            Table::Stacks => "stacks",
        }
    }
}

/// Where one page of a table is.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PageRef {
    #[prost(bytes = "vec", tag = "1")]
    pub first_key: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    /// Bytes, the trailing CRC-32 included.
    #[prost(uint32, tag = "3")]
    pub len: u32,
}

/// One table's pages and Bloom filter.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TableRef {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub pages: Vec<PageRef>,
    #[prost(uint64, tag = "3")]
    pub entries: u64,
    /// Bloom filter over the table's lookup keys (empty: none, every page may hold a key).
    #[prost(bytes = "vec", tag = "4")]
    pub bloom: Vec<u8>,
}

/// The footer: where everything is.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockFooter {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(message, repeated, tag = "2")]
    pub tables: Vec<TableRef>,
}

/// A `list` table entry: what listing and search filter on, so a page lists without reading
/// each span's record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListEntry {
    #[prost(string, tag = "1")]
    pub service_name: String,
    #[prost(string, tag = "2")]
    pub span_name: String,
    #[prost(uint64, tag = "3")]
    pub samples: u64,
    #[prost(uint64, tag = "4")]
    pub first_seen_ms: u64,
    /// Absent in blocks written before span aggregates (then 0: the default period is assumed).
    #[prost(uint64, tag = "5")]
    pub period_ns: u64,
    /// The record's `block_series` (its label set), for label selectors over the listing.
    #[prost(uint32, tag = "6")]
    pub block_series: u32,
}

/// The small object beside a block's data: what a query plans with, without reading the block.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockMeta {
    pub format: u32,
    pub id: String,
    /// The replica that cut it (`--replica-name`).
    pub replica: String,
    pub created_ms: u64,
    /// Earliest first-seen and latest last-seen time of its span profiles and buckets.
    pub min_time_ms: u64,
    pub max_time_ms: u64,
    pub span_profiles: u64,
    pub samples: u64,
    pub data_bytes: u64,
    /// CRC-32 of the whole data object.
    pub data_crc32: u32,
    /// Services with span profiles or whole-process series in the block.
    pub services: Vec<String>,
    /// Labels of every whole-process series in the block.
    pub series: Vec<Labels>,
    /// Blocks this one replaces (compaction): they are deleted after a grace period.
    #[serde(default)]
    pub replaces: Vec<String>,
}

impl BlockMeta {
    /// The block's time range overlaps `[from_ms, until_ms]`.
    pub fn overlaps(&self, from_ms: u64, until_ms: u64) -> bool {
        self.min_time_ms <= until_ms && self.max_time_ms >= from_ms
    }
}

/// A Bloom filter with a stable hash (FNV-1a, double hashing): it is written to blocks, so it
/// must hash alike in every process and version.
#[derive(Clone, Debug)]
pub struct Bloom {
    bits: Vec<u8>,
}

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix so that keys differing only in their last bytes spread over the whole range.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl Bloom {
    pub fn with_keys<'a>(keys: impl ExactSizeIterator<Item = &'a [u8]>) -> Self {
        let bytes = (keys.len() * BLOOM_BITS_PER_KEY).div_ceil(8).max(8);
        let mut bloom = Bloom { bits: vec![0; bytes] };
        for k in keys {
            for bit in bloom.positions(k) {
                bloom.bits[bit / 8] |= 1 << (bit % 8);
            }
        }
        bloom
    }

    fn positions(&self, key: &[u8]) -> impl Iterator<Item = usize> + use<> {
        bloom_positions(self.bits.len(), key)
    }

    /// False: the key is surely absent. True: it may be present.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        BloomRef { bits: &self.bits }.may_contain(key)
    }
}

fn bloom_positions(bytes: usize, key: &[u8]) -> impl Iterator<Item = usize> + use<> {
    let n = bytes as u64 * 8;
    let (a, b) = (fnv1a(key, 0), fnv1a(key, 0x9e37_79b9_7f4a_7c15) | 1);
    (0..BLOOM_HASHES).map(move |i| (a.wrapping_add(u64::from(i).wrapping_mul(b)) % n) as usize)
}

/// A [`Bloom`] filter read where its bits are (a block's footer): a lookup copies nothing.
pub struct BloomRef<'a> {
    bits: &'a [u8],
}

impl BloomRef<'_> {
    /// False: the key is surely absent. True: it may be present.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.bits.is_empty()
            || bloom_positions(self.bits.len(), key).all(|bit| self.bits[bit / 8] & (1 << (bit % 8)) != 0)
    }
}

/// Appends `value` as a protobuf varint.
fn put_varint(out: &mut Vec<u8>, value: u64) {
    prost::encoding::encode_varint(value, out);
}

/// Writes sorted `(key, value)` entries as pages at `out`'s end; returns the table's reference.
fn write_table(out: &mut Vec<u8>, table: Table, entries: &[(Vec<u8>, Vec<u8>)], bloom: Option<Bloom>) -> TableRef {
    let mut pages = Vec::new();
    let mut page = Vec::new();
    let mut first_key: Option<&[u8]> = None;
    let mut flush = |out: &mut Vec<u8>, page: &mut Vec<u8>, first: &[u8]| {
        let mut stored = lz4_flex::block::compress_prepend_size(page);
        page.clear();
        let crc = crc32fast::hash(&stored);
        stored.extend_from_slice(&crc.to_le_bytes());
        pages.push(PageRef { first_key: first.to_vec(), offset: out.len() as u64, len: stored.len() as u32 });
        out.append(&mut stored);
    };
    for (k, v) in entries {
        if first_key.is_none() {
            first_key = Some(k);
        }
        put_varint(&mut page, k.len() as u64);
        page.extend_from_slice(k);
        put_varint(&mut page, v.len() as u64);
        page.extend_from_slice(v);
        if page.len() >= PAGE_BYTES {
            flush(out, &mut page, first_key.take().unwrap_or_default());
        }
    }
    if let Some(first) = first_key {
        flush(out, &mut page, first);
    }
    TableRef {
        name: table.name().into(),
        pages,
        entries: entries.len() as u64,
        bloom: bloom.map(|b| b.bits).unwrap_or_default(),
    }
}

/// Decodes one page (its CRC-32 checked) into its entries.
pub fn decode_page(bytes: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let corrupt = |what: &str| Error::Corrupt(format!("block page: {what}"));
    let (body, crc) = bytes
        .split_at_checked(bytes.len().checked_sub(4).ok_or_else(|| corrupt("short"))?)
        .ok_or_else(|| corrupt("short"))?;
    let crc = u32::from_le_bytes(<[u8; 4]>::try_from(crc).map_err(|_| corrupt("short"))?);
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    // LZ4 expands at most 255-fold: a larger claimed size is a corrupt page, not an allocation.
    let size =
        body.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or_else(|| corrupt("short"))?;
    if size > body.len().saturating_mul(255) {
        return Err(corrupt("impossible size"));
    }
    let plain = lz4_flex::block::decompress_size_prepended(body).map_err(|e| corrupt(&format!("LZ4: {e}")))?;
    let mut buf = plain.as_slice();
    let mut out = Vec::new();
    let take = |buf: &mut &[u8]| -> Result<Vec<u8>> {
        let len = prost::encoding::decode_varint(buf).map_err(|_| corrupt("bad length"))? as usize;
        if len > buf.len() {
            return Err(corrupt("entry past the end"));
        }
        let (v, rest) = buf.split_at(len);
        *buf = rest;
        Ok(v.to_vec())
    };
    while !buf.is_empty() {
        let k = take(&mut buf)?;
        let v = take(&mut buf)?;
        out.push((k, v));
    }
    Ok(out)
}

/// Splits a block's last bytes into its footer: `tail` ends the block (at least
/// [`TRAILER_BYTES`]); `Ok(Err(n))` says the footer needs the last `n` bytes.
pub fn decode_footer(tail: &[u8]) -> Result<std::result::Result<BlockFooter, usize>> {
    let corrupt = |what: String| Error::Corrupt(format!("block footer: {what}"));
    if tail.len() < TRAILER_BYTES {
        return Err(corrupt("shorter than its trailer".into()));
    }
    let trailer = &tail[tail.len() - TRAILER_BYTES..];
    if &trailer[8..] != MAGIC {
        return Err(corrupt("no block magic (not a spanprof block, or truncated)".into()));
    }
    let len = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as usize;
    let crc = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    let need = len + TRAILER_BYTES;
    if tail.len() < need {
        return Ok(Err(need));
    }
    let footer = &tail[tail.len() - need..tail.len() - TRAILER_BYTES];
    if crc32fast::hash(footer) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    let footer: BlockFooter = codec::decode(footer, "block footer")?;
    if footer.version != FORMAT_VERSION {
        return Err(corrupt(format!("format version {} (this server reads {FORMAT_VERSION})", footer.version)));
    }
    Ok(Ok(footer))
}

impl BlockFooter {
    pub fn table(&self, t: Table) -> Result<&TableRef> {
        self.tables
            .iter()
            .find(|r| r.name == t.name())
            .ok_or_else(|| Error::Corrupt(format!("block has no {} table", t.name())))
    }
}

impl TableRef {
    /// The page that holds `key`, if any page can.
    pub fn page_for(&self, key: &[u8]) -> Option<&PageRef> {
        let i = self.pages.partition_point(|p| p.first_key.as_slice() <= key);
        i.checked_sub(1).map(|i| &self.pages[i])
    }

    /// The pages that can hold keys starting with `prefix`.
    pub fn pages_for_prefix(&self, prefix: &[u8]) -> &[PageRef] {
        // The last page starting at or before the prefix may hold its first keys.
        let start = self.pages.partition_point(|p| p.first_key.as_slice() <= prefix).saturating_sub(1);
        let end = self.pages.partition_point(|p| p.first_key.as_slice() < prefix || p.first_key.starts_with(prefix));
        &self.pages[start..end.max(start)]
    }

    pub fn bloom(&self) -> BloomRef<'_> {
        BloomRef { bits: &self.bloom }
    }
}

/// Where records to put into a block keep their stacks: the local store, by its own IDs.
pub trait StackSource {
    /// Frame IDs of stack `id`, root first.
    fn frames_of(&mut self, id: u32) -> Result<Vec<u32>>;
    /// The name of frame `id`.
    fn frame_name(&mut self, id: u32) -> Result<Arc<str>>;
}

/// The block's IDs of a [`StackSource`]'s stacks and frames, each translated once.
#[derive(Default)]
pub struct IdMap {
    stacks: HashMap<u32, u32>,
    frames: HashMap<u32, u32>,
}

/// Builds one block from resolved profiles: frames and stacks are interned into the block's own
/// dictionary, span profiles with the same ID merge.
#[derive(Default)]
pub struct BlockBuilder {
    frames: HashMap<Arc<str>, u32>,
    stacks: HashMap<Vec<u32>, u32>,
    spans: BTreeMap<Vec<u8>, SpanRecord>,
    series: HashMap<Labels, u32>,
    /// Series with whole-process buckets (the others are span label sets only).
    process_series: HashSet<u32>,
    process: BTreeMap<(u32, u64), StacksRecord>,
    min_time_ms: u64,
    max_time_ms: u64,
    samples: u64,
}

impl BlockBuilder {
    fn time(&mut self, from: u64, until: u64) {
        if self.spans.is_empty() && self.process.is_empty() {
            (self.min_time_ms, self.max_time_ms) = (from, until);
        }
        self.min_time_ms = self.min_time_ms.min(from);
        self.max_time_ms = self.max_time_ms.max(until);
    }

    fn counts(&mut self, stacks: &Stacks) -> codec::Counts {
        let mut out = Vec::with_capacity(stacks.len());
        for (frames, count) in stacks {
            let mut ids = Vec::with_capacity(frames.len());
            for f in frames {
                let next = self.frames.len() as u32;
                ids.push(*self.frames.entry(f.clone()).or_insert(next));
            }
            let next = self.stacks.len() as u32;
            let id = *self.stacks.entry(ids).or_insert(next);
            out.push((id, *count));
        }
        codec::normalize(out)
    }

    /// Stack counts of `source`'s stack IDs in the block's IDs: each distinct stack is read and
    /// interned once (by ID, not by frame names), so a cut costs a lookup per stack occurrence.
    fn translate(
        &mut self,
        counts: &codec::Counts,
        map: &mut IdMap,
        source: &mut dyn StackSource,
    ) -> Result<codec::Counts> {
        let mut out = Vec::with_capacity(counts.len());
        for &(sid, count) in counts {
            let id = match map.stacks.get(&sid) {
                Some(&id) => id,
                None => {
                    let mut ids = Vec::new();
                    for f in source.frames_of(sid)? {
                        let fid = match map.frames.get(&f) {
                            Some(&fid) => fid,
                            None => {
                                let name = source.frame_name(f)?;
                                let next = self.frames.len() as u32;
                                let fid = *self.frames.entry(name).or_insert(next);
                                map.frames.insert(f, fid);
                                fid
                            }
                        };
                        ids.push(fid);
                    }
                    let next = self.stacks.len() as u32;
                    let id = *self.stacks.entry(ids).or_insert(next);
                    map.stacks.insert(sid, id);
                    id
                }
            };
            out.push((id, count));
        }
        Ok(codec::normalize(out))
    }

    /// Adds a stored span record (profile ID key `key`) whose stack IDs are `source`'s.
    pub fn add_span_record(
        &mut self,
        key: &[u8],
        mut rec: SpanRecord,
        map: &mut IdMap,
        source: &mut dyn StackSource,
    ) -> Result<()> {
        self.time(rec.first_seen_ms, rec.last_seen_ms);
        self.samples += rec.samples;
        let counts = self.translate(&rec.stack_counts()?, map, source)?;
        match self.spans.get_mut(key) {
            Some(old) => {
                let part = SpanPart {
                    counts: &counts,
                    period_ns: rec.period_ns,
                    first_seen_ms: rec.first_seen_ms,
                    last_seen_ms: rec.last_seen_ms,
                    trace_id: codec::trace_from_bytes(&rec.trace_id),
                    span_name: Some(&rec.span_name),
                    labels: &rec.labels,
                    service_name: &rec.service_name,
                };
                part.merge_into(old)?;
            }
            None => {
                rec.set_stack_counts(&counts);
                // The embedded store's series ID means nothing in a block.
                rec.rollup_series = 0;
                rec.stat_chunk = 0;
                self.spans.insert(key.to_vec(), rec);
            }
        }
        Ok(())
    }

    /// Adds a stored whole-process bucket whose stack IDs are `source`'s.
    pub fn add_process_record(
        &mut self,
        labels: &Labels,
        bucket_ms: u64,
        rec: &StacksRecord,
        map: &mut IdMap,
        source: &mut dyn StackSource,
    ) -> Result<()> {
        self.time(bucket_ms, bucket_ms + super::shared::BUCKET_MS - 1);
        let counts = self.translate(&rec.to_counts()?, map, source)?;
        self.add_process_counts(labels, bucket_ms, rec.period_ns, counts);
        Ok(())
    }

    /// Adds a span profile; one of the same ID already added merges with it, as an insert would.
    pub fn add_span(&mut self, p: &SpanProfile) {
        let s = &p.summary;
        self.time(s.first_seen_ms, s.last_seen_ms);
        self.samples += s.samples;
        let counts = self.counts(&p.stacks);
        let labels: Vec<LabelPair> =
            s.labels.iter().map(|(k, v)| LabelPair { name: k.clone(), value: v.clone() }).collect();
        let part = SpanPart {
            counts: &counts,
            period_ns: s.period_ns,
            first_seen_ms: s.first_seen_ms,
            last_seen_ms: s.last_seen_ms,
            trace_id: s.trace_id,
            span_name: Some(&s.span_name),
            labels: &labels,
            service_name: &s.service_name,
        };
        let key = id_key(&s.profile_id);
        match self.spans.get_mut(&key) {
            // Both records were built here from valid counts: merging them cannot fail.
            Some(old) => {
                let _ = part.merge_into(old);
            }
            None => {
                self.spans.insert(key, part.into_record());
            }
        }
    }

    /// Adds a whole-process bucket of the series `labels`.
    pub fn add_process(&mut self, labels: &Labels, bucket_ms: u64, period_ns: u64, stacks: &Stacks) {
        self.time(bucket_ms, bucket_ms + super::shared::BUCKET_MS - 1);
        let counts = self.counts(stacks);
        self.add_process_counts(labels, bucket_ms, period_ns, counts);
    }

    fn add_process_counts(&mut self, labels: &Labels, bucket_ms: u64, period_ns: u64, counts: codec::Counts) {
        // A span rollup's samples are counted once, in their span profiles.
        if !labels.contains_key(crate::selector::SPAN_NAME_LABEL) {
            self.samples += counts.iter().map(|c| c.1).sum::<u64>();
        }
        let next = self.series.len() as u32;
        let series = *self.series.entry(labels.clone()).or_insert(next);
        self.process_series.insert(series);
        let rec = match self.process.remove(&(series, bucket_ms)) {
            Some(old) => {
                let incoming = super::shared::rescaled(counts, period_ns, old.period_ns);
                let merged = codec::merge_counts(&old.to_counts().unwrap_or_default(), &incoming);
                StacksRecord::from_counts(&merged, old.period_ns)
            }
            None => StacksRecord::from_counts(&counts, period_ns),
        };
        self.process.insert((series, bucket_ms), rec);
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.process.is_empty()
    }

    /// The block's data object and its metadata.
    pub fn finish(mut self, id: &str, replica: &str, created_ms: u64) -> (Vec<u8>, BlockMeta) {
        let mut out = Vec::new();
        let mut tables = Vec::with_capacity(Table::ALL.len());
        let mut services = std::collections::BTreeSet::new();

        // Each span's label set goes into the series table once; records name it.
        let span_count = self.spans.len() as u64;
        let mut label_sets: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut spans: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(self.spans.len());
        for (k, r) in self.spans.iter_mut() {
            let set = SeriesRecord { labels: std::mem::take(&mut r.labels) };
            let encoded = set.encode_to_vec();
            let series = match label_sets.get(&encoded) {
                Some(&n) => n,
                None => {
                    let map: Labels = set.labels.into_iter().map(|l| (l.name, l.value)).collect();
                    let next = self.series.len() as u32;
                    let n = *self.series.entry(map).or_insert(next);
                    label_sets.insert(encoded, n);
                    n
                }
            };
            r.block_series = series + 1;
            spans.push((k.clone(), r.encode_to_vec()));
        }
        let bloom = Bloom::with_keys(self.spans.keys().map(Vec::as_slice));
        tables.push(write_table(&mut out, Table::Spans, &spans, Some(bloom)));
        drop(spans);

        let mut traces: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut list: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(self.spans.len());
        for (k, r) in &self.spans {
            if !services.contains(&r.service_name) {
                services.insert(r.service_name.clone());
            }
            if r.trace_id.len() == 16 {
                traces.push(([r.trace_id.as_slice(), k].concat(), Vec::new()));
            }
            list.push(([(!r.last_seen_ms).to_be_bytes().as_slice(), k].concat(), list_entry(r)));
        }
        traces.sort_unstable();
        list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let bloom = Bloom::with_keys(traces.iter().map(|(k, _)| &k[..16]));
        tables.push(write_table(&mut out, Table::Traces, &traces, Some(bloom)));
        tables.push(write_table(&mut out, Table::List, &list, None));

        let mut series: Vec<(&Labels, u32)> = self.series.iter().map(|(l, &n)| (l, n)).collect();
        series.sort_unstable_by_key(|&(_, n)| n);
        let series_rows: Vec<(Vec<u8>, Vec<u8>)> = series
            .iter()
            .map(|&(l, n)| (n.to_be_bytes().to_vec(), SeriesRecord::from_labels(l).encode_to_vec()))
            .collect();
        for (l, _) in &series {
            if let Some(s) = l.get(wire::SERVICE_NAME) {
                services.insert(s.clone());
            }
        }
        tables.push(write_table(&mut out, Table::Series, &series_rows, None));
        let process: Vec<(Vec<u8>, Vec<u8>)> = self
            .process
            .iter()
            .map(|(&(s, b), r)| ([s.to_be_bytes().as_slice(), &b.to_be_bytes()].concat(), r.encode_to_vec()))
            .collect();
        tables.push(write_table(&mut out, Table::Process, &process, None));

        let mut frames: Vec<(&Arc<str>, u32)> = self.frames.iter().map(|(f, &i)| (f, i)).collect();
        frames.sort_unstable_by_key(|&(_, i)| i);
        let frame_rows: Vec<(Vec<u8>, Vec<u8>)> =
            frames.iter().map(|&(f, i)| (i.to_be_bytes().to_vec(), f.as_bytes().to_vec())).collect();
        tables.push(write_table(&mut out, Table::Frames, &frame_rows, None));
        let mut stacks: Vec<(&Vec<u32>, u32)> = self.stacks.iter().map(|(s, &i)| (s, i)).collect();
        stacks.sort_unstable_by_key(|&(_, i)| i);
        let stack_rows: Vec<(Vec<u8>, Vec<u8>)> = stacks
            .iter()
            .map(|&(s, i)| (i.to_be_bytes().to_vec(), StackRecord { frame_ids: s.clone() }.encode_to_vec()))
            .collect();
        tables.push(write_table(&mut out, Table::Stacks, &stack_rows, None));

        let footer = BlockFooter { version: FORMAT_VERSION, tables }.encode_to_vec();
        let crc = crc32fast::hash(&footer);
        out.extend_from_slice(&footer);
        out.extend_from_slice(&(footer.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(MAGIC);
        let meta = BlockMeta {
            format: FORMAT_VERSION,
            id: id.to_owned(),
            replica: replica.to_owned(),
            created_ms,
            min_time_ms: self.min_time_ms,
            max_time_ms: self.max_time_ms,
            span_profiles: span_count,
            samples: self.samples,
            data_bytes: out.len() as u64,
            data_crc32: crc32fast::hash(&out),
            services: services.into_iter().collect(),
            // What query planning needs: the series with whole-process data.
            series: series
                .into_iter()
                .filter(|(_, n)| self.process_series.contains(n))
                .map(|(l, _)| l.clone())
                .collect(),
            replaces: Vec::new(),
        };
        (out, meta)
    }
}

/// The [`ListEntry`] of a span record, encoded without copying its strings first (one per span
/// profile of a block).
fn list_entry(r: &SpanRecord) -> Vec<u8> {
    use prost::encoding::{string, uint64};
    let mut out = Vec::with_capacity(r.service_name.len() + r.span_name.len() + 24);
    // As prost encodes the message: fields at their default value are left out.
    if !r.service_name.is_empty() {
        string::encode(1, &r.service_name, &mut out);
    }
    if !r.span_name.is_empty() {
        string::encode(2, &r.span_name, &mut out);
    }
    if r.samples != 0 {
        uint64::encode(3, &r.samples, &mut out);
    }
    if r.first_seen_ms != 0 {
        uint64::encode(4, &r.first_seen_ms, &mut out);
    }
    if r.period_ns != 0 {
        uint64::encode(5, &r.period_ns, &mut out);
    }
    if r.block_series != 0 {
        prost::encoding::uint32::encode(6, &r.block_series, &mut out);
    }
    out
}

/// A span record of a block, as the API shows it (stacks still block stack IDs).
pub fn span_summary(key: &[u8], rec: SpanRecord) -> Result<(SpanSummary, codec::Counts)> {
    let counts = rec.stack_counts()?;
    Ok((super::shared::summary(id_from_key(key)?, rec), counts))
}

/// The `list` key of a profile last seen at `last_seen_ms`: newest first.
pub fn list_key(last_seen_ms: u64, id: &ProfileId) -> Vec<u8> {
    [(!last_seen_ms).to_be_bytes().as_slice(), &id_key(id)].concat()
}

/// The last-seen time and profile ID of a `list` key.
pub fn decode_list_key(key: &[u8]) -> Result<(u64, ProfileId)> {
    let t = key
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .ok_or_else(|| Error::Corrupt("block list key".into()))?;
    Ok((!u64::from_be_bytes(t), id_from_key(&key[8..])?))
}

/// The profile ID of a `traces` key of `trace`.
pub fn trace_entry_id(key: &[u8], trace: TraceId) -> Option<Result<ProfileId>> {
    key.strip_prefix(&trace.0.to_be_bytes()[..]).map(id_from_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_entries_encode_as_the_message_does() {
        let full = SpanRecord {
            service_name: "ride".into(),
            span_name: "Order".into(),
            samples: 7,
            first_seen_ms: 1_700,
            period_ns: 10_000_000,
            block_series: 3,
            ..Default::default()
        };
        let empty = SpanRecord::default();
        for r in [&full, &empty] {
            let message = ListEntry {
                service_name: r.service_name.clone(),
                span_name: r.span_name.clone(),
                samples: r.samples,
                first_seen_ms: r.first_seen_ms,
                period_ns: r.period_ns,
                block_series: r.block_series,
            };
            assert_eq!(list_entry(r), message.encode_to_vec());
        }
    }

    fn profile(id: &str, t: u64, stacks: &[(&[&str], u64)]) -> SpanProfile {
        let stacks: Stacks =
            stacks.iter().map(|(f, c)| (f.iter().map(|s| Arc::<str>::from(*s)).collect(), *c)).collect();
        SpanProfile {
            summary: SpanSummary {
                profile_id: ProfileId::parse(id).unwrap(),
                trace_id: TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736"),
                service_name: "svc".into(),
                span_name: "S".into(),
                samples: stacks.iter().map(|s| s.1).sum(),
                period_ns: 10_000_000,
                first_seen_ms: t,
                last_seen_ms: t + 10,
                labels: Labels::new(),
            },
            stacks,
        }
    }

    /// Every key of a table, read page by page as a reader would.
    fn read_table(data: &[u8], t: &TableRef) -> Vec<(Vec<u8>, Vec<u8>)> {
        t.pages
            .iter()
            .flat_map(|p| decode_page(&data[p.offset as usize..(p.offset + u64::from(p.len)) as usize]).unwrap())
            .collect()
    }

    #[test]
    fn a_block_round_trips_with_pages_blooms_and_a_checked_footer() {
        let mut b = BlockBuilder::default();
        // Enough span profiles for several pages of each table.
        for i in 0..3_000u64 {
            let id = format!("{:016x}", i + 1);
            b.add_span(&profile(&id, 1_000 + i, &[(&["main", "work", &format!("leaf_{}", i % 50)], 1 + i % 3)]));
        }
        b.add_span(&profile("checkout-42", 500, &[(&["main", "a"], 2)]));
        b.add_span(&profile("checkout-42", 9_000, &[(&["main", "a"], 3), (&["main", "b"], 1)]));
        let mut labels = Labels::new();
        labels.insert("service_name".into(), "svc".into());
        labels.insert("__name__".into(), "process_cpu".into());
        b.add_process(&labels, 60_000, 10_000_000, &vec![(vec![Arc::from("main"), Arc::from("idle")], 7)]);
        let (data, meta) = b.finish("blk", "replica-0", 1);
        assert_eq!(
            (meta.span_profiles, meta.min_time_ms, meta.services.as_slice()),
            (3_001, 500, &["svc".to_string()][..])
        );
        assert_eq!(meta.data_bytes as usize, data.len());

        let footer = decode_footer(&data).unwrap().unwrap();
        let spans = footer.table(Table::Spans).unwrap();
        assert!(spans.pages.len() > 1, "{} pages", spans.pages.len());
        let rows = read_table(&data, spans);
        assert_eq!(rows.len(), 3_001);
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "sorted by key");
        // A key is found in the page the index names, and the Bloom filter never says no to it.
        for (k, _) in rows.iter().step_by(97) {
            let page = spans.page_for(k).unwrap();
            let entries =
                decode_page(&data[page.offset as usize..(page.offset + u64::from(page.len)) as usize]).unwrap();
            assert!(entries.iter().any(|(e, _)| e == k));
            assert!(spans.bloom().may_contain(k));
        }
        let absent = (0..1_000u64).filter(|i| spans.bloom().may_contain(&(u64::MAX - i).to_be_bytes())).count();
        assert!(absent < 50, "{absent} false positives in 1000");
        // The two pushes of one named ID are one record.
        let named = id_key(&ProfileId::parse("checkout-42").unwrap());
        let (_, rec) = rows.iter().find(|(k, _)| *k == named).unwrap();
        let (summary, counts) = span_summary(&named, codec::decode(rec, "span").unwrap()).unwrap();
        assert_eq!((summary.samples, summary.first_seen_ms, summary.last_seen_ms, counts.len()), (6, 500, 9_010, 2));

        // The list table is newest first.
        let list = read_table(&data, footer.table(Table::List).unwrap());
        let times: Vec<u64> = list.iter().map(|(k, _)| decode_list_key(k).unwrap().0).collect();
        assert_eq!(times[0], 9_010);
        assert!(times.windows(2).all(|w| w[0] >= w[1]));

        // Any flipped byte is caught: in a page by its checksum, in the footer by its own.
        let mut bad = data.clone();
        bad[10] ^= 0x40;
        let p = &spans.pages[0];
        assert!(decode_page(&bad[p.offset as usize..(p.offset + u64::from(p.len)) as usize]).is_err());
        let mut bad = data.clone();
        let n = bad.len();
        bad[n - TRAILER_BYTES - 3] ^= 1;
        assert!(decode_footer(&bad).is_err());
        assert!(decode_footer(&data[..data.len() - 1]).is_err(), "truncated");
        // A short tail asks for the bytes the footer needs.
        assert!(matches!(decode_footer(&data[data.len() - TRAILER_BYTES..]).unwrap(), Err(n) if n > TRAILER_BYTES));
    }

    #[test]
    fn prefix_pages_cover_every_key_with_the_prefix() {
        let t = TableRef {
            name: "traces".into(),
            pages: ["a1", "b1", "b5", "c1"]
                .iter()
                .enumerate()
                .map(|(i, k)| PageRef { first_key: k.as_bytes().to_vec(), offset: i as u64, len: 1 })
                .collect(),
            entries: 8,
            bloom: Vec::new(),
        };
        let offsets = |p: &str| t.pages_for_prefix(p.as_bytes()).iter().map(|p| p.offset).collect::<Vec<_>>();
        assert_eq!(offsets("b"), [0, 1, 2], "b keys may start at the end of page a1's");
        assert_eq!(offsets("b5"), [2]);
        assert_eq!(offsets("c"), [2, 3]);
        assert_eq!(offsets("0"), Vec::<u64>::new());
        assert_eq!(t.page_for(b"b3").unwrap().offset, 1);
        assert!(t.page_for(b"0").is_none());
    }
}
