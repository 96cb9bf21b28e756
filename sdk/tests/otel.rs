//! Feature `opentelemetry`: with `tracing-opentelemetry` in the subscriber, the channel carries the
//! OpenTelemetry span ID of each local root (the profile ID) and its trace ID, exactly as an
//! exporter sees them; remote parents make local roots; root spans carry the profile attributes.
#![cfg(feature = "opentelemetry")]

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use spanprof::{PROFILE_ID_ATTRIBUTE, PROFILE_URL_ATTRIBUTE, RootSpan, SpanProfLayer, root_of};
use spanprof_channel::{Answer, Reader, current_tid, monotonic_ns};
use tracing::{Dispatch, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::prelude::*;

const URL: &str = "http://localhost:4040/profiles/{profile_id}";

/// Where `tracing-opentelemetry` sits relative to spanprof: both orders must work, since the
/// layers' callbacks then run in opposite orders.
#[derive(Clone, Copy, Debug)]
enum Order {
    OtelInside,
    OtelOutside,
}

const ORDERS: [Order; 2] = [Order::OtelInside, Order::OtelOutside];

struct Setup {
    _dir: tempfile::TempDir,
    reader: Reader,
    exporter: InMemorySpanExporter,
    dispatch: Dispatch,
}

fn setup(order: Order) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let spanprof = SpanProfLayer::builder().context_dir(dir.path()).profile_url(URL).build().unwrap();
    let reader = Reader::open(spanprof.context_file().unwrap()).unwrap();
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let tracer = provider.tracer("spanprof-test");
    let dispatch = match order {
        Order::OtelInside => Dispatch::new(
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer)).with(spanprof),
        ),
        Order::OtelOutside => Dispatch::new(
            tracing_subscriber::registry().with(spanprof).with(tracing_opentelemetry::layer().with_tracer(tracer)),
        ),
    };
    Setup { _dir: dir, reader, exporter, dispatch }
}

impl Setup {
    /// Finished spans by name (each name used once per test).
    fn finished(&self) -> HashMap<String, SpanData> {
        self.exporter.get_finished_spans().unwrap().into_iter().map(|s| (s.name.to_string(), s)).collect()
    }
}

/// A clock reading strictly after the previous one, so transitions and probes are ordered.
fn now() -> u64 {
    let t = monotonic_ns();
    while monotonic_ns() == t {}
    monotonic_ns()
}

fn span_id(s: &SpanData) -> u64 {
    u64::from_be_bytes(s.span_context.span_id().to_bytes())
}

fn trace_id(s: &SpanData) -> u128 {
    u128::from_be_bytes(s.span_context.trace_id().to_bytes())
}

fn attribute(s: &SpanData, key: &str) -> Option<String> {
    s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str().into_owned())
}

/// The (span ID, trace ID) the channel answers for `tid` at `t`.
fn published(reader: &Reader, tid: u32, t: u64) -> Option<(u64, u128)> {
    match reader.lookup(tid, t) {
        Answer::Span(s) => Some((s.span_id, s.trace_id)),
        other => panic!("tid {tid} at {t}: {other:?}"),
    }
}

#[test]
fn the_channel_carries_the_otel_span_and_trace_ids_of_the_local_root() {
    for order in ORDERS {
        let setup = setup(order);
        let tid = current_tid();
        let mut probes = Vec::new();
        let mut roots = Vec::new();
        tracing::dispatcher::with_default(&setup.dispatch, || {
            let order_vehicle = info_span!("OrderVehicle");
            order_vehicle.in_scope(|| {
                probes.push(now());
                let find = info_span!("find_nearest_vehicle");
                find.in_scope(|| {
                    probes.push(now());
                    info_span!("check_driver_availability").in_scope(|| probes.push(now()));
                });
                roots.push(root_of(&find));
            });
            roots.push(root_of(&order_vehicle));
        });
        let spans = setup.finished();
        let root = &spans["OrderVehicle"];
        let expected = (span_id(root), trace_id(root));
        assert_ne!(expected.0, 0, "{order:?}");
        for &t in &probes {
            assert_eq!(published(&setup.reader, tid, t), Some(expected), "{order:?}: the root's OTel IDs at {t}");
        }
        for name in ["find_nearest_vehicle", "check_driver_availability"] {
            assert_eq!(trace_id(&spans[name]), expected.1, "{order:?}: {name} is in the root's trace");
            assert_ne!(span_id(&spans[name]), expected.0);
        }
        let as_root = RootSpan { profile_id: expected.0, trace_id: expected.1 };
        assert_eq!(roots, vec![Some(as_root), Some(as_root)], "{order:?}: root_of agrees");
        assert_eq!(as_root.profile_id_hex(), root.span_context.span_id().to_string(), "profile ID = OTel span ID hex");
        assert_eq!(as_root.trace_id_hex(), root.span_context.trace_id().to_string());
    }
}

#[test]
fn only_root_spans_get_the_profile_attributes() {
    for order in ORDERS {
        let setup = setup(order);
        tracing::dispatcher::with_default(&setup.dispatch, || {
            info_span!("OrderVehicle").in_scope(|| {
                info_span!("find_nearest_vehicle").in_scope(|| {});
            });
            info_span!("CarHandler").in_scope(|| {});
        });
        let spans = setup.finished();
        assert_eq!(spans.len(), 3, "{order:?}");
        for name in ["OrderVehicle", "CarHandler"] {
            let root = &spans[name];
            let id = format!("{:016x}", span_id(root));
            assert_eq!(attribute(root, PROFILE_ID_ATTRIBUTE), Some(id.clone()), "{order:?} {name}");
            assert_eq!(
                attribute(root, PROFILE_URL_ATTRIBUTE),
                Some(format!("http://localhost:4040/profiles/{id}")),
                "{order:?} {name}"
            );
        }
        let child = &spans["find_nearest_vehicle"];
        assert_eq!(attribute(child, PROFILE_ID_ATTRIBUTE), None, "{order:?}: children are not marked");
        assert_eq!(attribute(child, PROFILE_URL_ATTRIBUTE), None, "{order:?}");
    }
}

#[test]
fn a_span_with_a_remote_parent_is_a_local_root_in_the_remote_trace() {
    const REMOTE_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const REMOTE_SPAN: &str = "00f067aa0ba902b7";
    for order in ORDERS {
        let setup = setup(order);
        let headers = HashMap::from([("traceparent".to_string(), format!("00-{REMOTE_TRACE}-{REMOTE_SPAN}-01"))]);
        let tid = current_tid();
        let (mut in_connection, mut in_request, mut in_child, mut after) = (0, 0, 0, 0);
        tracing::dispatcher::with_default(&setup.dispatch, || {
            // A server's connection span, itself a local root of its own trace ...
            let connection = info_span!("connection");
            connection.in_scope(|| {
                in_connection = now();
                // ... in which a request continues a trace begun in another process.
                let request = info_span!("OrderVehicle");
                request.set_parent(TraceContextPropagator::new().extract(&headers)).unwrap();
                request.in_scope(|| {
                    in_request = now();
                    info_span!("find_nearest_vehicle").in_scope(|| in_child = now());
                });
                after = now();
            });
        });
        let spans = setup.finished();
        let (connection, request, child) =
            (&spans["connection"], &spans["OrderVehicle"], &spans["find_nearest_vehicle"]);
        assert_eq!(request.span_context.trace_id(), TraceId::from_hex(REMOTE_TRACE).unwrap(), "{order:?}");
        assert_eq!(request.parent_span_id, SpanId::from_hex(REMOTE_SPAN).unwrap());
        assert!(request.parent_span_is_remote);
        let connection_ids = (span_id(connection), trace_id(connection));
        let request_ids = (span_id(request), trace_id(request));
        assert_ne!(connection_ids.1, request_ids.1);
        assert_eq!(published(&setup.reader, tid, in_connection), Some(connection_ids), "{order:?}");
        assert_eq!(published(&setup.reader, tid, in_request), Some(request_ids), "{order:?}: the request is a root");
        assert_eq!(published(&setup.reader, tid, in_child), Some(request_ids), "{order:?}: its child maps to it");
        assert_eq!(published(&setup.reader, tid, after), Some(connection_ids), "{order:?}: back in the connection");
        assert_eq!(trace_id(child), request_ids.1);
        for root in [connection, request] {
            assert_eq!(attribute(root, PROFILE_ID_ATTRIBUTE), Some(format!("{:016x}", span_id(root))), "{order:?}");
        }
        assert_eq!(attribute(child, PROFILE_ID_ATTRIBUTE), None);
    }
}

#[test]
fn a_root_entered_on_another_thread_publishes_the_same_otel_ids_there() {
    let setup = setup(Order::OtelInside);
    let root = tracing::dispatcher::with_default(&setup.dispatch, || info_span!("CarHandler"));
    let (tid, t) = std::thread::spawn({
        let (dispatch, root) = (setup.dispatch.clone(), root.clone());
        move || {
            tracing::dispatcher::with_default(&dispatch, || {
                let child = info_span!(parent: &root, "check_driver_availability");
                let mut t = 0;
                child.in_scope(|| t = now());
                (current_tid(), t)
            })
        }
    })
    .join()
    .unwrap();
    drop(root);
    let spans = setup.finished();
    let car = &spans["CarHandler"];
    assert_eq!(published(&setup.reader, tid, t), Some((span_id(car), trace_id(car))));
    assert_eq!(trace_id(&spans["check_driver_availability"]), trace_id(car));
}

#[test]
fn without_an_otel_tracer_roots_fall_back_to_random_ids() {
    let dir = tempfile::tempdir().unwrap();
    let spanprof = SpanProfLayer::builder().context_dir(dir.path()).build().unwrap();
    let reader = Reader::open(spanprof.context_file().unwrap()).unwrap();
    // `tracing-opentelemetry` without a tracer: every OTel context is invalid.
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(tracing_opentelemetry::layer()).with(spanprof));
    let tid = current_tid();
    let (mut t, mut ids) = (0, None);
    tracing::dispatcher::with_default(&dispatch, || {
        let span = info_span!("OrderVehicle");
        span.in_scope(|| t = now());
        ids = root_of(&span);
    });
    let ids = ids.unwrap();
    assert_ne!(ids.profile_id, 0);
    assert_eq!(published(&reader, tid, t), Some((ids.profile_id, ids.trace_id)));
}
