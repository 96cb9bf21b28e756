//! The demo binary as a user runs it: with the spanprof environment set, its load generator
//! drives requests, root spans are printed with their profile URLs, and the channel file answers
//! for the threads that served them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            return out;
        }
        assert!(Instant::now() < deadline, "the demo never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn demo_serves_orders_prints_roots_and_publishes_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_spanprof-demo"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--load-rps", "40", "--print-roots", "--work-scale", "0.05"])
        .env("SPANPROF_CONTEXT_DIR", dir.path())
        .env("SPANPROF_PROFILE_URL", "http://localhost:4040/profiles/{profile_id}")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let pid = child.0.id();

    let body = get(port, "/car?region=eu-north");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"vehicle\":\"car\"") && body.contains("\"region\":\"eu-north\""), "{body}");
    assert!(body.contains("\"profile_id\":\""), "{body}");
    assert!(get(port, "/healthz").ends_with("ok"));
    assert!(get(port, "/metrics").contains("spanprof_demo_orders_total{vehicle=\"car\"}"));

    // The load generator's requests show up as printed roots of both kinds.
    let mut names = std::collections::HashSet::new();
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while names.len() < 2 && seen.len() < 200 {
        let line = lines.next().unwrap().unwrap();
        let fields: std::collections::HashMap<&str, &str> =
            line.split(' ').skip(1).filter_map(|kv| kv.split_once('=')).collect();
        assert!(line.starts_with("root "), "{line}");
        let span_id = fields["span_id"];
        assert_eq!(span_id.len(), 16);
        assert_eq!(fields["trace_id"].len(), 32);
        assert_eq!(fields["profile_url"], format!("http://localhost:4040/profiles/{span_id}"));
        names.insert(fields["span_name"].to_owned());
        seen.push(u64::from_str_radix(span_id, 16).unwrap());
    }
    assert!(names.contains("OrderVehicle") && names.contains("CarHandler"), "{names:?}");

    // The channel file is there, for this process, and names the published roots.
    let reader = spanprof_channel::Reader::open(&dir.path().join(format!("{pid}.spanctx"))).unwrap();
    assert_eq!(reader.header().pid, pid);
    let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let published: std::collections::HashSet<u64> =
        tids.iter().flat_map(|&tid| reader.history(tid)).filter_map(|(_, s)| s.map(|s| s.span_id)).collect();
    assert!(seen.iter().any(|id| published.contains(id)), "no printed root was published");
}
