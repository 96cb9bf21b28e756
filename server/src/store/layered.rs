//! The store of a server with `--object-store`: the local embedded store (the write-ahead and the
//! recent data) in front of the blocks in the bucket, queried as one. Profiles with the same ID
//! merge across the local store and every block, as an insert would have merged them.
//!
//! The local data lives in generations ([`super::generations`]): the head takes inserts and is
//! regularly sealed; a sealed generation is read once into a block ([`LayeredStore::ship`]),
//! uploaded, and then dropped whole. A query reads every local generation and the bucket's
//! blocks but those the local generations become (theirs and the peers'), so each row is seen
//! exactly once at every moment: a block counts once its generation is gone.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::block::{BlockBuilder, BlockMeta};
use super::bucket::{BlockRead, Bucket};
use super::generations::{Generation, Generations};
use super::peers::{LocalAnswer, LocalQuery, Peers, WireStacks, mark_partial};
use super::shared::id_key;
use super::{
    Cursor, GcStats, InsertStats, Page, ProcessProfile, ProcessQuery, ProfileStore, Retention, RetentionStats,
    SeriesPoints, SpanProfile, SpanQuery, SpanStat, SpanSummary, Stacks, StoreStats,
};
use crate::error::{Error, Result};
use crate::model::{Labels, ProfileId, SeriesBatch, TraceId, rescale_count};

/// How the bucket side is doing, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct BucketStatus {
    /// 1 when the last upload (or the bucket listing) failed: queries may miss blocks, and data
    /// waits on local disk.
    pub degraded: Gauge,
    pub blocks_uploaded: Counter,
    pub upload_failures: Counter,
    /// Blocks (or their pages) skipped because they could not be read or failed their checksum.
    pub block_read_errors: Counter,
    /// Peer calls that failed (the answer was partial).
    pub peer_errors: Counter,
    /// Blocks merged into larger ones by compaction, and blocks it deleted after their grace.
    pub blocks_compacted: Counter,
    pub blocks_deleted: Counter,
    /// The visible blocks and their data bytes, as last listed.
    pub bucket_blocks: Gauge,
    pub bucket_block_bytes: Gauge,
    /// Local generations sealed and not uploaded yet.
    pub sealed_generations: Gauge,
    pub last_error: Mutex<Option<String>>,
}

impl BucketStatus {
    pub fn is_degraded(&self) -> bool {
        self.degraded.get() != 0
    }

    fn listed(&self, visible: &[BlockMeta]) {
        self.bucket_blocks.set(visible.len() as i64);
        self.bucket_block_bytes.set(visible.iter().map(|m| m.data_bytes).sum::<u64>() as i64);
    }

    fn failed(&self, what: &str, e: &Error) {
        self.degraded.set(1);
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(format!("{what}: {e}"));
        }
    }
}

/// Local store + blocks, one [`ProfileStore`].
pub struct LayeredStore {
    local: Generations,
    bucket: Arc<Bucket>,
    runtime: tokio::runtime::Handle,
    replica: String,
    pub status: Arc<BucketStatus>,
    /// The other replicas, asked for their local data (`--peers`).
    peers: Option<Peers>,
    /// Blocks this replica uploaded lately, for peers whose bucket listing lags.
    recent: Mutex<VecDeque<(Instant, String)>>,
    /// One upload at a time (the interval's and the shutdown's may overlap).
    shipping: Mutex<()>,
}

/// How long an uploaded block is announced to peers as recent: longer than a bucket listing
/// is reused.
const RECENT_BLOCK: Duration = Duration::from_secs(60);

/// What shapes which blocks a query reads: the blocks local generations become, this replica's
/// and the peers' (their data came from them directly), and blocks peers uploaded lately (maybe
/// not listed here yet).
#[derive(Default)]
struct PeerView {
    skip: HashSet<String>,
    recent: Vec<String>,
}

impl PeerView {
    fn of(answers: &[LocalAnswer], local: &LocalView) -> Self {
        let mut skip: HashSet<String> = answers.iter().flat_map(|a| a.local_blocks.iter().cloned()).collect();
        skip.extend(local.block_ids());
        PeerView { skip, recent: answers.iter().flat_map(|a| a.recent_blocks.iter().cloned()).collect() }
    }
}

/// The local generations one query reads, fixed for the whole query.
struct LocalView(Vec<Arc<Generation>>);

impl LocalView {
    fn block_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().map(|g| g.block_id.clone())
    }

    fn summaries(&self, id: &ProfileId) -> Result<Vec<SpanSummary>> {
        let mut out = Vec::new();
        for g in &self.0 {
            out.extend(g.store.span_summary(id)?);
        }
        Ok(out)
    }

    fn profiles(&self, id: &ProfileId) -> Result<Vec<SpanProfile>> {
        let mut out = Vec::new();
        for g in &self.0 {
            out.extend(g.store.span_profile(id.clone())?);
        }
        Ok(out)
    }

    fn trace_ids(&self, trace: TraceId) -> Result<BTreeSet<ProfileId>> {
        let mut out = BTreeSet::new();
        for g in &self.0 {
            out.extend(g.store.trace_ids(trace)?);
        }
        Ok(out)
    }

    fn process(&self, q: &ProcessQuery) -> Result<Vec<(u64, Stacks)>> {
        let mut out = Vec::new();
        for g in &self.0 {
            out.extend(g.store.process_profile(q)?.map(|p| (p.period_ns, p.stacks)));
        }
        Ok(out)
    }

    fn process_series(&self, q: &ProcessQuery) -> Result<Vec<SeriesPoints>> {
        let mut out = Vec::new();
        for g in &self.0 {
            out.extend(g.store.process_series(q)?);
        }
        Ok(out)
    }

    fn span_stats(&self, q: &ProcessQuery) -> Result<Vec<SpanStat>> {
        let mut out = Vec::new();
        for g in &self.0 {
            out.extend(g.store.span_stats(q)?);
        }
        Ok(out)
    }

    fn series(&self) -> Result<Vec<Labels>> {
        let mut out = Vec::new();
        for g in &self.0 {
            out.extend(g.store.series()?);
        }
        Ok(out)
    }

    /// Names from every generation (services, label names or values), sorted, once each.
    fn names(&self, f: impl Fn(&dyn ProfileStore) -> Result<Vec<String>>) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for g in &self.0 {
            out.extend(f(&g.store)?);
        }
        Ok(out)
    }

    /// Listing candidates (filters that change on merge left to the caller), `want` from each
    /// generation.
    fn candidates(&self, q: &SpanQuery, after: Option<&(u64, Vec<u8>)>, want: usize) -> Result<Vec<Candidate>> {
        let local_q = SpanQuery {
            min_samples: 0,
            until_ms: None,
            trace_id: None,
            limit: want,
            after: after.map(|(t, k)| cursor(*t, k)).transpose()?,
            ..q.clone()
        };
        let mut out = Vec::new();
        for g in &self.0 {
            out.extend(g.store.search_spans(&local_q)?.profiles.into_iter().map(|s| Candidate {
                last_seen_ms: s.last_seen_ms,
                key: id_key(&s.profile_id),
                id: s.profile_id,
            }));
        }
        Ok(out)
    }
}

/// Parts of the same span profiles (from generations, blocks and peers) merged per profile as
/// [`merge_summaries`] merges them: samples on the smallest period, the latest last seen.
pub fn merge_span_stats(parts: Vec<SpanStat>) -> Vec<SpanStat> {
    let mut by_id: HashMap<ProfileId, Vec<SpanStat>> = HashMap::with_capacity(parts.len());
    for p in parts {
        by_id.entry(p.profile_id.clone()).or_default().push(p);
    }
    by_id
        .into_values()
        .filter_map(|parts| {
            let period = parts.iter().map(|p| p.period_ns).filter(|&p| p > 0).min().unwrap_or(0);
            let mut iter = parts.into_iter();
            let mut merged = iter.next()?;
            merged.samples = rescale_count(merged.samples, merged.period_ns, period);
            merged.period_ns = period;
            for p in iter {
                merged.samples = merged.samples.saturating_add(rescale_count(p.samples, p.period_ns, period));
                merged.last_seen_ms = merged.last_seen_ms.max(p.last_seen_ms);
            }
            Some(merged)
        })
        .collect()
}

/// The order parts of one profile merge in: earliest first, so every replica merges alike.
fn part_order(s: &SpanSummary) -> (u64, u64, u64, u64) {
    (s.first_seen_ms, s.period_ns, s.last_seen_ms, s.samples)
}

/// Merges the metadata of parts of one profile ID from several places, as inserting them one
/// after another would have: samples on the smallest period, first/last seen widened, the
/// earliest part's trace, name and service kept, labels joined. Deterministic whatever the order
/// of `parts`, so every replica answers alike.
pub fn merge_summaries(mut parts: Vec<SpanSummary>) -> Option<SpanSummary> {
    parts.sort_by_key(part_order);
    let period = parts.iter().map(|p| p.period_ns).filter(|&p| p > 0).min().unwrap_or(0);
    let mut iter = parts.into_iter();
    let mut summary = iter.next()?;
    summary.samples = rescale_count(summary.samples, summary.period_ns, period);
    for s in iter {
        summary.samples = summary.samples.saturating_add(rescale_count(s.samples, s.period_ns, period));
        summary.first_seen_ms = summary.first_seen_ms.min(s.first_seen_ms);
        summary.last_seen_ms = summary.last_seen_ms.max(s.last_seen_ms);
        summary.trace_id = summary.trace_id.or(s.trace_id);
        if summary.span_name.is_empty() {
            summary.span_name = s.span_name;
        }
        for (k, v) in s.labels {
            summary.labels.entry(k).or_insert(v);
        }
    }
    summary.period_ns = period;
    Some(summary)
}

/// Merges parts of one profile ID: [`merge_summaries`], and stack counts rescaled onto the
/// smallest period and added.
pub fn merge_span_parts(parts: Vec<SpanProfile>) -> Option<SpanProfile> {
    let period = parts.iter().map(|p| p.summary.period_ns).filter(|&p| p > 0).min().unwrap_or(0);
    let mut stacks: HashMap<Vec<Arc<str>>, u64> = HashMap::new();
    let mut summaries = Vec::with_capacity(parts.len());
    for p in parts {
        for (frames, count) in p.stacks {
            *stacks.entry(frames).or_default() += rescale_count(count, p.summary.period_ns, period);
        }
        summaries.push(p.summary);
    }
    let mut summary = merge_summaries(summaries)?;
    let mut stacks: Stacks = stacks.into_iter().collect();
    stacks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    summary.samples = stacks.iter().map(|s| s.1).sum();
    Some(SpanProfile { summary, stacks })
}

/// Adds whole-process parts (period, stacks) up on the smallest period.
pub fn merge_process_parts(parts: Vec<(u64, Stacks)>) -> Option<ProcessProfile> {
    let period = parts.iter().map(|p| p.0).filter(|&p| p > 0).min()?;
    let mut stacks: HashMap<Vec<Arc<str>>, u64> = HashMap::new();
    for (p, part) in parts {
        for (frames, count) in part {
            *stacks.entry(frames).or_default() += rescale_count(count, p, period);
        }
    }
    let mut stacks: Stacks = stacks.into_iter().collect();
    stacks.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Some(ProcessProfile { period_ns: period, stacks })
}

/// A listing candidate: last seen (in its source), profile ID, its key for ordering.
struct Candidate {
    last_seen_ms: u64,
    key: Vec<u8>,
    id: ProfileId,
}

impl LayeredStore {
    pub fn new(
        local: Generations,
        bucket: Arc<Bucket>,
        runtime: tokio::runtime::Handle,
        replica: String,
        peers: Option<Peers>,
    ) -> Self {
        LayeredStore {
            local,
            bucket,
            runtime,
            replica,
            status: Arc::default(),
            peers,
            recent: Mutex::new(VecDeque::new()),
            shipping: Mutex::new(()),
        }
    }

    fn local_view(&self) -> Result<LocalView> {
        Ok(LocalView(self.local.all()?))
    }

    /// Asks every peer `q`. A peer that fails is counted, logged and makes the answer partial.
    fn ask_peers(&self, q: LocalQuery, local: &LocalView) -> (Vec<LocalAnswer>, PeerView) {
        let Some(peers) = &self.peers else { return (Vec::new(), PeerView::of(&[], local)) };
        let (answers, failed) = self.runtime.block_on(peers.ask(&q));
        if !failed.is_empty() {
            self.status.peer_errors.inc_by(failed.len() as u64);
            tracing::warn!(peers = ?failed, "peers did not answer: the answer misses their local data");
            mark_partial(format!("peers did not answer: {}", failed.join("; ")));
        }
        let view = PeerView::of(&answers, local);
        (answers, view)
    }

    /// The blocks a query reads: the bucket's but those local generations (this replica's and
    /// the peers') become, and blocks peers uploaded lately that the listing does not have yet.
    /// A bucket that cannot be listed leaves its blocks out (counted, logged, the answer marked
    /// partial).
    fn sources(&self, view: &PeerView) -> Vec<Arc<BlockMeta>> {
        let mut out = Vec::new();
        let skip = &view.skip;
        match self.runtime.block_on(self.bucket.blocks()) {
            Ok((metas, bad)) => {
                if bad > 0 {
                    self.status.block_read_errors.inc_by(bad as u64);
                }
                self.status.listed(&metas);
                let listed: HashSet<&str> = metas.iter().map(|m| m.id.as_str()).collect();
                let hidden = self.bucket.hidden();
                for m in metas.iter().filter(|m| !skip.contains(&m.id)) {
                    out.push(Arc::new(m.clone()));
                }
                // A peer's new block the listing lacks, unless the listing saw it replaced.
                for id in view
                    .recent
                    .iter()
                    .filter(|id| !listed.contains(id.as_str()) && !skip.contains(*id) && !hidden.contains(*id))
                {
                    match self.runtime.block_on(self.bucket.meta(id)) {
                        Ok(Some(m)) => out.push(Arc::new(m)),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(block = %id, error = %e, "a peer's new block cannot be read"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the bucket cannot be listed: answering from local data only");
                self.status.failed("listing blocks", &e);
                mark_partial(format!("the object store cannot be listed: {e}"));
            }
        }
        out
    }

    /// Runs `f` on each of `sources`; a block that fails (unreadable, corrupt) is skipped and
    /// counted.
    fn each_of<T>(&self, sources: Vec<Arc<BlockMeta>>, mut f: impl AsyncFnMut(BlockRead<'_>) -> Result<T>) -> Vec<T> {
        let mut out = Vec::new();
        for meta in sources {
            let read = BlockRead { bucket: &self.bucket, meta: &meta };
            match self.runtime.block_on(f(read)) {
                Ok(v) => out.push(v),
                Err(e) => {
                    self.status.block_read_errors.inc();
                    tracing::error!(block = %meta.id, error = %e, "a block could not be read: it is left out of the answer");
                    mark_partial(format!("block {} could not be read: {e}", meta.id));
                }
            }
        }
        out
    }

    fn each_block<T>(&self, view: &PeerView, f: impl AsyncFnMut(BlockRead<'_>) -> Result<T>) -> Vec<T> {
        self.each_of(self.sources(view), f)
    }

    /// The merged metadata of `id` over the local generations, every block and `peer_parts`.
    fn merged_summary(
        &self,
        id: &ProfileId,
        local: &LocalView,
        view: &PeerView,
        peer_parts: Vec<SpanSummary>,
    ) -> Result<Option<SpanSummary>> {
        let mut parts = local.summaries(id)?;
        for rec in self.each_block(view, async |b| b.span_record(id).await).into_iter().flatten() {
            parts.push(super::shared::summary(id.clone(), rec));
        }
        parts.extend(peer_parts);
        Ok(merge_summaries(parts))
    }

    fn parts_of(&self, id: &ProfileId) -> Result<Vec<SpanProfile>> {
        let local = self.local_view()?;
        let (answers, view) = self.ask_peers(LocalQuery::Profile { id: id.to_string() }, &local);
        let mut parts = local.profiles(id)?;
        parts.extend(self.each_block(&view, async |b| b.span(id).await).into_iter().flatten());
        for mut a in answers {
            parts.extend(a.span_profile()?);
        }
        Ok(parts)
    }

    /// A listing of one trace's span profiles: few, so all of them merged, newest first, paged.
    fn search_trace(&self, q: &SpanQuery, trace: TraceId) -> Result<Page> {
        let limit = q.limit.clamp(1, 1000);
        let mut all: Vec<SpanSummary> = self
            .trace(trace)?
            .into_iter()
            .map(|p| p.summary)
            .filter(|s| {
                s.samples >= q.min_samples
                    && q.service.as_ref().is_none_or(|x| *x == s.service_name)
                    && q.span_name.as_ref().is_none_or(|n| *n == s.span_name)
                    && q.until_ms.is_none_or(|u| s.first_seen_ms <= u)
                    && q.from_ms.is_none_or(|f| s.last_seen_ms >= f)
            })
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse((s.last_seen_ms, id_key(&s.profile_id))));
        let after = q.after.as_ref().map(|c| (c.last_seen_ms, id_key(&c.profile_id)));
        let mut page = Page::default();
        for s in all {
            if after.as_ref().is_some_and(|a| (s.last_seen_ms, id_key(&s.profile_id)) >= *a) {
                continue;
            }
            if page.profiles.len() >= limit {
                page.next = page
                    .profiles
                    .last()
                    .map(|l| Cursor { last_seen_ms: l.last_seen_ms, profile_id: l.profile_id.clone() });
                break;
            }
            page.profiles.push(s);
        }
        Ok(page)
    }

    /// This replica's answer to a peer: from its local generations only.
    pub fn local_answer(&self, q: LocalQuery) -> Result<LocalAnswer> {
        // One look at the generations for the whole answer: the blocks it names as local (which
        // the asker then leaves out of its bucket reads) are those whose data it holds.
        let recent_blocks = self.recent_blocks();
        let local = self.local_view()?;
        let mut a = LocalAnswer {
            instance: self.peers.as_ref().map(|p| p.instance.clone()).unwrap_or_default(),
            local_blocks: local.block_ids().collect(),
            recent_blocks,
            ..Default::default()
        };
        let parse = |id: &str| ProfileId::parse(id).map_err(|e| Error::rejected(crate::error::Reject::BadQuery, e));
        match q {
            LocalQuery::Profile { id } => {
                let id = parse(&id)?;
                a.profile = merge_span_parts(local.profiles(&id)?).map(|p| {
                    let stacks = WireStacks::from_stacks(&p.stacks);
                    (p.summary, stacks)
                });
            }
            LocalQuery::Summaries { ids } => {
                for id in ids.iter().filter_map(|i| ProfileId::parse(i).ok()) {
                    a.summaries.extend(merge_summaries(local.summaries(&id)?));
                }
            }
            LocalQuery::Trace { trace_id } => {
                let t = TraceId::parse(&trace_id)
                    .ok_or_else(|| Error::rejected(crate::error::Reject::BadQuery, "trace_id"))?;
                a.ids = local.trace_ids(t)?.iter().map(ToString::to_string).collect();
            }
            LocalQuery::List { service, span_name, from_ms, after, limit } => {
                let q = SpanQuery { service, span_name, from_ms, limit, ..Default::default() };
                let after = after.map(|(t, id): (u64, String)| parse(&id).map(|id| (t, id_key(&id)))).transpose()?;
                a.candidates = local
                    .candidates(&q, after.as_ref(), limit)?
                    .into_iter()
                    .map(|c| (c.last_seen_ms, c.id.to_string()))
                    .collect();
            }
            LocalQuery::Process { query } => {
                for (period, stacks) in local.process(&query)? {
                    a.process.push((period, WireStacks::from_stacks(&stacks)));
                }
            }
            LocalQuery::ProcessSeries { query } => a.series_points = local.process_series(&query)?,
            LocalQuery::SpanStats { query } => a.span_stats = local.span_stats(&query)?,
            LocalQuery::Services => a.names = local.names(|s| s.services())?.into_iter().collect(),
            LocalQuery::Series => a.series = local.series()?,
        }
        Ok(a)
    }

    fn recent_blocks(&self) -> Vec<String> {
        let Ok(mut r) = self.recent.lock() else { return Vec::new() };
        while r.front().is_some_and(|(at, _)| at.elapsed() > RECENT_BLOCK) {
            r.pop_front();
        }
        r.iter().map(|(_, id)| id.clone()).collect()
    }

    /// Seals the head generation when `force`d (shutdown) or due ([`Generations::head_due`]).
    pub fn seal_head(&self, interval: Duration, force: bool, now_ms: u64) -> Result<bool> {
        let sealed = (force || self.local.head_due(interval)?) && self.local.seal(now_ms)?;
        self.status.sealed_generations.set(self.local.sealed_count()? as i64);
        Ok(sealed)
    }

    /// Uploads the oldest sealed generation as a block and drops it. Returns the block's span
    /// profiles, or `None` when no generation is sealed.
    pub fn ship(&self, now_ms: u64) -> Result<Option<u64>> {
        let _one_at_a_time = self.shipping.lock().map_err(|_| Error::Storage("a block upload panicked".into()))?;
        let Some(generation) = self.local.oldest_sealed()? else { return Ok(None) };
        let block_id = generation.block_id.clone();
        let started = Instant::now();
        // Uploaded before a restart (or by an upload that failed after writing): not again.
        let present = self.runtime.block_on(self.bucket.has_block(&block_id)).map_err(|e| self.upload_failed(e))?;
        if present || generation.is_empty()? {
            drop(generation);
            self.retire(&block_id)?;
            if present {
                self.announce(&block_id);
            }
            return Ok(Some(0));
        }
        let mut builder = BlockBuilder::default();
        generation.store.build_block(&mut builder)?;
        let read_at = Instant::now();
        let (data, meta) = builder.finish(&block_id, &self.replica, now_ms);
        let built_at = Instant::now();
        self.runtime.block_on(self.bucket.put_block(data, &meta)).map_err(|e| self.upload_failed(e))?;
        let uploaded_at = Instant::now();
        drop(generation);
        self.retire(&block_id)?;
        self.announce(&block_id);
        self.status.blocks_uploaded.inc();
        self.status.degraded.set(0);
        let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1000.0;
        tracing::info!(
            block = %block_id,
            span_profiles = meta.span_profiles,
            bytes = meta.data_bytes,
            read_ms = ms(started, read_at),
            build_ms = ms(read_at, built_at),
            upload_ms = ms(built_at, uploaded_at),
            "block uploaded"
        );
        Ok(Some(meta.span_profiles))
    }

    fn upload_failed(&self, e: Error) -> Error {
        self.status.upload_failures.inc();
        self.status.failed("uploading a block", &e);
        e
    }

    /// Drops sealed generation `block_id` (its block is in the bucket, or it was empty).
    fn retire(&self, block_id: &str) -> Result<()> {
        self.local.retire(block_id)?;
        self.status.sealed_generations.set(self.local.sealed_count()? as i64);
        Ok(())
    }

    /// Gives the compactor lease up, if this replica holds it (a graceful stop).
    pub fn release_compactor_lease(&self) -> Result<()> {
        self.runtime.block_on(self.bucket.release_lease(&self.replica))
    }

    /// Tells peers for a while that this replica uploaded `block_id` (their listing may lag).
    fn announce(&self, block_id: &str) {
        if let Ok(mut r) = self.recent.lock() {
            r.push_back((Instant::now(), block_id.to_owned()));
        }
    }

    /// After a start: announces the blocks this replica uploaded lately (the last ones at its
    /// shutdown, just before), which peers' listings may not have yet.
    pub fn announce_recent_uploads(&self, now_ms: u64) {
        let metas = match self.runtime.block_on(self.bucket.blocks()) {
            Ok((metas, _)) => metas,
            Err(e) => {
                tracing::warn!(error = %e, "the bucket cannot be listed at the start");
                return;
            }
        };
        let window = RECENT_BLOCK.as_millis() as u64;
        let mut mine: Vec<&BlockMeta> = metas
            .iter()
            .filter(|m| m.replica == self.replica && m.created_ms.saturating_add(window) > now_ms)
            .collect();
        mine.sort_by_key(|m| m.created_ms);
        if let Ok(mut r) = self.recent.lock() {
            for m in mine {
                let age = Duration::from_millis(now_ms.saturating_sub(m.created_ms));
                r.push_back((Instant::now().checked_sub(age).unwrap_or_else(Instant::now), m.id.clone()));
            }
        }
    }

    /// One compaction, when this replica holds the compactor lease: deletes blocks replaced more
    /// than `grace_ms` ago (queries that listed them before have finished by then), then merges
    /// small blocks into one — span profiles with the same ID merged physically, buckets of the
    /// same series and minute added — whose meta names the blocks it replaces, so queries read
    /// either them or it, never both. Returns the blocks merged (`None`: not the compactor).
    pub fn compact(&self, now_ms: u64, grace_ms: u64) -> Result<Option<usize>> {
        let bucket = &self.bucket;
        if !self.runtime.block_on(bucket.take_lease(&self.replica, now_ms, LEASE_MS))? {
            return Ok(None);
        }
        let all = self.runtime.block_on(bucket.all_blocks())?;
        let visible = super::bucket::visible(all.clone());
        self.status.listed(&visible);
        let shown: HashSet<String> = visible.into_iter().map(|m| m.id).collect();
        let replaced_at: HashMap<&str, u64> = all
            .iter()
            .filter(|m| shown.contains(&m.id))
            .flat_map(|m| m.replaces.iter().map(move |r| (r.as_str(), m.created_ms)))
            .collect();
        for m in all.iter().filter(|m| !shown.contains(&m.id)) {
            // Replaced: gone after the grace. Not replaced yet hidden: a losing compactor's
            // output, gone after its own grace.
            let since = replaced_at.get(m.id.as_str()).copied().unwrap_or(m.created_ms);
            if since.saturating_add(grace_ms) <= now_ms {
                self.runtime.block_on(bucket.delete_block(&m.id))?;
                self.status.blocks_deleted.inc();
                tracing::info!(block = %m.id, "compaction deleted a replaced block");
            }
        }
        let mut inputs: Vec<&BlockMeta> = all
            .iter()
            .filter(|m| {
                shown.contains(&m.id) && m.data_bytes < COMPACT_BELOW_BYTES && m.created_ms + grace_ms <= now_ms
            })
            .collect();
        inputs.sort_by_key(|m| (m.min_time_ms, m.id.clone()));
        let mut total = 0;
        inputs.retain(|m| {
            total += m.data_bytes;
            total <= COMPACT_MAX_INPUT_BYTES
        });
        inputs.truncate(COMPACT_MAX_BLOCKS);
        if inputs.len() < 2 {
            return Ok(Some(0));
        }
        // Records are translated into the new block by stack ID, each distinct stack of an input
        // block once (not resolved to frame names and interned again).
        let mut builder = BlockBuilder::default();
        for m in &inputs {
            let read = BlockRead { bucket, meta: m };
            let (mut dict, spans, process) = self.runtime.block_on(async {
                Ok::<_, Error>((
                    read.dictionary().await?,
                    read.all_span_records().await?,
                    read.all_process_records().await?,
                ))
            })?;
            let mut map = super::block::IdMap::default();
            for (key, rec) in spans {
                builder.add_span_record(&key, rec, &mut map, &mut dict)?;
            }
            for (labels, b, rec) in &process {
                builder.add_process_record(labels, *b, rec, &mut map, &mut dict)?;
            }
        }
        let id = new_block_id(now_ms, &self.replica);
        let (data, mut meta) = builder.finish(&id, &self.replica, now_ms);
        meta.replaces = inputs.iter().map(|m| m.id.clone()).collect();
        let in_bytes: u64 = inputs.iter().map(|m| m.data_bytes).sum();
        self.runtime.block_on(bucket.put_block(data, &meta))?;
        self.status.blocks_compacted.inc_by(inputs.len() as u64);
        tracing::info!(block = %id, merged = inputs.len(), bytes_in = in_bytes, bytes_out = meta.data_bytes, "compaction merged blocks");
        Ok(Some(inputs.len()))
    }

    /// Listing candidates of the blocks: entries matching the filters that do not change when a
    /// profile merges, at or past `after`, `want` per block (all of one time at the boundary).
    fn list_candidates(
        &self,
        sources: Vec<Arc<BlockMeta>>,
        q: &SpanQuery,
        after: Option<&(u64, Vec<u8>)>,
        want: usize,
    ) -> Vec<Candidate> {
        let until = after.map_or(u64::MAX, |a| a.0);
        let from = q.from_ms.unwrap_or(0);
        let lists = self.each_of(sources, async |b| {
            let mut found: Vec<Candidate> = Vec::new();
            if b.meta.max_time_ms < from || q.service.as_ref().is_some_and(|s| !b.meta.services.contains(s)) {
                return Ok(found);
            }
            let mut boundary = None;
            b.list_from(until, |t, id, entry| {
                if t < from || boundary.is_some_and(|bt| t < bt) {
                    return false;
                }
                let key = id_key(&id);
                if after.is_some_and(|(at, ak)| (t, &key) >= (*at, ak)) {
                    return true;
                }
                if q.service.as_ref().is_some_and(|s| *s != entry.service_name)
                    || q.span_name.as_ref().is_some_and(|n| *n != entry.span_name)
                {
                    return true;
                }
                found.push(Candidate { last_seen_ms: t, key, id });
                if found.len() >= want && boundary.is_none() {
                    boundary = Some(t);
                }
                true
            })
            .await?;
            Ok(found)
        });
        lists.into_iter().flatten().collect()
    }
}

fn cursor(last_seen_ms: u64, key: &[u8]) -> Result<Cursor> {
    Ok(Cursor { last_seen_ms, profile_id: super::shared::id_from_key(key)? })
}

/// Blocks smaller than this are merged by compaction.
const COMPACT_BELOW_BYTES: u64 = 64 << 20;
/// Most bytes of blocks one compaction reads.
const COMPACT_MAX_INPUT_BYTES: u64 = 256 << 20;
/// Most blocks one compaction merges.
const COMPACT_MAX_BLOCKS: usize = 32;
/// How long a compactor holds its lease without renewing it.
const LEASE_MS: u64 = 10 * 60_000;

/// Whether a block may hold whole-process buckets a query reads, from its metadata alone: its
/// time span overlaps the range and one of its series is selected.
fn may_hold(meta: &BlockMeta, q: &ProcessQuery) -> bool {
    meta.overlaps(q.first_bucket(), q.until_ms) && meta.series.iter().any(|l| q.selector.matches(l))
}

/// A new block's ID: its cut time first, so IDs sort by age, then the replica and a random part.
pub fn new_block_id(now_ms: u64, replica: &str) -> String {
    let safe: String = replica.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(63).collect();
    let random = std::collections::hash_map::RandomState::new();
    let r = std::hash::BuildHasher::hash_one(&random, now_ms);
    format!("{now_ms:013}-{safe}-{:08x}", r as u32)
}

impl ProfileStore for LayeredStore {
    fn insert(&self, batches: Vec<SeriesBatch>) -> Result<InsertStats> {
        self.local.insert(batches)
    }

    fn span_profile(&self, id: ProfileId) -> Result<Option<SpanProfile>> {
        Ok(merge_span_parts(self.parts_of(&id)?))
    }

    fn search_spans(&self, q: &SpanQuery) -> Result<Page> {
        if let Some(trace) = q.trace_id {
            return self.search_trace(q, trace);
        }
        let limit = q.limit.clamp(1, 1000);
        let mut page = Page::default();
        let mut after = q.after.as_ref().map(|c| (c.last_seen_ms, id_key(&c.profile_id)));
        let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
        let local = self.local_view()?;
        // Each round takes the next candidates of every source in (last seen, ID) order, newest
        // first; a profile is listed where its merged last-seen time puts it, once.
        for _round in 0..16 {
            let want = limit + 1;
            let (answers, view) = self.ask_peers(
                LocalQuery::List {
                    service: q.service.clone(),
                    span_name: q.span_name.clone(),
                    from_ms: q.from_ms,
                    after: after
                        .as_ref()
                        .map(|(t, k)| super::shared::id_from_key(k).map(|id| (*t, id.to_string())))
                        .transpose()?,
                    limit: want,
                },
                &local,
            );
            let mut more = false;
            let mut candidates = local.candidates(q, after.as_ref(), want)?;
            more |= candidates.len() >= want;
            let blocks = self.list_candidates(self.sources(&view), q, after.as_ref(), want);
            more |= blocks.len() >= want;
            candidates.extend(blocks);
            for a in &answers {
                more |= a.candidates.len() >= want;
                for (t, id) in &a.candidates {
                    let id = ProfileId::parse(id).map_err(|e| Error::Corrupt(format!("peer answer: {e}")))?;
                    candidates.push(Candidate { last_seen_ms: *t, key: id_key(&id), id });
                }
            }
            candidates.sort_by(|a, b| (b.last_seen_ms, &b.key).cmp(&(a.last_seen_ms, &a.key)));
            candidates.truncate(want);
            if candidates.is_empty() {
                return Ok(page);
            }
            // The peers' parts of these profiles, in one call per peer.
            let ids: Vec<String> =
                candidates.iter().filter(|c| !seen.contains(&c.key)).map(|c| c.id.to_string()).collect();
            let mut peer_parts: HashMap<ProfileId, Vec<SpanSummary>> = HashMap::new();
            let (summaries, view) = self.ask_peers(LocalQuery::Summaries { ids }, &local);
            for a in summaries {
                for summary in a.summaries {
                    peer_parts.entry(summary.profile_id.clone()).or_default().push(summary);
                }
            }
            let mut last = None;
            for c in candidates {
                last = Some((c.last_seen_ms, c.key.clone()));
                if !seen.insert(c.key.clone()) {
                    continue;
                }
                let parts = peer_parts.remove(&c.id).unwrap_or_default();
                let Some(s) = self.merged_summary(&c.id, &local, &view, parts)? else { continue };
                // Listed at its newest time only: an older part of it is skipped.
                if s.last_seen_ms != c.last_seen_ms {
                    continue;
                }
                let ok = s.samples >= q.min_samples
                    && q.until_ms.is_none_or(|u| s.first_seen_ms <= u)
                    && q.span_name.as_ref().is_none_or(|n| *n == s.span_name);
                if ok {
                    page.profiles.push(s);
                    if page.profiles.len() >= limit {
                        page.next = last.map(|(t, k)| cursor(t, &k)).transpose()?;
                        return Ok(page);
                    }
                }
            }
            if !more {
                return Ok(page);
            }
            after = last;
        }
        page.next = after.map(|(t, k)| cursor(t, &k)).transpose()?;
        Ok(page)
    }

    fn trace(&self, trace_id: TraceId) -> Result<Vec<SpanProfile>> {
        let local = self.local_view()?;
        let (answers, view) = self.ask_peers(LocalQuery::Trace { trace_id: trace_id.to_string() }, &local);
        let mut ids = local.trace_ids(trace_id)?;
        for found in self.each_block(&view, async |b| b.trace_ids(trace_id).await) {
            ids.extend(found);
        }
        for a in &answers {
            ids.extend(a.ids.iter().filter_map(|i| ProfileId::parse(i).ok()));
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(p) = merge_span_parts(self.parts_of(&id)?) {
                out.push(p);
            }
        }
        out.sort_by(|a, b| {
            (a.summary.first_seen_ms, &a.summary.profile_id).cmp(&(b.summary.first_seen_ms, &b.summary.profile_id))
        });
        Ok(out)
    }

    fn services(&self) -> Result<Vec<String>> {
        let local = self.local_view()?;
        let (answers, view) = self.ask_peers(LocalQuery::Services, &local);
        let mut out = local.names(|s| s.services())?;
        for meta in self.sources(&view) {
            out.extend(meta.services.iter().cloned());
        }
        out.extend(answers.into_iter().flat_map(|a| a.names));
        Ok(out.into_iter().collect())
    }

    fn series(&self) -> Result<Vec<Labels>> {
        let local = self.local_view()?;
        let (answers, view) = self.ask_peers(LocalQuery::Series, &local);
        let mut out = local.series()?;
        for meta in self.sources(&view) {
            out.extend(meta.series.iter().cloned());
        }
        out.extend(answers.into_iter().flat_map(|a| a.series));
        Ok(out)
    }

    fn process_profile(&self, q: &ProcessQuery) -> Result<Option<ProcessProfile>> {
        let local = self.local_view()?;
        let (answers, view) = self.ask_peers(LocalQuery::Process { query: q.clone() }, &local);
        let mut parts = local.process(q)?;
        for found in self.each_block(&view, async |b| {
            if !may_hold(b.meta, q) {
                return Ok(Vec::new());
            }
            b.process(|l| q.selector.matches(l), q.first_bucket(), q.until_ms).await
        }) {
            parts.extend(found);
        }
        for a in answers {
            for (period, stacks) in a.process {
                parts.push((period, stacks.into_stacks()?));
            }
        }
        Ok(merge_process_parts(parts))
    }

    fn process_series(&self, q: &ProcessQuery) -> Result<Vec<SeriesPoints>> {
        let local = self.local_view()?;
        let (answers, view) = self.ask_peers(LocalQuery::ProcessSeries { query: q.clone() }, &local);
        let mut out = local.process_series(q)?;
        for found in self.each_block(&view, async |b| {
            if !may_hold(b.meta, q) {
                return Ok(Vec::new());
            }
            b.process_series(|l| q.selector.matches(l), q.first_bucket(), q.until_ms).await
        }) {
            out.extend(found);
        }
        out.extend(answers.into_iter().flat_map(|a| a.series_points));
        Ok(out)
    }

    fn span_stats(&self, q: &ProcessQuery) -> Result<Vec<SpanStat>> {
        let local = self.local_view()?;
        let (answers, view) = self.ask_peers(LocalQuery::SpanStats { query: q.clone() }, &local);
        let mut parts = local.span_stats(q)?;
        for found in self.each_block(&view, async |b| {
            if !may_hold(b.meta, q) {
                return Ok(Vec::new());
            }
            b.span_stats(|l| q.selector.matches(l), q.first_bucket(), q.until_ms).await
        }) {
            parts.extend(found);
        }
        parts.extend(answers.into_iter().flat_map(|a| a.span_stats));
        Ok(merge_span_stats(parts))
    }

    fn enforce_retention(&self, policy: &Retention, now_ms: u64) -> Result<RetentionStats> {
        let mut stats = RetentionStats::default();
        for g in self.local.all()? {
            let s = g.store.enforce_retention(policy, now_ms)?;
            stats.span_profiles_deleted += s.span_profiles_deleted;
            stats.process_buckets_deleted += s.process_buckets_deleted;
        }
        // In the bucket, age is the limit: a block goes when all of it is older.
        if let Some(age) = policy.max_age {
            let cutoff = now_ms.saturating_sub(age.as_millis() as u64);
            let (metas, _) = self.runtime.block_on(self.bucket.blocks())?;
            for m in metas.iter().filter(|m| m.max_time_ms < cutoff) {
                self.runtime.block_on(self.bucket.delete_block(&m.id))?;
                stats.span_profiles_deleted += m.span_profiles;
                tracing::info!(block = %m.id, "retention deleted a block");
            }
        }
        Ok(stats)
    }

    fn collect_garbage(&self) -> Result<GcStats> {
        // Sealed generations go whole soon; the head is where garbage piles up.
        self.local.head()?.store.collect_garbage()
    }

    /// The local generations' sizes, added up.
    fn stats(&self) -> Result<StoreStats> {
        let mut total = StoreStats::default();
        for g in self.local.all()? {
            let s = g.store.stats()?;
            total.file_bytes += s.file_bytes;
            total.record_bytes += s.record_bytes;
            total.interned_bytes += s.interned_bytes;
            total.span_profiles += s.span_profiles;
        }
        Ok(total)
    }

    /// The head's health: it takes the inserts.
    fn health(&self) -> std::result::Result<(), super::Trouble> {
        match self.local.head() {
            Ok(head) => head.store.health(),
            Err(e) => Err(super::Trouble { message: e.to_string(), restart_helps: true }),
        }
    }

    fn close(&self) {
        self.local.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(first: u64, last: u64, period: u64, stacks: &[(&[&str], u64)]) -> SpanProfile {
        let stacks: Stacks =
            stacks.iter().map(|(f, c)| (f.iter().map(|s| Arc::<str>::from(*s)).collect(), *c)).collect();
        SpanProfile {
            summary: SpanSummary {
                profile_id: ProfileId::Span(7),
                trace_id: None,
                service_name: "svc".into(),
                span_name: String::new(),
                samples: stacks.iter().map(|s| s.1).sum(),
                period_ns: period,
                first_seen_ms: first,
                last_seen_ms: last,
                labels: Labels::new(),
            },
            stacks,
        }
    }

    #[test]
    fn parts_merge_like_inserts_whatever_their_order() {
        let mut a = part(100, 200, 10_000_000, &[(&["main", "a"], 3)]);
        a.summary.labels.insert("pod".into(), "p1".into());
        let mut b = part(50, 150, 20_000_000, &[(&["main", "a"], 1), (&["main", "b"], 2)]);
        b.summary.span_name = "Checkout".into();
        b.summary.trace_id = TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736");
        let one = merge_span_parts(vec![a.clone(), b.clone()]).unwrap();
        let two = merge_span_parts(vec![b, a]).unwrap();
        assert_eq!(one.summary, two.summary);
        assert_eq!(one.stacks, two.stacks);
        let s = &one.summary;
        // On the smaller period: b's 20 ms samples count twice.
        assert_eq!((s.period_ns, s.samples, s.first_seen_ms, s.last_seen_ms), (10_000_000, 3 + 2 + 4, 50, 200));
        assert_eq!(s.span_name, "Checkout");
        assert!(s.trace_id.is_some());
        assert_eq!(s.labels["pod"], "p1");
        assert!(merge_span_parts(Vec::new()).is_none());
        let p = merge_process_parts(vec![(20_000_000, one.stacks.clone()), (10_000_000, one.stacks)]).unwrap();
        assert_eq!((p.period_ns, p.stacks.iter().map(|s| s.1).sum::<u64>()), (10_000_000, 9 * 3));
    }
}
