//! The bucket: blocks in object storage (S3 and compatibles through the `object_store` crate,
//! local files for single machines and tests), and the reads of a block's tables with cached
//! footers and pages. A block is `<prefix>/blocks/<id>/data` and `<prefix>/blocks/<id>/meta.json`;
//! the meta object is written last, so a block exists once its meta does.

use spanprof_proto::labels as wire;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::block::{self, BlockFooter, BlockMeta, PageRef, Table};
use crate::error::{Error, Result};
use crate::proto::push::LabelPair;

/// Decoded entries of one page.
pub type Page = Arc<Vec<(Vec<u8>, Vec<u8>)>>;

/// How long a listing of the bucket's blocks is reused before it is read again.
const META_REFRESH: Duration = Duration::from_secs(10);
/// Bytes read from a block's end in the first request: the footer of a block of a few
/// million span profiles fits.
const TAIL_GUESS: u64 = 256 << 10;

fn storage(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Bucket(format!("{what}: {e}"))
}

/// Pages cached across queries, bounded in bytes; the oldest go first.
struct PageCache {
    pages: HashMap<(String, u64), (Page, usize)>,
    order: VecDeque<(String, u64)>,
    bytes: usize,
    max_bytes: usize,
}

impl PageCache {
    fn get(&self, key: &(String, u64)) -> Option<Page> {
        self.pages.get(key).map(|(p, _)| p.clone())
    }

    fn put(&mut self, key: (String, u64), page: Page, size: usize) {
        if self.pages.insert(key.clone(), (page, size)).is_none() {
            self.order.push_back(key);
            self.bytes += size;
        }
        while self.bytes > self.max_bytes {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((_, n)) = self.pages.remove(&old) {
                self.bytes -= n;
            }
        }
    }
}

/// A bucket of blocks, with caches of block footers and pages.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// What the URL said, credentials left out (for logs and errors).
    pub display: String,
    footers: Mutex<HashMap<String, Arc<BlockFooter>>>,
    pages: Mutex<PageCache>,
    metas: Mutex<Option<(Instant, Arc<Vec<BlockMeta>>)>>,
    /// Blocks the last listing found replaced (left out of it).
    hidden: Mutex<Arc<std::collections::HashSet<String>>>,
}

impl Bucket {
    /// Opens `url`: `s3://bucket/prefix` (endpoint, region and credentials from the `AWS_*`
    /// environment: `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, …) or `file:///path`. `cache_bytes` bounds the page cache.
    pub fn open(url: &str, cache_bytes: usize) -> Result<Self> {
        super::use_ring_for_tls();
        let parsed = url::Url::parse(url).map_err(|e| Error::Config(format!("--object-store {url:?}: {e}")))?;
        let display = format!("{}://{}{}", parsed.scheme(), parsed.host_str().unwrap_or(""), parsed.path());
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match parsed.scheme() {
            "s3" | "s3a" => {
                let bucket =
                    parsed.host_str().ok_or_else(|| Error::Config(format!("--object-store {display}: no bucket")))?;
                let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                // SeaweedFS, MinIO and Ceph take path-style requests at a custom endpoint.
                if std::env::var_os("AWS_ENDPOINT").is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some() {
                    builder = builder.with_virtual_hosted_style_request(false);
                }
                // A bucket that is away fails fast: queries fall back on what is cached and the
                // uploads wait for the next tick, instead of hanging for minutes in retries.
                let client = |key| object_store::aws::AmazonS3ConfigKey::Client(key);
                let store = builder
                    .with_config(client(object_store::ClientConfigKey::ConnectTimeout), "2s")
                    .with_config(client(object_store::ClientConfigKey::Timeout), "60s")
                    .with_retry(object_store::RetryConfig {
                        max_retries: 2,
                        retry_timeout: Duration::from_secs(5),
                        backoff: Default::default(),
                    })
                    .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                    .build()
                    .map_err(|e| Error::Config(format!("--object-store {display}: {e}")))?;
                let prefix =
                    ObjectPath::parse(parsed.path().trim_matches('/')).map_err(|e| Error::Config(e.to_string()))?;
                (Arc::new(store), prefix)
            }
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| Error::Config(format!("--object-store {display}: not a local path")))?;
                std::fs::create_dir_all(&dir)?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| Error::Config(format!("--object-store {display}: {e}")))?;
                (Arc::new(store), ObjectPath::default())
            }
            other => {
                return Err(Error::Config(format!(
                    "--object-store {display}: unknown scheme {other:?} (s3:// or file://)"
                )));
            }
        };
        Ok(Bucket {
            store,
            prefix,
            display,
            footers: Mutex::new(HashMap::new()),
            pages: Mutex::new(PageCache {
                pages: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                max_bytes: cache_bytes,
            }),
            metas: Mutex::new(None),
            hidden: Mutex::new(Arc::default()),
        })
    }

    fn path(&self, block: &str, file: &str) -> ObjectPath {
        self.prefix.clone().join("blocks").join(block).join(file)
    }

    /// Writes a block: its data, then its meta (so a reader never meets a meta without data).
    /// Writing a block that exists (a retried upload) succeeds.
    pub async fn put_block(&self, data: Vec<u8>, meta: &BlockMeta) -> Result<()> {
        self.store
            .put(&self.path(&meta.id, "data"), PutPayload::from(data))
            .await
            .map_err(|e| storage("writing block data", e))?;
        let json = serde_json::to_vec(meta).map_err(|e| Error::Bucket(e.to_string()))?;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.path(&meta.id, "meta.json"), PutPayload::from(json), opts).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(storage("writing block meta", e)),
        }
        self.forget_listing();
        Ok(())
    }

    /// The meta of block `id`, if the bucket has it.
    pub async fn meta(&self, id: &str) -> Result<Option<BlockMeta>> {
        let got = match self.store.get(&self.path(id, "meta.json")).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(storage("reading a block meta", e)),
        };
        let bytes = got.bytes().await.map_err(|e| storage("reading a block meta", e))?;
        let meta: BlockMeta =
            serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(format!("block {id} meta: {e}")))?;
        Ok((meta.format == block::FORMAT_VERSION).then_some(meta))
    }

    /// Whether block `id` is in the bucket (its meta is).
    pub async fn has_block(&self, id: &str) -> Result<bool> {
        match self.store.head(&self.path(id, "meta.json")).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(storage("looking for a block", e)),
        }
    }

    fn forget_listing(&self) {
        if let Ok(mut m) = self.metas.lock() {
            m.take();
        }
    }

    /// Every block's meta as listed, replaced blocks included (compaction deletes them).
    pub async fn all_blocks(&self) -> Result<Vec<BlockMeta>> {
        self.forget_listing();
        let (metas, _) = self.list_metas().await?;
        Ok(metas)
    }

    /// Every visible block's meta ([`visible`]), oldest block first; a listing at most [`META_REFRESH`] old is reused.
    /// A meta that cannot be read or parsed is left out (counted by the caller as an error).
    /// When the bucket cannot be listed, the last listing is used again for [`META_REFRESH`]
    /// (and the error returned once), so queries neither fail nor wait on every request.
    pub async fn blocks(&self) -> Result<(Arc<Vec<BlockMeta>>, usize)> {
        let last = self.metas.lock().ok().and_then(|m| m.clone());
        if let Some((at, metas)) = &last
            && at.elapsed() < META_REFRESH
        {
            return Ok((metas.clone(), 0));
        }
        let (metas, bad) = match self.list_metas().await {
            Ok(l) => l,
            Err(e) => {
                if let Ok(mut m) = self.metas.lock() {
                    *m = Some((Instant::now(), last.map(|l| l.1).unwrap_or_default()));
                }
                return Err(e);
            }
        };
        let ids: Vec<String> = metas.iter().map(|m| m.id.clone()).collect();
        let mut metas = visible(metas);
        metas.sort_by(|a, b| a.id.cmp(&b.id));
        let shown: std::collections::HashSet<&str> = metas.iter().map(|m| m.id.as_str()).collect();
        let hidden: std::collections::HashSet<String> =
            ids.into_iter().filter(|id| !shown.contains(id.as_str())).collect();
        let metas = Arc::new(metas);
        if let Ok(mut m) = self.metas.lock() {
            *m = Some((Instant::now(), metas.clone()));
        }
        if let Ok(mut h) = self.hidden.lock() {
            *h = Arc::new(hidden);
        }
        Ok((metas, bad))
    }

    /// Blocks the last listing found replaced by another block.
    pub fn hidden(&self) -> Arc<std::collections::HashSet<String>> {
        self.hidden.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Lists and reads every block meta (no cache); returns them and how many were unreadable.
    async fn list_metas(&self) -> Result<(Vec<BlockMeta>, usize)> {
        use futures_util::TryStreamExt;
        let listing: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.prefix.clone().join("blocks")))
            .try_collect()
            .await
            .map_err(|e| storage("listing blocks", e))?;
        let mut metas = Vec::new();
        let mut bad = 0;
        for o in listing.iter().filter(|o| o.location.filename() == Some("meta.json")) {
            let read = async {
                let bytes = self.store.get(&o.location).await?.bytes().await?;
                Ok::<_, object_store::Error>(bytes)
            };
            match read
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<BlockMeta>(&b).map_err(|e| e.to_string()))
            {
                Ok(m) if m.format == block::FORMAT_VERSION => metas.push(m),
                Ok(m) => {
                    tracing::error!(block = %m.id, format = m.format, "a block of an unknown format is skipped");
                    bad += 1;
                }
                Err(e) => {
                    tracing::error!(object = %o.location, error = %e, "an unreadable block meta is skipped");
                    bad += 1;
                }
            }
        }
        Ok((metas, bad))
    }

    /// Deletes a block: its meta first, so readers stop seeing it, then its data.
    pub async fn delete_block(&self, id: &str) -> Result<()> {
        for file in ["meta.json", "data"] {
            match self.store.delete(&self.path(id, file)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage("deleting a block", e)),
            }
        }
        self.forget_listing();
        if let Ok(mut f) = self.footers.lock() {
            f.remove(id);
        }
        Ok(())
    }

    async fn range(&self, meta: &BlockMeta, r: Range<u64>) -> Result<bytes::Bytes> {
        self.store
            .get_range(&self.path(&meta.id, "data"), r)
            .await
            .map_err(|e| storage(&format!("reading block {}", meta.id), e))
    }

    /// The footer of a block (cached).
    pub async fn footer(&self, meta: &BlockMeta) -> Result<Arc<BlockFooter>> {
        if let Some(f) = self.footers.lock().ok().and_then(|f| f.get(&meta.id).cloned()) {
            return Ok(f);
        }
        let len = meta.data_bytes;
        let mut tail = self.range(meta, len.saturating_sub(TAIL_GUESS)..len).await?;
        let footer = match block::decode_footer(&tail)? {
            Ok(f) => f,
            Err(need) => {
                tail = self.range(meta, len.saturating_sub(need as u64)..len).await?;
                block::decode_footer(&tail)?.map_err(|_| Error::Corrupt(format!("block {}: footer", meta.id)))?
            }
        };
        let footer = Arc::new(footer);
        if let Ok(mut f) = self.footers.lock() {
            f.insert(meta.id.clone(), footer.clone());
        }
        Ok(footer)
    }

    /// One page of a block, decoded and checked (cached).
    pub async fn page(&self, meta: &BlockMeta, page: &PageRef) -> Result<Page> {
        let key = (meta.id.clone(), page.offset);
        if let Some(p) = self.pages.lock().ok().and_then(|c| c.get(&key)) {
            return Ok(p);
        }
        let end = page
            .offset
            .checked_add(u64::from(page.len))
            .ok_or_else(|| Error::Corrupt(format!("block {}: page past the end", meta.id)))?;
        let bytes = self.range(meta, page.offset..end).await?;
        let entries =
            Arc::new(block::decode_page(&bytes).map_err(|e| Error::Corrupt(format!("block {}: {e}", meta.id)))?);
        if let Ok(mut c) = self.pages.lock() {
            c.put(key, entries.clone(), bytes.len());
        }
        Ok(entries)
    }

    /// The value of `key` in `table`, if the block has it.
    pub async fn get(&self, meta: &BlockMeta, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let footer = self.footer(meta).await?;
        let t = footer.table(table)?;
        let Some(page) = t.page_for(key) else { return Ok(None) };
        let entries = self.page(meta, page).await?;
        Ok(entries.binary_search_by(|(k, _)| k.as_slice().cmp(key)).ok().map(|i| entries[i].1.clone()))
    }
}

/// Reads of one block's tables: span profiles, traces, listing entries and whole-process
/// buckets, resolved through the block's own frame and stack dictionary.
pub struct BlockRead<'a> {
    pub bucket: &'a Bucket,
    pub meta: &'a BlockMeta,
}

impl BlockRead<'_> {
    async fn footer(&self) -> Result<Arc<BlockFooter>> {
        self.bucket.footer(self.meta).await
    }

    /// Frames of the block's stack counts, root first.
    pub async fn resolve(&self, counts: &super::codec::Counts) -> Result<super::Stacks> {
        let mut frames: HashMap<u32, Arc<str>> = HashMap::new();
        let mut out = Vec::with_capacity(counts.len());
        for &(sid, count) in counts {
            let bytes = self
                .bucket
                .get(self.meta, Table::Stacks, &sid.to_be_bytes())
                .await?
                .ok_or_else(|| Error::Corrupt(format!("block {}: stack {sid} missing", self.meta.id)))?;
            let rec: super::codec::StackRecord = super::codec::decode(&bytes, "block stack")?;
            let mut names = Vec::with_capacity(rec.frame_ids.len());
            for f in rec.frame_ids {
                if let Some(n) = frames.get(&f) {
                    names.push(n.clone());
                    continue;
                }
                let name = self
                    .bucket
                    .get(self.meta, Table::Frames, &f.to_be_bytes())
                    .await?
                    .ok_or_else(|| Error::Corrupt(format!("block {}: frame {f} missing", self.meta.id)))?;
                let name: Arc<str> = Arc::from(String::from_utf8_lossy(&name).as_ref());
                frames.insert(f, name.clone());
                names.push(name);
            }
            out.push((names, count));
        }
        Ok(out)
    }

    /// The span record of `id`, if the block has it (the Bloom filter rules most blocks out).
    pub async fn span_record(&self, id: &crate::model::ProfileId) -> Result<Option<super::codec::SpanRecord>> {
        let key = super::shared::id_key(id);
        let footer = self.footer().await?;
        if !footer.table(Table::Spans)?.bloom().may_contain(&key) {
            return Ok(None);
        }
        match self.bucket.get(self.meta, Table::Spans, &key).await? {
            Some(v) => {
                let mut rec: super::codec::SpanRecord = super::codec::decode(&v, "block span")?;
                rec.labels = self.label_set(rec.block_series, &mut HashMap::new()).await?;
                Ok(Some(rec))
            }
            None => Ok(None),
        }
    }

    /// The labels of a span record's `block_series` (0: none; its labels were inline).
    async fn label_set(&self, block_series: u32, seen: &mut HashMap<u32, Vec<LabelPair>>) -> Result<Vec<LabelPair>> {
        let Some(series) = block_series.checked_sub(1) else { return Ok(Vec::new()) };
        if let Some(l) = seen.get(&series) {
            return Ok(l.clone());
        }
        let bytes = self
            .bucket
            .get(self.meta, Table::Series, &series.to_be_bytes())
            .await?
            .ok_or_else(|| Error::Corrupt(format!("block {}: series {series} missing", self.meta.id)))?;
        let labels = super::codec::decode::<super::shared::SeriesRecord>(&bytes, "block series")?.labels;
        seen.insert(series, labels.clone());
        Ok(labels)
    }

    /// The span profile of `id`, resolved, if the block has it.
    pub async fn span(&self, id: &crate::model::ProfileId) -> Result<Option<super::SpanProfile>> {
        let Some(rec) = self.span_record(id).await? else { return Ok(None) };
        let counts = rec.stack_counts()?;
        let stacks = self.resolve(&counts).await?;
        Ok(Some(super::SpanProfile { summary: super::shared::summary(id.clone(), rec), stacks }))
    }

    /// Profile IDs of the block's span profiles in trace `trace`.
    pub async fn trace_ids(&self, trace: crate::model::TraceId) -> Result<Vec<crate::model::ProfileId>> {
        let prefix = trace.0.to_be_bytes();
        let footer = self.footer().await?;
        let t = footer.table(Table::Traces)?;
        if !t.bloom().may_contain(&prefix) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for page in t.pages_for_prefix(&prefix) {
            for (k, _) in self.bucket.page(self.meta, page).await?.iter() {
                if let Some(id) = block::trace_entry_id(k, trace) {
                    out.push(id?);
                }
            }
        }
        Ok(out)
    }

    /// Listing entries last seen at or before `until_ms`, newest first, from the page that
    /// holds that time on; `visit` returns false to stop.
    pub async fn list_from(
        &self,
        until_ms: u64,
        mut visit: impl FnMut(u64, crate::model::ProfileId, block::ListEntry) -> bool,
    ) -> Result<()> {
        let footer = self.footer().await?;
        let t = footer.table(Table::List)?;
        let start_key = (!until_ms).to_be_bytes();
        let first = t.pages.partition_point(|p| p.first_key.as_slice() <= &start_key[..]).saturating_sub(1);
        for page in &t.pages[first..] {
            for (k, v) in self.bucket.page(self.meta, page).await?.iter() {
                let (last_seen, id) = block::decode_list_key(k)?;
                if last_seen > until_ms {
                    continue;
                }
                let entry: block::ListEntry = super::codec::decode(v, "block list entry")?;
                if !visit(last_seen, id, entry) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The block's span profiles counted in the span rollups `matches` selects, last seen in a
    /// minute bucket started in `[from_ms, until_ms]` (as [`super::ProfileStore::span_stats`]):
    /// from the listing, whose entries carry each profile's samples, period and label set.
    pub async fn span_stats(
        &self,
        matches: impl Fn(&crate::model::Labels) -> bool,
        from_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<super::SpanStat>> {
        let end = (until_ms / super::BUCKET_MS * super::BUCKET_MS).saturating_add(super::BUCKET_MS - 1);
        let mut entries = Vec::new();
        self.list_from(end, |last_seen, id, entry| {
            if last_seen < from_ms {
                return false;
            }
            entries.push((last_seen, id, entry));
            true
        })
        .await?;
        let mut sets = HashMap::new();
        let mut out = Vec::new();
        for (last_seen_ms, profile_id, entry) in entries {
            let mut labels: crate::model::Labels =
                self.label_set(entry.block_series, &mut sets).await?.into_iter().map(|l| (l.name, l.value)).collect();
            labels.insert(wire::SERVICE_NAME.into(), entry.service_name);
            let span_name = crate::model::rollup_span_name(&entry.span_name).to_owned();
            labels.insert(crate::selector::SPAN_NAME_LABEL.into(), span_name.clone());
            if matches(&labels) {
                let period_ns = if entry.period_ns == 0 { crate::model::DEFAULT_PERIOD_NS } else { entry.period_ns };
                out.push(super::SpanStat { profile_id, span_name, samples: entry.samples, period_ns, last_seen_ms });
            }
        }
        Ok(out)
    }

    /// The keys and labels of the block's whole-process series matching `matches`.
    async fn series_matching(
        &self,
        footer: &BlockFooter,
        matches: impl Fn(&crate::model::Labels) -> bool,
    ) -> Result<Vec<(Vec<u8>, crate::model::Labels)>> {
        let mut series = Vec::new();
        for page in &footer.table(Table::Series)?.pages {
            for (k, v) in self.bucket.page(self.meta, page).await?.iter() {
                let rec: super::shared::SeriesRecord = super::codec::decode(v, "block series")?;
                let labels: crate::model::Labels = rec.labels.into_iter().map(|l| (l.name, l.value)).collect();
                if matches(&labels) {
                    series.push((k.clone(), labels));
                }
            }
        }
        Ok(series)
    }

    /// The buckets of the series `key` started in `[from_ms rounded down to its bucket,
    /// until_ms]`, decoded: (bucket start, record) each.
    async fn buckets(
        &self,
        footer: &BlockFooter,
        key: &[u8],
        from_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<(u64, super::codec::StacksRecord)>> {
        let first_bucket = from_ms / super::shared::BUCKET_MS * super::shared::BUCKET_MS;
        let mut out = Vec::new();
        for page in footer.table(Table::Process)?.pages_for_prefix(key) {
            for (k, v) in self.bucket.page(self.meta, page).await?.iter() {
                let Some(bucket) = k.strip_prefix(key).and_then(|b| <[u8; 8]>::try_from(b).ok()) else { continue };
                let bucket = u64::from_be_bytes(bucket);
                if bucket < first_bucket || bucket > until_ms {
                    continue;
                }
                out.push((bucket, super::codec::decode(v, "block bucket")?));
            }
        }
        Ok(out)
    }

    /// The whole-process buckets of the block's series matching `matches`, started in
    /// `[from_ms rounded down to its bucket, until_ms]`: (period, stack counts) each.
    pub async fn process(
        &self,
        matches: impl Fn(&crate::model::Labels) -> bool,
        from_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<(u64, super::Stacks)>> {
        let footer = self.footer().await?;
        let mut out = Vec::new();
        for (key, _) in self.series_matching(&footer, matches).await? {
            for (_, rec) in self.buckets(&footer, &key, from_ms, until_ms).await? {
                out.push((rec.period_ns, self.resolve(&rec.to_counts()?).await?));
            }
        }
        Ok(out)
    }

    /// Per series matching `matches`, its samples per bucket in the range (as [`Self::process`]).
    pub async fn process_series(
        &self,
        matches: impl Fn(&crate::model::Labels) -> bool,
        from_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<super::SeriesPoints>> {
        let footer = self.footer().await?;
        let mut out = Vec::new();
        for (key, labels) in self.series_matching(&footer, matches).await? {
            let points: Vec<(u64, u64, u64)> = self
                .buckets(&footer, &key, from_ms, until_ms)
                .await?
                .into_iter()
                .map(|(bucket, rec)| (bucket, rec.counts.iter().sum(), rec.period_ns))
                .collect();
            if !points.is_empty() {
                out.push(super::SeriesPoints { labels, points });
            }
        }
        Ok(out)
    }
}

/// A block's whole frame and stack dictionary in memory: compaction translates the block's
/// records into the new block by ID through it, each distinct stack once.
pub struct BlockDictionary {
    frames: HashMap<u32, Arc<str>>,
    stacks: HashMap<u32, Vec<u32>>,
}

impl block::StackSource for BlockDictionary {
    fn frames_of(&mut self, id: u32) -> Result<Vec<u32>> {
        self.stacks.get(&id).cloned().ok_or_else(|| Error::Corrupt(format!("block stack {id} missing")))
    }

    fn frame_name(&mut self, id: u32) -> Result<Arc<str>> {
        self.frames.get(&id).cloned().ok_or_else(|| Error::Corrupt(format!("block frame {id} missing")))
    }
}

fn u32_key(k: &[u8]) -> Result<u32> {
    <[u8; 4]>::try_from(k).map(u32::from_be_bytes).map_err(|_| Error::Corrupt("block key".into()))
}

impl BlockRead<'_> {
    /// The block's frames and stacks, read whole.
    pub async fn dictionary(&self) -> Result<BlockDictionary> {
        let footer = self.footer().await?;
        let mut dict = BlockDictionary { frames: HashMap::new(), stacks: HashMap::new() };
        for page in &footer.table(Table::Frames)?.pages {
            for (k, v) in self.bucket.page(self.meta, page).await?.iter() {
                dict.frames.insert(u32_key(k)?, Arc::from(String::from_utf8_lossy(v).as_ref()));
            }
        }
        for page in &footer.table(Table::Stacks)?.pages {
            for (k, v) in self.bucket.page(self.meta, page).await?.iter() {
                dict.stacks.insert(
                    u32_key(k)?,
                    super::codec::decode::<super::codec::StackRecord>(v, "block stack")?.frame_ids,
                );
            }
        }
        Ok(dict)
    }

    /// Every span record of the block with its key, labels restored, stack IDs the block's.
    pub async fn all_span_records(&self) -> Result<Vec<(Vec<u8>, super::codec::SpanRecord)>> {
        let footer = self.footer().await?;
        let mut out = Vec::new();
        let mut label_sets = HashMap::new();
        for page in &footer.table(Table::Spans)?.pages {
            for (k, v) in self.bucket.page(self.meta, page).await?.iter() {
                let mut rec: super::codec::SpanRecord = super::codec::decode(v, "block span")?;
                rec.labels = self.label_set(rec.block_series, &mut label_sets).await?;
                rec.block_series = 0;
                out.push((k.clone(), rec));
            }
        }
        Ok(out)
    }

    /// Every whole-process bucket record of the block: series labels, bucket start, record
    /// (stack IDs the block's).
    pub async fn all_process_records(&self) -> Result<Vec<(crate::model::Labels, u64, super::codec::StacksRecord)>> {
        let footer = self.footer().await?;
        let mut series: HashMap<Vec<u8>, crate::model::Labels> = HashMap::new();
        for page in &footer.table(Table::Series)?.pages {
            for (k, v) in self.bucket.page(self.meta, page).await?.iter() {
                let rec: super::shared::SeriesRecord = super::codec::decode(v, "block series")?;
                series.insert(k.clone(), rec.labels.into_iter().map(|l| (l.name, l.value)).collect());
            }
        }
        let mut out = Vec::new();
        for page in &footer.table(Table::Process)?.pages {
            for (k, v) in self.bucket.page(self.meta, page).await?.iter() {
                let (s, b) = k.split_at_checked(4).ok_or_else(|| Error::Corrupt("block process key".into()))?;
                let labels =
                    series.get(s).cloned().ok_or_else(|| Error::Corrupt("block process series missing".into()))?;
                let bucket = <[u8; 8]>::try_from(b)
                    .map(u64::from_be_bytes)
                    .map_err(|_| Error::Corrupt("block process key".into()))?;
                out.push((labels, bucket, super::codec::decode(v, "block bucket")?));
            }
        }
        Ok(out)
    }
}

impl BlockRead<'_> {
    /// Every span profile of the block, resolved.
    pub async fn all_spans(&self) -> Result<Vec<super::SpanProfile>> {
        let mut out = Vec::new();
        for (k, rec) in self.all_span_records().await? {
            let stacks = self.resolve(&rec.stack_counts()?).await?;
            out.push(super::SpanProfile {
                summary: super::shared::summary(super::shared::id_from_key(&k)?, rec),
                stacks,
            });
        }
        Ok(out)
    }

    /// Every whole-process bucket of the block, resolved: series labels, bucket start, period,
    /// stacks.
    pub async fn all_process(&self) -> Result<Vec<(crate::model::Labels, u64, u64, super::Stacks)>> {
        let mut out = Vec::new();
        for (labels, bucket, rec) in self.all_process_records().await? {
            out.push((labels, bucket, rec.period_ns, self.resolve(&rec.to_counts()?).await?));
        }
        Ok(out)
    }
}

/// Which listed blocks a query reads: a block another block replaces (compaction) is left out
/// once the replacing block exists. Should two blocks claim to replace the same block (two
/// compactors despite the lease), only the one with the smallest ID counts, so nothing is read
/// twice.
pub fn visible(metas: Vec<BlockMeta>) -> Vec<BlockMeta> {
    let mut claimed: HashMap<&str, &str> = HashMap::new();
    let mut invalid: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // Smallest ID first: it claims first.
    let mut order: Vec<&BlockMeta> = metas.iter().filter(|m| !m.replaces.is_empty()).collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    for m in order {
        if m.replaces.iter().any(|r| claimed.contains_key(r.as_str())) {
            invalid.insert(&m.id);
            continue;
        }
        for r in &m.replaces {
            claimed.insert(r, &m.id);
        }
    }
    let hidden: std::collections::HashSet<String> =
        claimed.keys().map(|k| k.to_string()).chain(invalid.iter().map(|k| k.to_string())).collect();
    metas.into_iter().filter(|m| !hidden.contains(&m.id)).collect()
}

/// The compaction lease: `compactor/lease-<generation>` objects, created with "create if
/// absent" only (so every S3-compatible store and local files can do it): the holder of the
/// highest generation holds the lease until it expires; taking it over means creating the next
/// generation, which exactly one contender manages.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub holder: String,
    pub expires_ms: u64,
}

impl Bucket {
    fn lease_path(&self, generation: u64) -> ObjectPath {
        self.prefix.clone().join("compactor").join(format!("lease-{generation:020}"))
    }

    /// Takes (or renews) the compaction lease for `holder` until `now_ms + ttl_ms`; false when
    /// another holder's lease has not expired or another contender won.
    pub async fn take_lease(&self, holder: &str, now_ms: u64, ttl_ms: u64) -> Result<bool> {
        let (generations, newest) = self.newest_lease().await?;
        if let Some((_, Some(l))) = &newest
            && l.holder != holder
            && l.expires_ms > now_ms
        {
            return Ok(false);
        }
        let next = newest.map_or(0, |(g, _)| g + 1);
        if !self.write_lease(next, &Lease { holder: holder.to_owned(), expires_ms: now_ms + ttl_ms }).await? {
            return Ok(false);
        }
        // Older generations are history: the newest one decides.
        for g in generations.into_iter().filter(|&g| g + 2 <= next) {
            let _ = self.store.delete(&self.lease_path(g)).await;
        }
        Ok(true)
    }

    /// Gives the lease up if `holder` has it (a graceful stop), so another replica compacts
    /// at once instead of when it expires: the next generation, expired. Losing that race to a
    /// contender is as good.
    pub async fn release_lease(&self, holder: &str) -> Result<()> {
        if let (_, Some((g, Some(l)))) = self.newest_lease().await?
            && l.holder == holder
        {
            self.write_lease(g + 1, &Lease { holder: String::new(), expires_ms: 0 }).await?;
        }
        Ok(())
    }

    /// Every lease generation in the bucket, and the newest with its lease (`None` if it
    /// cannot be parsed: then it holds nothing).
    async fn newest_lease(&self) -> Result<(Vec<u64>, Option<(u64, Option<Lease>)>)> {
        use futures_util::TryStreamExt;
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.prefix.clone().join("compactor")))
            .try_collect()
            .await
            .map_err(|e| storage("listing the lease", e))?;
        let generations: Vec<u64> =
            listed.iter().filter_map(|o| o.location.filename()?.strip_prefix("lease-")?.parse::<u64>().ok()).collect();
        let Some(&g) = generations.iter().max() else { return Ok((generations, None)) };
        let bytes =
            self.store.get(&self.lease_path(g)).await.map_err(|e| storage("reading the lease", e))?.bytes().await;
        let lease = bytes.ok().and_then(|b| serde_json::from_slice(&b).ok());
        Ok((generations, Some((g, lease))))
    }

    /// Writes lease generation `generation` unless it exists: false when another contender
    /// wrote it first.
    async fn write_lease(&self, generation: u64, lease: &Lease) -> Result<bool> {
        let body = serde_json::to_vec(lease).map_err(|e| Error::Bucket(e.to_string()))?;
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.lease_path(generation), PutPayload::from(body), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(storage("writing the lease", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, replaces: &[&str]) -> BlockMeta {
        BlockMeta {
            format: block::FORMAT_VERSION,
            id: id.into(),
            replica: "r".into(),
            created_ms: 0,
            min_time_ms: 0,
            max_time_ms: 0,
            span_profiles: 0,
            samples: 0,
            data_bytes: 0,
            data_crc32: 0,
            services: Vec::new(),
            series: Vec::new(),
            replaces: replaces.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn span(id: u64, pod: &str, stacks: &[(&[&str], u64)]) -> super::super::SpanProfile {
        let labels: crate::model::Labels =
            [("pod".to_owned(), pod.to_owned()), ("namespace".to_owned(), "shop".to_owned())].into();
        super::super::SpanProfile {
            summary: super::super::SpanSummary {
                profile_id: crate::model::ProfileId::Span(id),
                trace_id: None,
                service_name: "ride".into(),
                span_name: "Order".into(),
                samples: stacks.iter().map(|s| s.1).sum(),
                period_ns: 10_000_000,
                first_seen_ms: 1_000,
                last_seen_ms: 2_000,
                labels,
            },
            stacks: stacks.iter().map(|(f, c)| (f.iter().map(|s| Arc::<str>::from(*s)).collect(), *c)).collect(),
        }
    }

    #[tokio::test]
    async fn span_labels_are_stored_once_per_block_and_read_back_with_each_profile() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Bucket::open(&format!("file://{}", dir.path().display()), 1 << 20).unwrap();
        let mut b = block::BlockBuilder::default();
        let spans = [
            span(1, "p1", &[(&["main", "a"], 2)]),
            span(2, "p2", &[(&["main", "b"], 1)]),
            span(3, "p1", &[(&["main", "a"], 5)]),
        ];
        for s in &spans {
            b.add_span(s);
        }
        let process: crate::model::Labels = [("service_name".to_owned(), "ride".to_owned())].into();
        b.add_process(&process, 60_000, 10_000_000, &vec![(vec![Arc::<str>::from("idle")], 3)]);
        let (data, meta) = b.finish("1-r-0", "r", 5_000);
        assert_eq!(meta.series, vec![process.clone()], "planning sees the whole-process series only");
        bucket.put_block(data, &meta).await.unwrap();
        let read = BlockRead { bucket: &bucket, meta: &meta };
        for s in &spans {
            let got = read.span(&s.summary.profile_id).await.unwrap().unwrap();
            assert_eq!(got.summary, s.summary);
            assert_eq!(got.stacks, s.stacks);
        }
        let all = read.all_spans().await.unwrap();
        assert_eq!(
            all.iter().map(|p| p.summary.clone()).collect::<Vec<_>>(),
            spans.iter().map(|p| p.summary.clone()).collect::<Vec<_>>()
        );
        assert_eq!(read.all_process().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn one_compactor_holds_the_lease_until_it_expires_or_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Bucket::open(&format!("file://{}", dir.path().display()), 1 << 20).unwrap();
        assert!(bucket.take_lease("a", 1_000, 60_000).await.unwrap());
        assert!(!bucket.take_lease("b", 2_000, 60_000).await.unwrap(), "held by a");
        assert!(bucket.take_lease("a", 3_000, 60_000).await.unwrap(), "a renews");
        bucket.release_lease("b").await.unwrap();
        assert!(!bucket.take_lease("b", 4_000, 60_000).await.unwrap(), "only the holder releases");
        bucket.release_lease("a").await.unwrap();
        assert!(bucket.take_lease("b", 5_000, 60_000).await.unwrap(), "released: b at once");
        assert!(!bucket.take_lease("a", 6_000, 60_000).await.unwrap());
        assert!(bucket.take_lease("a", 70_000, 60_000).await.unwrap(), "b's lease expired");
    }

    #[test]
    fn a_replaced_block_is_never_read_beside_its_replacement() {
        let ids = |v: Vec<BlockMeta>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(visible(vec![meta("1", &[]), meta("2", &[]), meta("3", &["1", "2"])])), ["3"]);
        // Two compactors merged overlapping sets: the smaller ID's output counts, the other
        // output is left out with everything it claims that the first does not.
        let v = ids(visible(vec![
            meta("1", &[]),
            meta("2", &[]),
            meta("4", &[]),
            meta("5", &["1", "2"]),
            meta("6", &["2", "4"]),
        ]));
        assert_eq!(v, ["4", "5"]);
    }
}
