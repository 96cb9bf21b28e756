//! The built-in load generator: a steady rate of orders against this server, rotating through
//! vehicles and regions, over plain HTTP/1.1 on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::{App, Region, Vehicle};

/// Requests in flight at most; ticks beyond it are skipped and counted.
const MAX_IN_FLIGHT: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The request path of the `n`th generated order.
pub fn target(n: u64) -> String {
    let vehicle = Vehicle::ALL[(n % 3) as usize];
    let region = Region::ALL[((n / 3) % 3) as usize];
    format!("{}?region={}", vehicle.path(), region.as_str())
}

/// Sends `load_rps` requests per second to `addr` until aborted.
pub async fn generate(addr: SocketAddr, app: Arc<App>) {
    let rps = app.config.load_rps.max(1);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    for n in 0u64.. {
        tick.tick().await;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            app.counters.load_skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let ok = matches!(tokio::time::timeout(REQUEST_TIMEOUT, get(addr, &target(n))).await, Ok(Ok(200)));
            let counter = if ok { &app.counters.load_sent } else { &app.counters.load_failed };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// `GET path` on `addr`; returns the status code.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    parse_status(&response).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}

/// The status code of an HTTP/1.x response.
pub fn parse_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_rotate_through_vehicles_and_regions() {
        assert_eq!(target(0), "/bike?region=us-east");
        assert_eq!(target(1), "/scooter?region=us-east");
        assert_eq!(target(2), "/car?region=us-east");
        assert_eq!(target(3), "/bike?region=eu-north");
        assert_eq!(target(8), "/car?region=ap-south");
        assert_eq!(target(9), target(0));
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
