//! A file written by one process and read by another: this test binary runs itself as the
//! writer child.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::tick_after;
use spanprof_channel::{Answer, Options, Reader, Root, Writer};

const CHILD_DIR_ENV: &str = "SPANPROF_CHANNEL_TEST_CHILD_DIR";
const TEST_NAME: &str = "file_written_by_one_process_is_read_by_another";

/// The child: writes transitions from a thread, prints them as `GT tid t span trace name`, then
/// keeps the thread alive until its stdin closes.
fn child(dir: &str) {
    let w = std::sync::Arc::new(Writer::create(std::path::Path::new(dir), &Options::default()).unwrap());
    let name = w.intern("CarHandler");
    let handle = std::thread::spawn(move || {
        let mut slot = w.register_thread().unwrap();
        let mut out = std::io::stdout().lock();
        for (i, span_id) in [11u64, 0, 12, 13].into_iter().enumerate() {
            let root =
                (span_id != 0).then_some(Root { span_id, trace_id: u128::from(span_id) << 70 | i as u128, name });
            let t = slot.record(root.as_ref());
            let (trace, n) = root.map_or((0, 0), |r| (r.trace_id, r.name.0));
            writeln!(out, "GT {} {t} {span_id} {trace} {n}", slot.tid()).unwrap();
            tick_after(t);
        }
        writeln!(out, "READY").unwrap();
        out.flush().unwrap();
        drop(out);
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    });
    handle.join().unwrap();
}

#[test]
fn file_written_by_one_process_is_read_by_another() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = proc.id();
    let mut truth = Vec::new();
    let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        // The test harness prints `test <name> ... ` without a newline before the child's output.
        if line.ends_with("READY") {
            break;
        }
        if let Some(rest) = line.find("GT ").map(|i| &line[i + 3..]) {
            let f: Vec<u128> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            truth.push((f[0] as u32, f[1] as u64, f[2] as u64, f[3], f[4] as u32));
        }
    }
    assert_eq!(truth.len(), 4, "the child did not report its transitions");

    let check = |reader: &Reader| {
        for &(tid, t, span_id, trace_id, name) in &truth {
            let expected = if span_id == 0 {
                Answer::NoSpan
            } else {
                Answer::Span(Root { span_id, trace_id, name: spanprof_channel::NameRef(name) })
            };
            assert_eq!(reader.lookup(tid, t), expected);
            assert_eq!(reader.lookup(tid, t + 1), expected);
        }
        let (tid, t, ..) = truth[0];
        assert_eq!(reader.lookup(tid, t - 1), Answer::NoSpan, "registered just before the first transition");
        assert_eq!(reader.lookup(pid, t), Answer::Unknown, "the child's main thread never registered");
    };

    let path = dir.path().join(spanprof_channel::file_name(pid));
    let reader = Reader::open(&path).unwrap();
    assert_eq!(reader.header().pid, pid);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert_eq!(Some(reader.header().start_time), spanprof_channel::layout::parse_stat(&stat).map(|(start, _)| start));
    let name = spanprof_channel::NameRef(truth[0].4);
    assert_eq!(reader.name(name).as_deref(), Some("CarHandler"));
    check(&reader);

    // After the writer process is gone, the file still answers for its threads' lifetimes.
    drop(proc.stdin.take());
    assert!(proc.wait().unwrap().success());
    check(&reader);
    check(&Reader::open(&path).unwrap());
    let last = truth.last().unwrap();
    assert_eq!(reader.lookup(last.0, u64::MAX), Answer::Unknown, "after its thread exited");
}
