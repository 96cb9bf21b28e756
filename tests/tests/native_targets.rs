//! The sampler on targets that are not Rust: a C program built with `gcc -O2` (no frame pointers:
//! DWARF unwinding from `.eh_frame`) and a Go program (no `.eh_frame`: Go's zlib-compressed
//! `.debug_frame`, and names from Go's symbol table). Both are built from `tests/targets/` at test
//! time; `scripts/test` installs `golang-go`. Needs perf_event_open (root or CAP_PERFMON).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

mod common;
use common::*;

/// The tests share two cores: one at a time keeps sample counts meaningful.
static SERIAL: Mutex<()> = Mutex::new(());

fn targets() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/targets"))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (is the toolchain installed?)"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `binary`, waits for its `ready`, samples it for 3 s and returns the whole-process
/// profile's folded stacks (the target has no span-context channel).
fn sample(binary: &Path) -> Vec<(String, u64)> {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = start_server(port, data.path());
    let mut child = Command::new(binary).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let target = Proc(child);
    let (sidecar, metrics) = start_sidecar(port, None, Some(target.pid()), &[]);
    std::thread::sleep(Duration::from_secs(3));
    let failures = metric(metrics, "spanprof_sidecar_unwind_failures_total");
    sidecar.terminate();
    drop(target);
    assert_eq!(failures, 0, "unwind failures");
    process_folded(port, "e2e")
}

/// Samples whose stack holds `chain` (`caller;callee`), and all samples.
fn count(folded: &[(String, u64)], chain: &str) -> (u64, u64) {
    let with = folded.iter().filter(|(s, _)| s.contains(chain)).map(|(_, n)| n).sum();
    (with, folded.iter().map(|(_, n)| n).sum())
}

#[test]
fn c_binary_without_frame_pointers_unwinds_through_eh_frame() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("burn-c");
    run(Command::new("gcc").args(["-O2", "-fomit-frame-pointer", "-o"]).arg(&binary).arg(targets().join("burn.c")));
    let folded = sample(&binary);
    let (burning, total) = count(&folded, "main;burn_c_outer;burn_c_inner");
    eprintln!("{burning} of {total} samples in main;burn_c_outer;burn_c_inner: {folded:?}");
    // 3 s of one busy thread at 100 Hz; the machine may be shared.
    assert!(burning >= 60, "{burning} of {total}: {folded:?}");
    assert!(burning * 10 >= total * 9, "{burning} of {total}: {folded:?}");
    // Complete stacks, from the process's entry point.
    let complete = folded
        .iter()
        .filter(|(s, _)| s.contains("burn_c_inner") && s.starts_with("_start;__libc_start_main"))
        .map(|(_, n)| n)
        .sum::<u64>();
    assert!(complete * 10 >= burning * 9, "{complete} of {burning} complete: {folded:?}");
}

#[test]
fn go_binary_unwinds_through_its_debug_frame_and_names_go_functions() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("burn-go");
    run(Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(targets().join("burn.go"))
        .env("GOCACHE", dir.path().join("gocache"))
        .env("GOPATH", dir.path().join("gopath"))
        .env("GO111MODULE", "off")
        .env("GOFLAGS", ""));
    let folded = sample(&binary);
    let chain = "runtime.main;main.main;main.spinGo;main.burnGo";
    let (burning, total) = count(&folded, chain);
    eprintln!("{burning} of {total} samples in {chain}: {folded:?}");
    assert!(burning >= 60, "{burning} of {total}: {folded:?}");
    assert!(burning * 10 >= total * 9, "{burning} of {total}: {folded:?}");
}
