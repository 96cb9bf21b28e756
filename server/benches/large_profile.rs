//! Large profiles: what one span profile with tens of thousands of distinct stacks costs to
//! answer, per format, against the release server binary (started on a fresh data directory).
//!
//! ```text
//! cargo bench -p spanprof-server --bench large_profile                        # 20,000 and 100,000 stacks
//! cargo bench -p spanprof-server --bench large_profile -- --stacks 20000 --runs 3
//! cargo bench -p spanprof-server --bench large_profile -- --functions 80000  # many frame names
//! RUST_LOG=spanprof_server=debug cargo bench … # each query's load and total time
//! ```
//!
//! The profile: `--stacks` distinct stacks of 10–40 frames over 2,000 functions (a few entry
//! points at the top), ingested with Pyroscope's `/ingest` in parts of
//! 20,000 stacks that the server merges into one span profile, then read once untimed. Per
//! request: the median time of `--runs` (default 7; the whole body read), the body size, and the server's peak resident memory during
//! the request above its resident memory before it (VmHWM after resetting it through
//! `/proc/<pid>/clear_refs`; needs the same user as the server). Nothing here asserts on time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    stacks: Vec<usize>,
    runs: usize,
    functions: u64,
}

fn args() -> Args {
    let mut a = Args { stacks: vec![20_000, 100_000], runs: 7, functions: 2_000 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--stacks" => a.stacks = value.split(',').map(|v| v.trim().parse().expect("--stacks N[,N…]")).collect(),
            "--runs" => a.runs = value.parse().expect("--runs N"),
            "--functions" => a.functions = value.parse::<u64>().expect("--functions N").max(1),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// Stacks as folded lines: 10–40 frames each, the three outermost from a few entry points (as
/// services have), the rest drawn from `functions` names (2,000 by default, as the issue that
/// asked for this benchmark describes; random paths of that length practically never repeat).
fn folded_lines(stacks: usize, functions: u64) -> Vec<String> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..stacks)
        .map(|_| {
            let depth = 10 + (next() % 31) as usize;
            let mut line = String::new();
            for d in 0..depth {
                if d < 3 {
                    line.push_str(&format!("entry_{d}_{};", next() % 4));
                } else {
                    line.push_str(&format!("fn_{};", next() % functions));
                }
            }
            line.pop();
            line.push_str(&format!(" {}", 1 + next() % 20));
            line
        })
        .collect()
}

/// One HTTP/1.1 request on a fresh connection; returns status and body.
fn request(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(600))).ok();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len())
        .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_spanprof-server"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        // RUST_LOG=spanprof_server=debug shows each query's load and total time.
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::from(std::io::stderr()))
        .spawn()
        .expect("spanprof-server");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, port, _dir: dir }
}

fn main() {
    let a = args();
    let server = start_server();
    let pid = server.child.id();
    println!("| stacks | request | status | size | median time | peak added RSS |");
    println!("|---|---|---|---|---|---|");
    for (n, &stacks) in a.stacks.iter().enumerate() {
        let span = format!("{:016x}", 0xb16_0000 + n as u64);
        let lines = folded_lines(stacks, a.functions);
        let t = Instant::now();
        for part in lines.chunks(20_000) {
            let body = part.join("\n") + "\n";
            let path = format!("/ingest?name=big.cpu%7Bspan_id%3D{span}%7D&format=folded");
            let (status, err) = request(server.port, "POST", &path, body.as_bytes());
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&err));
        }
        eprintln!("{stacks} stacks ingested in {:.2} s", t.elapsed().as_secs_f64());
        // One untimed read first: the store's caches and the allocator's arenas warm up.
        let (_, first) = request(server.port, "GET", &format!("/api/v1/profiles/{span}"), b"");
        let first: serde_json::Value = serde_json::from_slice(&first).unwrap_or_default();
        eprintln!(
            "{stacks} stacks over {} functions: {} call-tree nodes, {} samples",
            a.functions, first["flamegraph"]["total_nodes"], first["flamegraph"]["total"]
        );
        for (label, query) in [
            ("JSON (default, max_nodes 8192)", ""),
            ("JSON, max_nodes=0 (every node)", "?max_nodes=0"),
            ("folded", "?format=folded"),
            ("pprof", "?format=pprof"),
            ("speedscope", "?format=speedscope"),
            ("SVG", "?format=svg"),
        ] {
            let path = format!("/api/v1/profiles/{span}{query}");
            let mut times = Vec::new();
            let mut peak = 0u64;
            let (mut status, mut size) = (0, 0);
            for _ in 0..a.runs.max(1) {
                // Reset the peak (VmHWM) to the current RSS: 5 = "reset the peak resident set size".
                let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
                let before = status_kib(pid, "VmRSS:");
                let t = Instant::now();
                let (s, body) = request(server.port, "GET", &path, b"");
                times.push(t.elapsed());
                peak = peak.max(status_kib(pid, "VmHWM:").saturating_sub(before));
                (status, size) = (s, body.len());
            }
            times.sort();
            let median = times[times.len() / 2];
            println!(
                "| {stacks} | {label} | {status} | {:.2} MB | {:.0} ms | {:.1} MiB |",
                size as f64 / 1e6,
                median.as_secs_f64() * 1e3,
                peak as f64 / 1024.0
            );
        }
    }
}
