//! Printing what a phase measured.

use super::*;

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

pub(crate) fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

pub(crate) struct DiskFigures {
    pub(crate) file_bytes: u64,
    pub(crate) alloc_bytes: u64,
    pub(crate) record_bytes: f64,
    pub(crate) samples: u64,
    pub(crate) span_profiles: u64,
}

pub(crate) fn print_ingest(label: &str, r: &IngestResult, samples_per_push: f64) {
    let mut lat = r.latencies.clone();
    lat.sort_unstable();
    let p = |q: f64| lat.get(((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len().max(1)) - 1).copied();
    println!(
        "| {label} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {} | {} | {} | {:.2} MB | {} |",
        r.pushes,
        r.elapsed.as_secs_f64(),
        r.samples_per_s(),
        r.spans_per_s(),
        r.pushes as f64 / r.elapsed.as_secs_f64(),
        p(0.5).map(ms).unwrap_or_default(),
        p(0.99).map(ms).unwrap_or_default(),
        match (r.rate_between(0.0, 0.1, samples_per_push), r.rate_between(0.9, 1.0, samples_per_push)) {
            (Some(a), Some(b)) => format!("{a:.0} → {b:.0}"),
            _ => "-".into(),
        },
        r.cpu.write_bytes as f64 / 1e6 / r.pushes.max(1) as f64,
        r.retries_503,
    );
}

pub(crate) fn print_latency(l: &Latency) {
    println!(
        "| {} | {} | {} | {} | {} | {} | {:.1} |",
        l.label,
        l.samples.len(),
        ms(l.pct(0.5)),
        ms(l.pct(0.99)),
        ms(l.max()),
        ms(l.mean()),
        l.bytes as f64 / l.samples.len().max(1) as f64 / 1e3,
    );
}
