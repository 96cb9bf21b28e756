//! Shared helpers of the server's integration tests: a server on a real socket and pprof builders.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use spanprof_server::Config;
use spanprof_server::ingest::Limits;
use spanprof_server::proto::pprof::{Profile, ProfileBuilder, Sample};
use spanprof_server::proto::push::{LabelPair, PushRequest, RawProfileSeries, RawSample};
use spanprof_server::store::Retention;
use spanprof_server::store::embedded::EmbeddedOptions;

pub const SPAN_A: &str = "00f067aa0ba902b7";
pub const SPAN_B: &str = "1111222233334444";
pub const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A server running in this process on 127.0.0.1:<random port>.
pub struct TestServer {
    pub base: String,
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<spanprof_server::Result<()>>>,
}

pub fn config(dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        retention: Retention::default(),
        retention_interval: Duration::from_secs(3600),
        limits: Limits { max_body_bytes: 1 << 20, max_decompressed_bytes: 4 << 20, ..Limits::default() },
        store: EmbeddedOptions::default(),
        queries: Default::default(),
        blocks: None,
    }
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(spanprof_server::serve(config, listener, Some(rx)));
        let base = format!("http://{addr}");
        for _ in 0..100 {
            if reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        TestServer { base, addr, shutdown: Some(tx), handle: Some(handle) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Graceful shutdown; waits until the store is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

/// The real `spanprof-server` binary, as a child process on 127.0.0.1:<free port>.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub base: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl ServerProcess {
    /// Starts the server on data directory `dir` with `args` and `envs`; returns once it is ready.
    pub async fn spawn(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> ServerProcess {
        Self::spawn_on(free_port(), dir, args, envs).await
    }

    /// [`Self::spawn`] on a given port (a restart on the same address, peers that know it).
    pub async fn spawn_on(port: u16, dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> ServerProcess {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spanprof-server"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..400 {
            if reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status().is_success()) {
                return ServerProcess { child, base };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("server did not become ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status of the graceful shutdown.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.child.wait().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pprof with `cpu/nanoseconds` values at a 10 ms period. Each entry: root-first frames,
/// sample count, and sample labels.
/// Root-first frames, sample count, sample labels.
pub type StackSpec<'a> = (&'a [&'a str], i64, &'a [(&'a str, &'a str)]);

pub fn pprof(stacks: &[StackSpec<'_>]) -> Profile {
    let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]).period("cpu", "nanoseconds", 10_000_000);
    for (frames, samples, labels) in stacks {
        let locations = frames.iter().rev().map(|f| b.name_location(f, 0)).collect();
        let label = labels.iter().map(|(k, v)| b.label(k, v)).collect();
        b.sample(locations, vec![samples * 10_000_000], label);
    }
    b.finish()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Decodes a gzipped pprof, as profilers write them.
pub fn gunzip_pprof(gz: &[u8]) -> Profile {
    use std::io::Read;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut raw).unwrap();
    Profile::decode(raw.as_slice()).unwrap()
}

/// The string value of a sample's label `key`, if any.
pub fn sample_label<'a>(p: &'a Profile, sample: &Sample, key: &str) -> Option<&'a str> {
    sample
        .label
        .iter()
        .find(|l| p.string_table.get(l.key as usize).is_some_and(|k| k == key))
        .and_then(|l| p.string_table.get(l.str as usize))
        .map(String::as_str)
}

/// Index of the sample type `r#type`/`unit`, if the profile has it.
pub fn sample_type_index(p: &Profile, r#type: &str, unit: &str) -> Option<usize> {
    p.sample_type
        .iter()
        .position(|t| p.string_table[t.r#type as usize] == r#type && p.string_table[t.unit as usize] == unit)
}

/// Sends a profile to `/ingest?{query}` as a multipart `profile` part, as the Pyroscope Go and
/// Node.js clients upload; returns the response.
pub async fn ingest_multipart(base: &str, query: &str, profile: &[u8]) -> reqwest::Response {
    let boundary = "----spanprofboundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(profile);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    reqwest::Client::new()
        .post(format!("{base}/ingest?{query}"))
        .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A one-series push request as pyroscope-rs sends it.
pub fn push_request(service: &str, profile: &Profile) -> PushRequest {
    PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                LabelPair { name: "__name__".into(), value: "process_cpu".into() },
                LabelPair { name: "service_name".into(), value: service.into() },
                LabelPair { name: "namespace".into(), value: "default".into() },
                LabelPair { name: "pod".into(), value: "ride-7d4f".into() },
            ],
            samples: vec![RawSample { raw_profile: profile.encode_to_vec(), id: "0b1c".into() }],
        }],
    }
}

/// Pushes with the Connect protocol (protobuf, gzip), returning status and body.
pub async fn push(base: &str, req: &PushRequest) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{base}/push.v1.PusherService/Push"))
        .header("Content-Type", "application/proto")
        .header("Content-Encoding", "gzip")
        .header("Connect-Protocol-Version", "1")
        .body(gzip(&req.encode_to_vec()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// Decodes a flame graph's levels (Pyroscope's flamebearer) into `{depth, x, name, total, self}`
/// bars, checking the encoding on the way.
pub fn bars(graph: &serde_json::Value) -> Vec<serde_json::Value> {
    let names = graph["names"].as_array().expect("names");
    let mut out = Vec::new();
    for (depth, level) in graph["levels"].as_array().expect("levels").iter().enumerate() {
        let values: Vec<u64> =
            level.as_array().expect("a level").iter().map(|v| v.as_u64().expect("a number")).collect();
        assert_eq!(values.len() % 4, 0, "levels hold [offset, total, self, name] groups");
        let mut end = 0;
        for q in values.chunks(4) {
            let x = end + q[0];
            end = x + q[1];
            out.push(serde_json::json!({
                "depth": depth, "x": x, "total": q[1], "self": q[2], "name": names[q[3] as usize],
            }));
        }
    }
    out
}

/// Finds the first bar named `name` (shallowest, leftmost) in a flame graph.
pub fn find(graph: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    bars(graph).into_iter().find(|b| b["name"] == name)
}
