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
//!
//! With the `opentelemetry` feature a span's root is only *settled* when it is first needed (its
//! first enter, a child's creation, [`crate::root_of`]) rather than at creation: until
//! `tracing-opentelemetry` starts the span, `set_parent` may still give it a remote parent and
//! its span ID does not exist yet (see the `otel` module). Only settled roots enter the cache.

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
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::error::{Error, Result};
use crate::ids;

/// Environment variable: directory of the span-context channel (the shared volume). Absent or
/// empty: the layer does nothing.
pub const CONTEXT_DIR_ENV: &str = spanprof_channel::pod::env::CONTEXT_DIR;
/// Environment variable: profile URL template containing `{profile_id}`.
pub const PROFILE_URL_ENV: &str = spanprof_channel::pod::env::PROFILE_URL;

/// The local root of a span, kept in the span's extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RootExt {
    /// Final.
    Known(Root),
    /// Not settled yet (see the module docs); `inherited` is the root of the span's parent in
    /// this process, if it has one.
    #[cfg(feature = "opentelemetry")]
    Pending { inherited: Option<Root> },
}

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
        Root {
            span_id: p.span_id,
            trace_id: (u128::from(p.trace_hi) << 64) | u128::from(p.trace_lo),
            name: NameRef(p.name),
        }
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
#[derive(Debug)]
pub struct SpanProfLayer {
    inner: Option<Arc<Inner>>,
    /// The dispatch this instance was installed in: `tracing-opentelemetry` only hands out a
    /// span's OpenTelemetry context through it. Weak, because the dispatch owns this layer.
    #[cfg(feature = "opentelemetry")]
    dispatch: std::sync::OnceLock<tracing_core::dispatcher::WeakDispatch>,
}

impl Clone for SpanProfLayer {
    /// A clone shares the channel but not the installation: it learns its own dispatch when it is
    /// installed (asking another dispatch about this one's span IDs would be wrong).
    fn clone(&self) -> Self {
        SpanProfLayer::with_inner(self.inner.clone())
    }
}

#[derive(Debug)]
struct Inner {
    /// Tells this layer's per-thread state apart from another instance's.
    id: u64,
    /// Close stamps (see the module docs). A fixed-size array: masked indices need no bounds check.
    stamps: Box<[AtomicU64; STAMPS]>,
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
            return Err(Error::Config {
                name: CONTEXT_DIR_ENV,
                reason: format!("{} is not a directory", dir.display()),
            });
        }
        let writer = Writer::create(&dir, &self.options)?;
        Ok(SpanProfLayer::with_inner(Some(Arc::new(Inner {
            id: NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed),
            stamps: Box::new([const { AtomicU64::new(0) }; STAMPS]),
            writer: Arc::new(writer),
            profile_url: self.profile_url,
        }))))
    }
}

impl SpanProfLayer {
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn with_inner(inner: Option<Arc<Inner>>) -> SpanProfLayer {
        SpanProfLayer {
            inner,
            #[cfg(feature = "opentelemetry")]
            dispatch: std::sync::OnceLock::new(),
        }
    }

    /// A layer that does nothing.
    pub fn disabled() -> SpanProfLayer {
        SpanProfLayer::with_inner(None)
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

    /// The root of `span`, settling it first if it is still pending. `None` when the span was
    /// created while this layer did not see it (or the layer is disabled). Call it holding no lock
    /// on the span's extensions.
    pub(crate) fn root_of_span<'a, R: LookupSpan<'a>>(&self, span: &SpanRef<'a, R>) -> Option<Root> {
        // Copied out, so the extensions lock is released before settling takes it again.
        let ext = span.extensions().get::<RootExt>().copied()?;
        match ext {
            RootExt::Known(root) => Some(root),
            #[cfg(feature = "opentelemetry")]
            RootExt::Pending { inherited } => self.settle(span, inherited),
        }
    }

    /// Decides a pending span's root from its OpenTelemetry context: a span in the trace of its
    /// parent's root belongs to that root; a span without a parent here, or whose OpenTelemetry
    /// parent is in another trace (a remote parent set with `set_parent`), is a local root with the
    /// OpenTelemetry span and trace IDs — or random IDs when OpenTelemetry does not know the span.
    #[cfg(feature = "opentelemetry")]
    #[inline(never)]
    fn settle<'a, R: LookupSpan<'a>>(&self, span: &SpanRef<'a, R>, inherited: Option<Root>) -> Option<Root> {
        let inner = self.inner.as_ref()?;
        let otel = self.own_dispatch().and_then(|d| crate::otel::span_of(&d, &span.id()));
        let (root, marks) = match (inherited, &otel) {
            (Some(parent), Some(o)) if o.trace_id == parent.trace_id => (parent, false),
            (Some(parent), None) => (parent, false),
            (_, Some(o)) => {
                (Root { span_id: o.span_id, trace_id: o.trace_id, name: inner.name_of(span.metadata()) }, true)
            }
            (None, None) => (inner.new_root(span.metadata()), false),
        };
        {
            let mut ext = span.extensions_mut();
            match ext.get_mut::<RootExt>() {
                // Another thread settled it meanwhile (e.g. `root_of` racing an enter): its answer
                // stands, so the span never has two roots (random fallback IDs would differ).
                Some(RootExt::Known(first)) => return Some(*first),
                Some(pending) => *pending = RootExt::Known(root),
                None => return None,
            }
        }
        if marks && let Some(o) = &otel {
            crate::otel::mark_root(o, inner.profile_url.as_deref());
        }
        Some(root)
    }

    /// The dispatch this instance is installed in, if it is still alive.
    #[cfg(feature = "opentelemetry")]
    fn own_dispatch(&self) -> Option<tracing_core::Dispatch> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        // It holds this very instance, so span IDs given to this layer are its spans (asking
        // `tracing-opentelemetry` about an ID unknown to the dispatch would make it panic).
        let ours = dispatch.downcast_ref::<SpanProfLayer>().is_some_and(|l| std::ptr::eq(l, self));
        ours.then_some(dispatch)
    }

    /// The root of span `id` of `registry`, the registry of the dispatch this layer is in.
    pub(crate) fn root_in<'a, R: LookupSpan<'a>>(&self, registry: &'a R, id: &Id) -> Option<Root> {
        self.inner.as_ref()?;
        let span = registry.span(id)?;
        self.root_of_span(&span)
    }
}

/// One thread's view for one layer instance.
struct ThreadState {
    layer: u64,
    /// The root span ID last published (0: none).
    current: u64,
    /// Entered spans, innermost last, with their roots.
    stack: Vec<(u64, Packed)>,
    /// Span → root cache.
    cache: Box<[Cached; CACHE_ENTRIES]>,
    /// Claimed on the first transition.
    slot: Option<ThreadSlot>,
    /// Countdown to the next registration attempt after a failed one.
    retry_in: u32,
    /// Interned names by callsite metadata address.
    names: HashMap<usize, NameRef>,
}

impl ThreadState {
    fn new(layer: u64) -> ThreadState {
        ThreadState {
            layer,
            current: 0,
            stack: Vec::with_capacity(STACK_CAPACITY),
            cache: Box::new([EMPTY; CACHE_ENTRIES]),
            slot: None,
            retry_in: 0,
            names: HashMap::new(),
        }
    }

    /// The cached root of span `id`, valid only if `stamp` is the span's current close stamp.
    #[inline]
    fn cached(&self, id: u64, stamp: u64) -> Option<Packed> {
        let c = &self.cache[cache_index(id)];
        (c.id == id && c.stamp == stamp).then_some(c.root)
    }

    /// `stamp` must have been read while the span was known to be open.
    fn cache_put(&mut self, id: u64, stamp: u64, root: Packed) {
        self.cache[cache_index(id)] = Cached { id, stamp, root };
    }
}

/// Every layer instance's state on this thread. Almost every process has one layer, so its state
/// sits inline in `first`: one thread-local access and no search on the hot path.
struct Threads {
    first: Option<ThreadState>,
    others: Vec<ThreadState>,
}

thread_local! {
    static THREADS: RefCell<Threads> = const { RefCell::new(Threads { first: None, others: Vec::new() }) };
}

impl Inner {
    /// Runs `f` on this thread's state for this layer. `None` (and `f` not run) while the thread
    /// is being torn down or if re-entered.
    #[inline]
    fn with_state<R>(&self, f: impl FnOnce(&mut ThreadState) -> R) -> Option<R> {
        THREADS
            .try_with(|threads| {
                let mut threads = threads.try_borrow_mut().ok()?;
                let threads = &mut *threads;
                let first_is_mine = threads.first.as_ref().is_some_and(|s| s.layer == self.id);
                let state = if first_is_mine { threads.first.as_mut() } else { self.other_state(threads) };
                state.map(f)
            })
            .ok()
            .flatten()
    }

    /// This layer's state when it is not in `first`, created on first use.
    #[cold]
    fn other_state<'t>(&self, threads: &'t mut Threads) -> Option<&'t mut ThreadState> {
        if threads.first.is_none() {
            return Some(threads.first.insert(ThreadState::new(self.id)));
        }
        let index = match threads.others.iter().position(|s| s.layer == self.id) {
            Some(i) => i,
            None => {
                threads.others.push(ThreadState::new(self.id));
                threads.others.len() - 1
            }
        };
        threads.others.get_mut(index)
    }

    /// Publishes `root` as the thread's current root; the caller checked that it changed.
    #[inline(never)]
    fn publish(&self, st: &mut ThreadState, root: Option<Packed>) {
        st.current = root.map_or(0, |r| r.span_id);
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

    /// Pushes an entered span and publishes its root if that changes the thread's root.
    #[inline]
    fn push(&self, st: &mut ThreadState, id: u64, root: Packed) {
        st.stack.push((id, root));
        if root.span_id != st.current {
            self.publish(st, Some(root));
        }
    }

    #[inline]
    fn stamp(&self, id: u64) -> u64 {
        // Relaxed is enough: the close that bumped it happens-before the creation of any span
        // reusing the ID, which happens-before that span is entered here; coherence of this one
        // atomic then guarantees the load sees the bump.
        self.stamps[stamp_index(id)].load(Ordering::Relaxed)
    }

    /// The span `id` closed: the ID may be reused from now on, so every thread's cached root for
    /// it must be dropped.
    fn closed(&self, id: u64) {
        self.stamps[stamp_index(id)].fetch_add(1, Ordering::Relaxed);
    }

    /// A new local root with random IDs.
    fn new_root(&self, meta: &'static Metadata<'static>) -> Root {
        Root { span_id: ids::nonzero_u64(), trace_id: ids::nonzero_u128(), name: self.name_of(meta) }
    }

    fn name_of(&self, meta: &'static Metadata<'static>) -> NameRef {
        let key = meta as *const Metadata<'static> as usize;
        if let Some(Some(r)) = self.with_state(|st| st.names.get(&key).copied()) {
            return r;
        }
        let r = self.writer.intern(meta.name());
        self.with_state(|st| st.names.insert(key, r));
        r
    }
}

impl<S> Layer<S> for SpanProfLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    #[cfg(feature = "opentelemetry")]
    fn on_register_dispatch(&self, dispatch: &tracing_core::Dispatch) {
        // Set once: an instance is installed in exactly one dispatch (clones start empty).
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(inner) = &self.inner else { return };
        let Some(span) = ctx.span(id) else { return };
        // The registry has already resolved the parent (explicit, or the current span).
        let inherited = span.parent().and_then(|p| self.root_of_span(&p));
        #[cfg(feature = "opentelemetry")]
        {
            // Settled on first use, once OpenTelemetry has fixed the span's parent and IDs.
            let _ = inner;
            span.extensions_mut().replace(RootExt::Pending { inherited });
        }
        #[cfg(not(feature = "opentelemetry"))]
        {
            // No parent in this process: this span is a local root.
            let root = inherited.unwrap_or_else(|| inner.new_root(span.metadata()));
            span.extensions_mut().replace(RootExt::Known(root));
            let key = id.into_u64();
            let stamp = inner.stamp(key);
            inner.with_state(|st| st.cache_put(key, stamp, root.into()));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(inner) = &self.inner else { return };
        let key = id.into_u64();
        // The span is open (it is being entered), so this stamp is current for it.
        let stamp = inner.stamp(key);
        let hit = inner.with_state(|st| match st.cached(key, stamp) {
            Some(root) => {
                inner.push(st, key, root);
                true
            }
            None => false,
        });
        if hit == Some(false) {
            self.enter_uncached(inner, id, stamp, &ctx);
        }
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        let Some(inner) = &self.inner else { return };
        let key = id.into_u64();
        inner.with_state(|st| {
            match st.stack.last() {
                Some((top, _)) if *top == key => {
                    st.stack.pop();
                }
                // tracing allows exits out of order.
                _ => {
                    let Some(pos) = st.stack.iter().rposition(|(k, _)| *k == key) else { return };
                    st.stack.remove(pos);
                }
            }
            let top = st.stack.last().map(|(_, r)| *r);
            if top.map_or(0, |r| r.span_id) != st.current {
                inner.publish(st, top);
            }
        });
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let Some(inner) = &self.inner else { return };
        inner.closed(id.into_u64());
    }
}

impl SpanProfLayer {
    /// `on_enter` of a span missing from this thread's cache: looks it up in the registry (and
    /// settles its root) outside the thread state, which settling may need itself.
    #[inline(never)]
    fn enter_uncached<S>(&self, inner: &Inner, id: &Id, stamp: u64, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let Some(root) = ctx.span(id).and_then(|span| self.root_of_span(&span)) else { return };
        let (key, root) = (id.into_u64(), Packed::from(root));
        inner.with_state(|st| {
            st.cache_put(key, stamp, root);
            inner.push(st, key, root);
        });
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
        let hits = inner
            .with_state(|st| {
                let mut hits = Vec::new();
                st.cache_put(id, inner.stamp(id), root);
                hits.push(st.cached(id, inner.stamp(id)));
                inner.closed(other);
                hits.push(st.cached(id, inner.stamp(id)));
                inner.closed(id);
                hits.push(st.cached(id, inner.stamp(id)));
                st.cache_put(id, inner.stamp(id), root);
                hits.push(st.cached(id, inner.stamp(id)));
                // Another ID in the same cache entry evicts it.
                let rival = (1..).find(|&x| x != id && cache_index(x) == cache_index(id)).unwrap();
                st.cache_put(rival, inner.stamp(rival), root);
                hits.push(st.cached(id, inner.stamp(id)));
                hits
            })
            .unwrap();
        assert_eq!(hits, vec![Some(root), Some(root), None, Some(root), None]);
    }

    #[test]
    fn each_layer_instance_keeps_its_own_thread_state() {
        let dir = tempfile::tempdir().unwrap();
        let a = SpanProfLayer::builder().context_dir(dir.path()).build().unwrap();
        let b = SpanProfLayer::builder().context_dir(dir.path()).build().unwrap();
        let (a, b) = (a.inner.as_ref().unwrap(), b.inner.as_ref().unwrap());
        std::thread::spawn({
            let (a, b) = (Arc::clone(a), Arc::clone(b));
            move || {
                a.with_state(|st| st.current = 1).unwrap();
                b.with_state(|st| st.current = 2).unwrap();
                assert_eq!(a.with_state(|st| st.current), Some(1));
                assert_eq!(b.with_state(|st| st.current), Some(2));
                // Re-entered: skipped, never a second mutable borrow.
                assert_eq!(a.with_state(|_| b.with_state(|_| ())), Some(None));
            }
        })
        .join()
        .unwrap();
    }
}
