//! Cost of a span enter+exit pair with `SpanProfLayer` versus the same subscriber without it:
//! (a) entering and leaving a root span (two transitions published), (b) a child span inside an
//! already entered root (nothing published).

use criterion::{Criterion, criterion_group, criterion_main};
use spanprof::SpanProfLayer;
use tracing_subscriber::prelude::*;

fn bench_pair(c: &mut Criterion, label: &str, layer: Option<SpanProfLayer>) {
    let dispatch = match layer {
        Some(layer) => tracing::Dispatch::new(tracing_subscriber::registry().with(layer)),
        None => tracing::Dispatch::new(tracing_subscriber::registry()),
    };
    tracing::dispatcher::with_default(&dispatch, || {
        let root = tracing::info_span!("OrderVehicle");
        c.bench_function(&format!("root enter+exit/{label}"), |b| b.iter(|| root.in_scope(|| std::hint::black_box(1))));
        let _entered = root.enter();
        let child = tracing::info_span!("find_nearest_vehicle");
        c.bench_function(&format!("child enter+exit/{label}"), |b| {
            b.iter(|| child.in_scope(|| std::hint::black_box(1)))
        });
    });
}

fn layer_overhead(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    bench_pair(c, "registry", None);
    bench_pair(c, "registry+disabled", Some(SpanProfLayer::disabled()));
    let layer = SpanProfLayer::builder().context_dir(dir.path()).build().expect("layer");
    bench_pair(c, "registry+spanprof", Some(layer));
}

criterion_group!(benches, layer_overhead);
criterion_main!(benches);
