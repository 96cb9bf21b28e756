//! Rendering a loaded profile: the JSON answer (bounded flame graph and top functions) or an
//! export, streamed from the blocking pool, behind the heavy-query gate.

use super::*;

pub(super) fn export_format(q: &HashMap<String, String>) -> Result<export::Format, Error> {
    let f = q.get("format").map(String::as_str).unwrap_or("json");
    export::Format::parse(f).ok_or_else(|| {
        Error::rejected(Reject::UnknownFormat, format!("unknown format {f:?}: json, pprof, folded, speedscope or svg"))
    })
}

/// `?max_nodes=`: the most flame-graph bars the JSON answer holds; 0 = every node.
pub(super) fn max_nodes(q: &HashMap<String, String>) -> Result<usize, Error> {
    match q.get("max_nodes").map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(flame::DEFAULT_MAX_NODES),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n != 1 => Ok(n),
            _ => Err(bad_query(format!("max_nodes {v:?} is not 0 (every node) or a number of nodes of at least 2"))),
        },
    }
}

/// What a heavy query asks for besides its subject: the format and the flame graph's bound.
pub(super) struct Rendering {
    pub(super) format: export::Format,
    pub(super) max_nodes: usize,
}

impl Rendering {
    pub(super) fn from_query(q: &HashMap<String, String>) -> Result<Self, Error> {
        Ok(Rendering { format: export_format(q)?, max_nodes: max_nodes(q)? })
    }
}

/// A loaded profile, ready to render: its stacks, export metadata and the JSON fields about it.
pub(super) struct Loaded {
    pub(super) stacks: Stacks,
    pub(super) meta: ExportMeta,
    pub(super) file_stem: String,
    pub(super) extra: serde_json::Map<String, serde_json::Value>,
}

/// The JSON answer of a profile, trace or service view: the fields about it, the flame graph
/// (bounded, Pyroscope's levels) and the top functions.
#[derive(Serialize)]
pub(super) struct ProfileJson {
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
    period_ns: u64,
    flamegraph: flame::FlameGraph,
    top: Vec<flame::TopFunction>,
}

/// Bytes sent to the client per chunk of a streamed answer.
pub(super) const CHUNK_BYTES: usize = 64 << 10;

/// An `io::Write` that hands full chunks to the response body as it goes, so an export is never
/// held whole in memory beside the profile; it waits while the client is slow (the channel is
/// bounded) and fails once the client is gone.
pub(super) struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A response body written by `write` on the blocking pool while it is sent. The query's turn
/// goes with the writer and ends when the body is written. A failure half-way ends the body with
/// an error, so the client sees a broken transfer rather than a short file.
pub(super) fn streamed<F>(turn: QueryTurn, write: F) -> Body
where
    F: FnOnce(&mut dyn std::io::Write) -> Result<(), Error> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let mut out = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK_BYTES) };
        let result = write(&mut out).and_then(|()| out.send().map_err(Error::from));
        if let Err(e) = result {
            tracing::debug!(error = %e, "a streamed answer ended early");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// `name` with every character but ASCII letters, digits and `-` replaced by `_`, bounded:
/// part of a download's file name (a quoted header parameter) whatever the profile ID or
/// service name holds.
pub(super) fn file_name_safe(name: &str) -> String {
    name.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// Renders a loaded profile in the requested format, on the blocking pool, as a stream; JSON
/// gets the fields of `loaded.extra` plus the bounded flame graph and the top functions.
pub(super) fn render(
    turn: QueryTurn,
    rendering: Rendering,
    loaded: Loaded,
    done: impl FnOnce() + Send + 'static,
) -> Response {
    let Loaded { stacks, meta, file_stem, extra } = loaded;
    let attachment = |ext: &str| format!("inline; filename=\"{file_stem}.{ext}\"");
    let (content_type, disposition) = match rendering.format {
        export::Format::Json => ("application/json", None),
        export::Format::Folded => ("text/plain; charset=utf-8", Some(attachment("folded"))),
        export::Format::Pprof => {
            ("application/octet-stream", Some(attachment("pb.gz").replace("inline", "attachment")))
        }
        export::Format::Speedscope => ("application/json", Some(attachment("speedscope.json"))),
        export::Format::Svg => ("image/svg+xml", Some(attachment("svg"))),
    };
    let format = rendering.format;
    let body = streamed(turn, move |out| {
        let written = write_rendering(out, format, rendering.max_nodes, stacks, &meta, extra);
        done();
        written
    });
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(d) = disposition.and_then(|d| HeaderValue::from_str(&d).ok()) {
        headers.insert(header::CONTENT_DISPOSITION, d);
    }
    response
}

/// Writes one rendering of `stacks` to `out` (see [`render`]).
pub(super) fn write_rendering(
    out: &mut dyn std::io::Write,
    format: export::Format,
    max_nodes: usize,
    stacks: Stacks,
    meta: &ExportMeta,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<(), Error> {
    match format {
        export::Format::Json => {
            let tree = flame::CallTree::build(stacks.iter().map(|(f, c)| (f.as_slice(), *c)));
            drop(stacks);
            let answer = ProfileJson {
                extra,
                period_ns: meta.period_ns,
                flamegraph: tree.flamegraph(max_nodes),
                top: tree.top_functions(200),
            };
            drop(tree);
            serde_json::to_writer(out, &answer).map_err(|e| Error::Io(std::io::Error::other(e)))
        }
        export::Format::Folded => Ok(export::write_folded(&stacks, out)?),
        export::Format::Pprof => export::write_pprof(&stacks, meta, out),
        export::Format::Speedscope => export::write_speedscope(&stacks, meta, out),
        export::Format::Svg => export::write_svg(&stacks, meta, out),
    }
}

/// Runs a heavy query: waits for a turn at the gate, loads on the blocking pool with `load`
/// (`Ok(None)` = nothing stored: 404 naming `what`), renders as a stream.
pub(super) async fn heavy_query<F>(
    s: &Arc<AppState>,
    endpoint: &'static str,
    rendering: Rendering,
    what: String,
    load: F,
) -> Response
where
    F: FnOnce(&dyn ProfileStore) -> Result<Option<Loaded>, Error> + Send + 'static,
{
    let started = Instant::now();
    let turn = match s.queries.enter().await {
        Ok(t) => t,
        Err(e) => return fail(s, e),
    };
    let store = s.store.clone();
    let (loaded, partial) = match blocking_partial(move || load(store.as_ref())).await {
        (Ok(Some(l)), partial) => (l, partial),
        (Ok(None), _) => return no_samples(&what),
        (Err(e), _) => return fail(s, e),
    };
    let mut loaded = loaded;
    if let Some(why) = &partial {
        loaded.extra.insert("partial".into(), json!(true));
        loaded.extra.insert("partial_reason".into(), json!(why));
    }
    let loaded_after = started.elapsed();
    let state = s.clone();
    // The answer is written after this returns: it is timed when the last byte is handed over.
    let mut response = render(turn, rendering, loaded, move || {
        let total = started.elapsed();
        state.metrics.observe_query(endpoint, total.as_secs_f64());
        tracing::debug!(
            endpoint,
            load_ms = loaded_after.as_millis() as u64,
            total_ms = total.as_millis() as u64,
            "query answered"
        );
    });
    mark_partial_header(&mut response, partial.as_deref());
    response
}
