//! The web UI in a real browser: starts the server binary on an empty store and runs the
//! Playwright script `tests/ui/ui.test.mjs`, which seeds data through `/ingest` and drives
//! headless Debian Chromium. `scripts/test` installs Chromium and playwright-core.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn ui_shows_flame_graphs_and_finds_profiles() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let ui_dir = root.join("tests/ui");
    assert!(
        ui_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run scripts/test (or `npm ci` in tests/ui)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/test (it installs Debian's chromium) or set CHROMIUM"
    );

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_spanprof-server"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = Command::new("node")
        .arg(ui_dir.join("ui.test.mjs"))
        .arg(format!("http://127.0.0.1:{port}"))
        .env("CHROMIUM", &chromium)
        .env("UI_TEST_SCREENSHOT", dir.path().join("ui.png"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let _ = server.kill();
    let _ = server.wait();
    let out = out.expect("running node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "UI test failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains(" passed, 0 failed"), "unexpected UI test output:\n{stdout}\n{stderr}");
}
