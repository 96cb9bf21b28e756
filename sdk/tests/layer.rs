//! The layer against a real channel file: what a sampler reading it would see.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::{Arc, Mutex};

use spanprof::{RootSpan, SpanProfLayer, root_of};
use spanprof_channel::{Answer, Reader, Root, current_tid, monotonic_ns};
use tracing::{Instrument, info_span};
use tracing_subscriber::prelude::*;

fn layer(ring: u32) -> (tempfile::TempDir, SpanProfLayer, Reader) {
    let dir = tempfile::tempdir().unwrap();
    let layer = SpanProfLayer::builder().context_dir(dir.path()).ring_capacity(ring).build().unwrap();
    let reader = Reader::open(layer.context_file().unwrap()).unwrap();
    (dir, layer, reader)
}

/// A clock reading strictly after the previous one, so transitions and probes are ordered.
fn now() -> u64 {
    let t = monotonic_ns();
    while monotonic_ns() == t {}
    monotonic_ns()
}

fn root_id(answer: Answer) -> Option<u64> {
    match answer {
        Answer::Span(Root { span_id, .. }) => Some(span_id),
        _ => None,
    }
}

#[test]
fn nested_sync_spans_map_to_their_root() {
    let (_dir, layer, reader) = layer(1024);
    let tid = current_tid();
    let (mut root, mut child, mut grandchild) = (None, None, None);
    let mut t = Vec::new();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        t.push(now());
        let order = info_span!("OrderVehicle");
        order.in_scope(|| {
            t.push(now());
            let find = info_span!("find_nearest_vehicle");
            find.in_scope(|| {
                t.push(now());
                let deeper = info_span!("check_driver_availability");
                deeper.in_scope(|| t.push(now()));
                grandchild = root_of(&deeper);
                t.push(now());
            });
            child = root_of(&find);
            t.push(now());
        });
        root = root_of(&order);
        t.push(now());
    });
    let root = root.unwrap();
    assert_eq!(child, Some(root), "a child maps to its root");
    assert_eq!(grandchild, Some(root));
    assert_eq!(reader.lookup(tid, t[0]), Answer::Unknown, "no span yet: the thread is not registered");
    for &inside in &t[1..6] {
        match reader.lookup(tid, inside) {
            Answer::Span(s) => {
                assert_eq!((s.span_id, s.trace_id), (root.profile_id, root.trace_id));
                assert_eq!(reader.name(s.name).as_deref(), Some("OrderVehicle"));
            }
            other => panic!("inside the root: {other:?}"),
        }
    }
    assert_eq!(reader.lookup(tid, t[6]), Answer::NoSpan, "back to no span");
    // Only root changes are published: into the root, and out of it.
    let history = reader.history(tid);
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].1.map(|s| s.span_id), Some(root.profile_id));
    assert_eq!(history[1].1, None);
}

#[test]
fn exit_and_reentry_publish_each_change_with_a_stable_profile_id() {
    let (_dir, layer, reader) = layer(1024);
    let tid = current_tid();
    let mut probes = Vec::new();
    let (mut a_ids, mut b_ids) = (None, None);
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        let a = info_span!("CarHandler");
        let b = info_span!("OrderVehicle");
        a_ids = root_of(&a);
        b_ids = root_of(&b);
        a.in_scope(|| probes.push(("a", now())));
        probes.push(("none", now()));
        a.in_scope(|| {
            probes.push(("a", now()));
            // Entering another root inside switches to it, and back on exit.
            b.in_scope(|| probes.push(("b", now())));
            probes.push(("a", now()));
        });
        b.in_scope(|| probes.push(("b", now())));
        // Out-of-order exit: leave `a` while `b`, entered later, is still entered.
        let ga = a.enter();
        let gb = b.enter();
        probes.push(("b", now()));
        drop(ga);
        probes.push(("b", now()));
        drop(gb);
        probes.push(("none", now()));
    });
    let (a, b) = (a_ids.unwrap(), b_ids.unwrap());
    assert_ne!(a.profile_id, b.profile_id);
    assert_ne!(a.trace_id, b.trace_id, "two roots without a parent are two traces");
    for (which, t) in probes {
        let expected = match which {
            "a" => Some(a.profile_id),
            "b" => Some(b.profile_id),
            _ => None,
        };
        let answer = reader.lookup(tid, t);
        assert_ne!(answer, Answer::Unknown, "{which} at {t}");
        assert_eq!(root_id(answer), expected, "{which} at {t}");
    }
    let published: Vec<Option<u64>> = reader.history(tid).iter().map(|(_, s)| s.map(|s| s.span_id)).collect();
    let (pa, pb) = (Some(a.profile_id), Some(b.profile_id));
    assert_eq!(published, vec![pa, None, pa, pb, pa, None, pb, None, pa, pb, None]);
}

#[test]
fn child_created_on_another_thread_with_an_explicit_parent_keeps_the_root() {
    let (_dir, layer, reader) = layer(1024);
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    let root = tracing::dispatcher::with_default(&dispatch, || info_span!("OrderVehicle"));
    let expected = root_of(&root).unwrap();
    let (tid, t, child_root) = std::thread::spawn({
        let (dispatch, root) = (dispatch.clone(), root.clone());
        move || {
            tracing::dispatcher::with_default(&dispatch, || {
                let child = info_span!(parent: &root, "charge_card");
                let mut t = 0;
                child.in_scope(|| t = now());
                (current_tid(), t, root_of(&child))
            })
        }
    })
    .join()
    .unwrap();
    assert_eq!(child_root, Some(expected));
    assert_eq!(root_id(reader.lookup(tid, t)), Some(expected.profile_id), "the exited thread's window still answers");
}

#[test]
fn tokio_tasks_are_attributed_poll_by_poll_across_threads() {
    const TASKS: usize = 200;
    const POLLS: usize = 8;
    let (_dir, layer, reader) = layer(1 << 15);
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    let _default = tracing::dispatcher::set_default(&dispatch);
    // As `init()` would do for the whole process, but only for this test's threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&dispatch)))
        .build()
        .unwrap();
    // Each poll records (thread, time, the root the task is in).
    let probes: Arc<Mutex<Vec<(u32, u64, RootSpan)>>> = Arc::new(Mutex::new(Vec::new()));
    rt.block_on(async {
        let handles: Vec<_> = (0..TASKS)
            .map(|i| {
                let probes = Arc::clone(&probes);
                let span = if i % 2 == 0 { info_span!("OrderVehicle", i) } else { info_span!("CarHandler", i) };
                tokio::spawn(
                    async move {
                        let me = root_of(&tracing::Span::current()).unwrap();
                        for p in 0..POLLS {
                            let inner = info_span!("find_nearest_vehicle", p);
                            async {
                                let mut x = 0u64;
                                for k in 0..(1000 + i * 7) {
                                    x = x.wrapping_mul(31).wrapping_add(k as u64);
                                }
                                std::hint::black_box(x);
                                let t = now();
                                probes.lock().unwrap().push((current_tid(), t, me));
                            }
                            .instrument(inner)
                            .await;
                            tokio::task::yield_now().await;
                        }
                    }
                    .instrument(span),
                )
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    });
    let probes = probes.lock().unwrap();
    assert_eq!(probes.len(), TASKS * POLLS);
    let roots: HashSet<u64> = probes.iter().map(|p| p.2.profile_id).collect();
    assert_eq!(roots.len(), TASKS, "every task is its own root");
    let threads: HashSet<u32> = probes.iter().map(|p| p.0).collect();
    for &(tid, t, root) in probes.iter() {
        match reader.lookup(tid, t) {
            Answer::Span(s) => {
                assert_eq!((s.span_id, s.trace_id), (root.profile_id, root.trace_id), "tid {tid} at {t}")
            }
            other => panic!("tid {tid} at {t}: {other:?}, expected {root:?}"),
        }
    }
    eprintln!("{} probes on {} threads", probes.len(), threads.len());
    assert!(threads.len() > 1, "the runtime used several threads");
    drop(rt);
}

#[test]
fn without_a_context_dir_the_layer_is_a_no_op() {
    let layer = SpanProfLayer::from_vars(|_| None).unwrap();
    assert!(!layer.is_enabled());
    assert!(layer.context_file().is_none());
    let layer2 = SpanProfLayer::from_vars(|n| (n == "SPANPROF_CONTEXT_DIR").then(OsString::new)).unwrap();
    assert!(!layer2.is_enabled(), "an empty value counts as unset");
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        let span = info_span!("OrderVehicle");
        span.in_scope(|| assert_eq!(root_of(&tracing::Span::current()), None));
    });
}

#[test]
fn from_vars_configures_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().as_os_str().to_owned();
    let layer = SpanProfLayer::from_vars(|n| match n {
        "SPANPROF_CONTEXT_DIR" => Some(d.clone()),
        "SPANPROF_PROFILE_URL" => Some("http://localhost:4040/profiles/{profile_id}".into()),
        _ => None,
    })
    .unwrap();
    assert!(layer.is_enabled());
    assert_eq!(layer.context_file().unwrap(), dir.path().join(spanprof_channel::file_name(std::process::id())));
    assert_eq!(layer.profile_url_template(), Some("http://localhost:4040/profiles/{profile_id}"));
    assert_eq!(layer.dropped_transitions(), 0);

    let missing = dir.path().join("missing");
    let err = SpanProfLayer::from_vars(|n| (n == "SPANPROF_CONTEXT_DIR").then(|| missing.clone().into_os_string()))
        .unwrap_err();
    assert!(err.to_string().contains("SPANPROF_CONTEXT_DIR"), "{err}");
    let err = SpanProfLayer::from_vars(|n| (n == "SPANPROF_PROFILE_URL").then(|| "http://x/".into())).unwrap_err();
    assert!(err.to_string().contains("{profile_id}"), "{err}");
    let err = SpanProfLayer::builder().context_dir(dir.path()).ring_capacity(1000).build().unwrap_err();
    assert!(err.to_string().contains("power of two"), "{err}");
}

#[test]
fn threads_beyond_the_slot_table_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let layer = SpanProfLayer::builder().context_dir(dir.path()).max_threads(1).build().unwrap();
    let reader = Reader::open(layer.context_file().unwrap()).unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer.clone()));
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let d = dispatch.clone();
    let holder = std::thread::spawn(move || {
        tracing::dispatcher::with_default(&d, || {
            let span = info_span!("OrderVehicle");
            let _g = span.enter();
            ready_tx.send(()).unwrap();
            hold_rx.recv().unwrap();
        })
    });
    ready_rx.recv().unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        let span = info_span!("CarHandler");
        span.in_scope(|| {});
        span.in_scope(|| {});
    });
    assert_eq!(layer.dropped_transitions(), 4, "two enter/exit pairs without a slot");
    assert_eq!(reader.counters().dropped_registrations, 1, "one failed attempt, then a back-off");
    hold_tx.send(()).unwrap();
    holder.join().unwrap();
}
