//! `SpanProfLayer`: follows which local root span each thread is in and publishes every change.
//!
//! Span creation (rare per request) assigns each span its local root and stores it in the span's
//! extensions. Enter and exit (every poll of every instrumented future) only touch a per-thread
//! stack of entered spans; a transition is written only when the root of the innermost entered
//! span differs from the one last published for the thread.
//!
//! Looking a span up in the registry costs four atomic read-modify-writes (slab reference count,
//! extensions lock), several times the rest of an enter. So each thread keeps a small
//! direct-mapped cache `span id → root`. Registry span IDs are reused once a span closes, so a
//! cached entry also records a *close stamp*: `on_close` bumps a per-layer counter chosen by the
//! ID's hash, and an entry is only trusted while its stamp is still current. A span can only be
//! entered after it was created, which happens after the close that freed its ID, so the thread
//! entering it sees the bumped stamp and never takes a stale root for it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use spanprof_channel::{NameRef, Options, Root, ThreadSlot, Writer};
use tracing_core::span::{Attributes, Id};
use tracing_core::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::error::{Error, Result};
use crate::ids;

/// Environment variable: directory of the span-context channel (the shared volume). Absent or
/// empty: the layer does nothing.
pub const CONTEXT_DIR_ENV: &str = "SPANPROF_CONTEXT_DIR";
/// Environment variable: profile URL template containing `{profile_id}`.
pub const PROFILE_URL_ENV: &str = "SPANPROF_PROFILE_URL";

/// The local root of a span, kept in the span's extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RootExt(pub(crate) Root);

/// A root as the hot path copies it: plain words (a `u128` field would make every copy a 16-byte
/// aligned move that stalls on store forwarding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed {
    span_id: u64,
    trace_hi: u64,
    trace_lo: u64,
    name: u32,
}

impl From<Root> for Packed {
    fn from(r: Root) -> Self {
        Packed { span_id: r.span_id, trace_hi: (r.trace_id >> 64) as u64, trace_lo: r.trace_id as u64, name: r.name.0 }
    }
}

impl From<Packed> for Root {
    fn from(p: Packed) -> Self {
        Root { span_id: p.span_id, trace_id: (u128::from(p.trace_hi) << 64) | u128::from(p.trace_lo), name: NameRef(p.name) }
    }
}

/// Entered spans a thread can nest before its stack grows (which allocates, once).
const STACK_CAPACITY: usize = 64;
/// Transitions a thread without a slot drops before it tries to register again.
const REGISTER_RETRY_EVERY: u32 = 1024;
/// Entries of each thread's span → root cache (a power of two).
const CACHE_ENTRIES: usize = 256;
/// Close stamps per layer (a power of two).
const STAMPS: usize = 4096;

fn spread(id: u64) -> u64 {
    id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn cache_index(id: u64) -> usize {
    (spread(id) >> 56) as usize & (CACHE_ENTRIES - 1)
}

fn stamp_index(id: u64) -> usize {
    (spread(id) >> 40) as usize & (STAMPS - 1)
}

/// A cached root: valid while `stamp` equals the layer's close stamp for `id`.
#[derive(Clone, Copy)]
struct Cached {
    /// 0: empty (registry IDs are non-zero).
    id: u64,
    stamp: u64,
    root: Packed,
}

const EMPTY: Cached = Cached { id: 0, stamp: 0, root: Packed { span_id: 0, trace_hi: 0, trace_lo: 0, name: 0 } };

static NEXT_LAYER_ID: AtomicU64 = AtomicU64::new(1);

/// A `tracing_subscriber::Layer` that publishes each thread's local root span to the
/// span-context channel read by the spanprof sampler. Needs a subscriber with span lookup
/// (`tracing_subscriber::registry()`).
///
/// ```no_run
/// use tracing_subscriber::prelude::*;
/// tracing_subscriber::registry()
///     .with(spanprof::SpanProfLayer::from_env()?)
///     .with(tracing_subscriber::fmt::layer())
///     .init();
/// # Ok::<(), spanprof::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SpanProfLayer {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Tells this layer's per-thread state apart from another instance's.
    id: u64,
    /// Close stamps (see the module docs).
    stamps: Box<[AtomicU64]>,
    writer: Arc<Writer>,
    profile_url: Option<String>,
}

/// Settings of a [`SpanProfLayer`].
#[derive(Clone, Debug, Default)]
pub struct Builder {
    context_dir: Option<PathBuf>,
    profile_url: Option<String>,
    options: Options,
}

impl Builder {
    /// Directory of the channel file (`SPANPROF_CONTEXT_DIR`). Without it the layer is a no-op.
    pub fn context_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.context_dir = Some(dir.into());
        self
    }

    /// Profile URL template containing `{profile_id}` (`SPANPROF_PROFILE_URL`).
    pub fn profile_url(mut self, template: impl Into<String>) -> Self {
        self.profile_url = Some(template.into());
        self
    }

    /// Threads that can publish at once (default 256); further threads' transitions are dropped
    /// and counted.
    pub fn max_threads(mut self, n: u32) -> Self {
        self.options.slots = n;
        self
    }

    /// Transitions kept per thread (a power of two, default 1024). The sampler must read a
    /// sample before its thread makes this many root changes after it.
    pub fn ring_capacity(mut self, n: u32) -> Self {
        self.options.ring_capacity = n;
        self
    }

    /// Creates the channel file (when a context directory is set) and returns the layer.
    pub fn build(self) -> Result<SpanProfLayer> {
        if let Some(template) = &self.profile_url
            && !template.contains("{profile_id}")
        {
            return Err(Error::Config { name: PROFILE_URL_ENV, reason: format!("{template:?} lacks {{profile_id}}") });
        }
        let Some(dir) = self.context_dir else {
            return Ok(SpanProfLayer::disabled());
        };
        if !dir.is_dir() {
            return Err(Error::Config { name: CONTEXT_DIR_ENV, reason: format!("{} is not a directory", dir.display()) });
        }
        let writer = Writer::create(&dir, &self.options)?;
        Ok(SpanProfLayer {
            inner: Some(Arc::new(Inner {
                id: NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed),
                stamps: (0..STAMPS).map(|_| AtomicU64::new(0)).collect(),
                writer: Arc::new(writer),
                profile_url: self.profile_url,
            })),
        })
    }
}

impl SpanProfLayer {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A layer that does nothing.
    pub fn disabled() -> SpanProfLayer {
        SpanProfLayer { inner: None }
    }

    /// Configured from `SPANPROF_CONTEXT_DIR` and `SPANPROF_PROFILE_URL`; a no-op when
    /// `SPANPROF_CONTEXT_DIR` is unset or empty (the app runs without the sampler).
    pub fn from_env() -> Result<SpanProfLayer> {
        SpanProfLayer::from_vars(|name| std::env::var_os(name))
    }

    /// As [`from_env`](Self::from_env), reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<SpanProfLayer> {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let mut builder = Builder::default();
        if let Some(dir) = set(CONTEXT_DIR_ENV) {
            builder = builder.context_dir(dir);
        }
        if let Some(url) = set(PROFILE_URL_ENV) {
            let url = url
                .into_string()
                .map_err(|_| Error::Config { name: PROFILE_URL_ENV, reason: "not valid UTF-8".into() })?;
            builder = builder.profile_url(url);
        }
        builder.build()
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The channel file this layer writes, when enabled.
    pub fn context_file(&self) -> Option<&Path> {
        self.inner.as_ref().map(|i| i.writer.path())
    }

    /// The profile URL template, when configured.
    pub fn profile_url_template(&self) -> Option<&str> {
        self.inner.as_ref().and_then(|i| i.profile_url.as_deref())
    }

    /// Transitions dropped so far because their thread found no free slot.
    pub fn dropped_transitions(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| i.writer.dropped_transitions())
    }
}

/// One thread's view for one layer instance.
struct ThreadState {
    layer: u64,
    /// Claimed on the first transition.
    slot: Option<ThreadSlot>,
    /// Countdown to the next registration attempt after a failed one.
    retry_in: u32,
    /// Entered spans, innermost last, with their roots.
    stack: Vec<(u64, Packed)>,
    /// The root last published (0: none).
    current: u64,
    /// Interned names by callsite metadata address.
    names: HashMap<usize, NameRef>,
    /// Span → root cache, `CACHE_ENTRIES` long.
    cache: Vec<Cached>,
}

thread_local! {
    static THREADS: RefCell<Vec<ThreadState>> = const { RefCell::new(Vec::new()) };
}

impl Inner {
    /// Runs `f` on this thread's state for this layer. Skipped (and so a no-op) while the thread
    /// is being torn down or if re-entered.
    fn with_state(&self, f: impl FnOnce(&mut ThreadState)) {
        let _ = THREADS.try_with(|threads| {
            let Ok(mut threads) = threads.try_borrow_mut() else { return };
            let index = match threads.iter().position(|s| s.layer == self.id) {
                Some(i) => i,
                None => {
                    threads.push(ThreadState {
                        layer: self.id,
                        slot: None,
                        retry_in: 0,
                        stack: Vec::with_capacity(STACK_CAPACITY),
                        current: 0,
                        names: HashMap::new(),
                        cache: vec![EMPTY; CACHE_ENTRIES],
                    });
                    threads.len() - 1
                }
            };
            f(&mut threads[index]);
        });
    }

    /// Publishes `root` as the thread's current root if it differs from the last one published.
    fn switch_to(&self, st: &mut ThreadState, root: Option<Packed>) {
        let id = root.map_or(0, |r| r.span_id);
        if id == st.current {
            return;
        }
        st.current = id;
        if st.slot.is_none() {
            if st.retry_in > 0 {
                st.retry_in -= 1;
                self.writer.count_dropped_transition();
                return;
            }
            st.slot = self.writer.register_thread();
            if st.slot.is_none() {
                st.retry_in = REGISTER_RETRY_EVERY;
            }
        }
        match &mut st.slot {
            Some(slot) => {
                slot.record(root.map(Root::from).as_ref());
            }
            None => self.writer.count_dropped_transition(),
        }
    }

    fn stamp(&self, id: u64) -> u64 {
        // Relaxed is enough: the close that bumped it happens-before the creation of any span
        // reusing the ID, which happens-before that span is entered here; coherence of this one
        // atomic then guarantees the load sees the bump.
        self.stamps.get(stamp_index(id)).map_or(0, |s| s.load(Ordering::Relaxed))
    }

    /// The span `id` closed: the ID may be reused from now on, so every thread's cached root for
    /// it must be dropped.
    fn closed(&self, id: u64) {
        if let Some(s) = self.stamps.get(stamp_index(id)) {
            s.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn cache_get(&self, st: &ThreadState, id: u64) -> Option<Packed> {
        let c = st.cache.get(cache_index(id))?;
        (c.id == id && c.stamp == self.stamp(id)).then_some(c.root)
    }

    /// `stamp` must have been read while the span was known to be open.
    fn cache_put(st: &mut ThreadState, id: u64, stamp: u64, root: Packed) {
        if let Some(c) = st.cache.get_mut(cache_index(id)) {
            *c = Cached { id, stamp, root };
        }
    }

    fn name_of(&self, meta: &'static Metadata<'static>) -> NameRef {
        let key = meta as *const Metadata<'static> as usize;
        let mut cached = None;
        self.with_state(|st| cached = st.names.get(&key).copied());
        if let Some(r) = cached {
            return r;
        }
        let r = self.writer.intern(meta.name());
        self.with_state(|st| {
            st.names.insert(key, r);
        });
        r
    }
}

impl<S> Layer<S> for SpanProfLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(inner) = &self.inner else { return };
        let Some(span) = ctx.span(id) else { return };
        // The registry has already resolved the parent (explicit, or the current span).
        let inherited = span.parent().and_then(|p| p.extensions().get::<RootExt>().copied());
        let root = match inherited {
            Some(RootExt(root)) => root,
            // No parent in this process: this span is a local root.
            None => Root { span_id: ids::nonzero_u64(), trace_id: ids::nonzero_u128(), name: inner.name_of(span.metadata()) },
        };
        span.extensions_mut().replace(RootExt(root));
        let key = id.into_u64();
        let stamp = inner.stamp(key);
        inner.with_state(|st| Inner::cache_put(st, key, stamp, root.into()));
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(inner) = &self.inner else { return };
        let key = id.into_u64();
        inner.with_state(|st| {
            let root = match inner.cache_get(st, key) {
                Some(root) => root,
                None => {
                    // The span is open (it is being entered), so this stamp is current for it.
                    let stamp = inner.stamp(key);
                    let Some(RootExt(root)) = ctx.span(id).and_then(|s| s.extensions().get::<RootExt>().copied()) else {
                        return;
                    };
                    let root = Packed::from(root);
                    Inner::cache_put(st, key, stamp, root);
                    root
                }
            };
            st.stack.push((key, root));
            inner.switch_to(st, Some(root));
        });
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        let Some(inner) = &self.inner else { return };
        inner.with_state(|st| {
            let key = id.into_u64();
            // Usually the innermost; tracing allows exits out of order.
            let Some(pos) = st.stack.iter().rposition(|(k, _)| *k == key) else { return };
            st.stack.remove(pos);
            let top = st.stack.last().map(|(_, r)| *r);
            inner.switch_to(st, top);
        });
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let Some(inner) = &self.inner else { return };
        inner.closed(id.into_u64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_span_id_is_never_served_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let layer = SpanProfLayer::builder().context_dir(dir.path()).build().unwrap();
        let inner = layer.inner.as_ref().unwrap();
        let root = Packed::from(Root { span_id: 9, trace_id: 9 << 70, name: NameRef(3) });
        assert_eq!(Root::from(root), Root { span_id: 9, trace_id: 9 << 70, name: NameRef(3) });
        let (id, other) = (42u64, (1..).find(|&x| stamp_index(x) != stamp_index(42)).unwrap());
        let mut hits = Vec::new();
        inner.with_state(|st| {
            Inner::cache_put(st, id, inner.stamp(id), root);
            hits.push(inner.cache_get(st, id));
            inner.closed(other);
            hits.push(inner.cache_get(st, id));
            inner.closed(id);
            hits.push(inner.cache_get(st, id));
            Inner::cache_put(st, id, inner.stamp(id), root);
            hits.push(inner.cache_get(st, id));
            // Another ID in the same cache entry evicts it.
            let rival = (1..).find(|&x| x != id && cache_index(x) == cache_index(id)).unwrap();
            Inner::cache_put(st, rival, inner.stamp(rival), root);
            hits.push(inner.cache_get(st, id));
        });
        assert_eq!(hits, vec![Some(root), Some(root), None, Some(root), None]);
    }
}
