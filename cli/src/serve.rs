//! The accept loop every spanprof HTTP endpoint runs (the server's API, the operator's webhook):
//! HTTP/1 with what `axum::serve` lacks against slow or greedy clients — a header read timeout
//! (slowloris), a bound on open connections (past it the kernel's backlog fills and new
//! connections wait or are refused, instead of each costing a task), a TLS handshake timeout —
//! and a graceful shutdown that lets requests in flight finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// What a client may take and how many may come at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long in-flight requests get at shutdown.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_timeout: Duration::from_secs(10), max_connections: 1024, drain: Duration::from_secs(30) }
    }
}

/// How long a TLS client may take to finish its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` in plain HTTP on `listener` until `shutdown` resolves, then lets open connections
/// finish (up to `limits.drain`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    accept_loop(listener, app, limits, shutdown, |tcp| async move { Some(tcp) }).await
}

/// Serves `app` over TLS with `config` on `listener`, like [`serve`]; a handshake that fails or
/// takes longer than [`TLS_HANDSHAKE_TIMEOUT`] closes the connection.
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    accept_loop(listener, app, limits, shutdown, move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let peer = tcp.peer_addr().ok();
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(e)) => {
                    tracing::debug!(?peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(?peer, "TLS handshake timed out");
                    None
                }
            }
        }
    })
    .await
}

/// Accepts connections while a permit is free, turns each into a stream with `open` (the TLS
/// handshake, or nothing) on its own task and serves HTTP/1 on it.
async fn accept_loop<Open, Opening, Io>(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    open: Open,
) -> std::io::Result<()>
where
    Open: Fn(TcpStream) -> Opening,
    Opening: Future<Output = Option<Io>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A permit first: at the bound, connections queue in the kernel, not in this process.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let opening = open(tcp);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(io) = opening.await else { return };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {} s; closing them", limits.drain.as_secs());
    }
    Ok(())
}
