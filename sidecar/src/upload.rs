//! Pushing to the server (Pyroscope's `push.v1.PusherService/Push`, Connect protobuf) from a
//! byte-bounded backlog: when the server is down, uploads wait and are retried with exponential
//! backoff; past the limit the oldest are dropped first, and counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The backlog's bookkeeping (pure).
#[derive(Debug, Default)]
pub struct Backlog {
    items: VecDeque<Vec<u8>>,
    bytes: usize,
}

/// What making room dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub uploads: u64,
    pub bytes: u64,
}

impl Backlog {
    /// Appends `item`, dropping the oldest items until everything fits in `max_bytes` (an item
    /// larger than the limit on its own is dropped).
    pub fn push(&mut self, item: Vec<u8>, max_bytes: usize) -> Dropped {
        let mut d = Dropped::default();
        if item.len() > max_bytes {
            d.uploads += 1;
            d.bytes += item.len() as u64;
            return d;
        }
        while self.bytes + item.len() > max_bytes {
            let Some(old) = self.items.pop_front() else {
                break;
            };
            self.bytes -= old.len();
            d.uploads += 1;
            d.bytes += old.len() as u64;
        }
        self.bytes += item.len();
        self.items.push_back(item);
        d
    }

    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let item = self.items.pop_front()?;
        self.bytes -= item.len();
        Some(item)
    }

    /// Puts a failed item back at the front, unless newer data filled its room meanwhile.
    pub fn requeue(&mut self, item: Vec<u8>, max_bytes: usize) -> Dropped {
        if self.bytes + item.len() > max_bytes {
            return Dropped { uploads: 1, bytes: item.len() as u64 };
        }
        self.bytes += item.len();
        self.items.push_front(item);
        Dropped::default()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Backoff between retries: doubles from `MIN_BACKOFF` to `MAX_BACKOFF`.
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(MIN_BACKOFF, MAX_BACKOFF)
}

/// The backlog shared by the producer (the symbolizer thread) and the pushing task.
pub struct Uploads {
    backlog: Mutex<Backlog>,
    max_bytes: usize,
    notify: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    closed: AtomicBool,
}

impl Uploads {
    pub fn new(max_bytes: usize, metrics: Arc<Metrics>) -> Uploads {
        Uploads {
            backlog: Mutex::default(),
            max_bytes,
            notify: tokio::sync::Notify::new(),
            metrics,
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, d: Dropped, bytes_now: usize) {
        self.metrics.dropped_uploads.inc_by(d.uploads);
        self.metrics.dropped_bytes.inc_by(d.bytes);
        self.metrics.buffered_bytes.set(bytes_now as i64);
        if d.uploads > 0 {
            tracing::warn!(uploads = d.uploads, bytes = d.bytes, "upload buffer full: dropped the oldest uploads");
        }
    }

    pub fn enqueue(&self, body: Vec<u8>) {
        let (d, now) = {
            let mut b = self.lock();
            let d = b.push(body, self.max_bytes);
            (d, b.bytes())
        };
        self.count(d, now);
        self.notify.notify_one();
    }

    /// No more uploads will come: the pusher sends what is left and stops.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub fn pending(&self) -> usize {
        self.lock().len()
    }
}

/// Sends one push request.
pub async fn send(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<()> {
    let resp = client
        .post(url)
        .header("content-type", "application/proto")
        .header("connect-protocol-version", "1")
        .body(body)
        .send()
        .await
        .map_err(|e| Error::Push { url: url.to_owned(), message: e.to_string() })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
        return Err(Error::Rejected { status: status.as_u16(), body });
    }
    Err(Error::Push { url: url.to_owned(), message: format!("HTTP {status}: {body}") })
}

/// The push endpoint under a server URL.
pub fn push_url(server_url: &str) -> String {
    format!("{}/push.v1.PusherService/Push", server_url.trim_end_matches('/'))
}

/// Pushes uploads as they come, retrying with backoff, until closed and drained (or, once
/// closed, until `drain_deadline` passes).
pub async fn run(uploads: Arc<Uploads>, server_url: String, drain_deadline: Duration) {
    let url = push_url(&server_url);
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client");
            return;
        }
    };
    let mut backoff = Duration::ZERO;
    let mut closed_at: Option<tokio::time::Instant> = None;
    loop {
        let item = uploads.lock().pop();
        let Some(item) = item else {
            if uploads.closed.load(Ordering::Acquire) {
                return;
            }
            uploads.notify.notified().await;
            continue;
        };
        if uploads.closed.load(Ordering::Acquire) {
            let t = *closed_at.get_or_insert_with(tokio::time::Instant::now);
            if t.elapsed() > drain_deadline {
                tracing::warn!(pending = uploads.pending() + 1, "shutting down with uploads not delivered");
                return;
            }
        }
        let len = item.len();
        match send(&client, &url, item.clone()).await {
            Ok(()) => {
                uploads.metrics.uploads.inc();
                uploads.metrics.buffered_bytes.set(uploads.lock().bytes() as i64);
                backoff = Duration::ZERO;
            }
            Err(Error::Rejected { status, body }) => {
                uploads.metrics.push_errors.inc();
                uploads.count(Dropped { uploads: 1, bytes: len as u64 }, uploads.lock().bytes());
                tracing::error!(status, %body, "server rejected an upload; dropped");
            }
            Err(e) => {
                uploads.metrics.push_errors.inc();
                backoff = next_backoff(backoff);
                tracing::warn!(error = %e, retry_in = ?backoff, "push failed");
                let (d, now) = {
                    let mut b = uploads.lock();
                    let d = b.requeue(item, uploads.max_bytes);
                    (d, b.bytes())
                };
                uploads.count(d, now);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_drops_oldest_first_and_stays_bounded() {
        let mut b = Backlog::default();
        assert_eq!(b.push(vec![1; 40], 100), Dropped::default());
        assert_eq!(b.push(vec![2; 40], 100), Dropped::default());
        assert_eq!(b.push(vec![3; 40], 100), Dropped { uploads: 1, bytes: 40 });
        assert_eq!(b.bytes(), 80);
        assert_eq!(b.push(vec![4; 101], 100), Dropped { uploads: 1, bytes: 101 });
        assert_eq!(b.pop().unwrap()[0], 2);
        assert_eq!(b.requeue(vec![2; 40], 100), Dropped::default());
        assert_eq!(b.push(vec![5; 20], 100), Dropped::default());
        assert_eq!(b.requeue(vec![9; 40], 100), Dropped { uploads: 1, bytes: 40 });
        let order: Vec<u8> = std::iter::from_fn(|| b.pop()).map(|v| v[0]).collect();
        assert_eq!(order, vec![2, 3, 5]);
        assert!(b.is_empty() && b.bytes() == 0);
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            d = next_backoff(d);
            seen.push(d);
        }
        assert_eq!(seen[0], MIN_BACKOFF);
        assert_eq!(seen[1], MIN_BACKOFF * 2);
        assert_eq!(*seen.last().unwrap(), MAX_BACKOFF);
        assert_eq!(push_url("http://x:4040/"), "http://x:4040/push.v1.PusherService/Push");
    }

    #[tokio::test]
    async fn retries_until_the_server_answers_then_delivers_in_order() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Reserve a port, keep it closed for a while: pushes fail and are retried.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let metrics = Arc::new(Metrics::default());
        let uploads = Arc::new(Uploads::new(1 << 20, Arc::clone(&metrics)));
        uploads.enqueue(b"first".to_vec());
        uploads.enqueue(b"second".to_vec());
        let task = tokio::spawn(run(Arc::clone(&uploads), format!("http://127.0.0.1:{port}"), Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(metrics.push_errors.get() >= 1);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(h) = text.find("\r\n\r\n") {
                    let len: usize = text[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    if buf.len() >= h + 4 + len {
                        assert!(text.starts_with("POST /push.v1.PusherService/Push"));
                        bodies.push(buf[h + 4..h + 4 + len].to_vec());
                        break;
                    }
                }
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
        }
        uploads.close();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert_eq!(bodies, vec![b"first".to_vec(), b"second".to_vec()]);
        assert_eq!(metrics.uploads.get(), 2);
        assert_eq!(metrics.dropped_uploads.get(), 0);
    }
}
