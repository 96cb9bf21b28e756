//! Exports of a profile: pprof (gzip), folded stacks, speedscope JSON and an SVG flame graph.

use ahash::AHashMap as HashMap;
use std::io::Write;
use std::sync::Arc;

use prost::Message;

use crate::error::{Error, Result};
use crate::proto::pprof::{Label, Mapping, Profile, ProfileBuilder};

/// Export formats of `?format=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Pprof,
    Folded,
    Speedscope,
    Svg,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "json" => Format::Json,
            "pprof" => Format::Pprof,
            "folded" | "collapsed" => Format::Folded,
            "speedscope" => Format::Speedscope,
            "svg" => Format::Svg,
            _ => return None,
        })
    }
}

/// What an exported profile is about; becomes names, comments and pprof labels.
#[derive(Clone, Debug, Default)]
pub struct ExportMeta {
    pub title: String,
    pub period_ns: u64,
    pub time_ms: u64,
    pub duration_ms: u64,
    /// String labels put on every pprof sample (e.g. `span_id`, `trace_id`).
    pub labels: Vec<(&'static str, String)>,
}

type StacksRef<'a> = &'a [(Vec<Arc<str>>, u64)];

/// The stacks in a stable order (by frames), borrowed: exports sort without copying them.
fn sorted(stacks: StacksRef<'_>) -> Vec<&(Vec<Arc<str>>, u64)> {
    let mut out: Vec<&(Vec<Arc<str>>, u64)> = stacks.iter().collect();
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes folded stacks, `a;b;c 12` per line, sorted for stable output.
pub fn write_folded(stacks: StacksRef<'_>, out: &mut dyn Write) -> std::io::Result<()> {
    for (frames, count) in sorted(stacks) {
        let mut first = true;
        for f in frames {
            if !first {
                out.write_all(b";")?;
            }
            first = false;
            out.write_all(f.as_bytes())?;
        }
        writeln!(out, " {count}")?;
    }
    Ok(())
}

/// Folded stacks as one string (see [`write_folded`]).
pub fn folded(stacks: StacksRef<'_>) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and every piece written is UTF-8.
    let _ = write_folded(stacks, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// What a pprof's sample values say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PprofValues {
    /// `samples/count` and `cpu/nanoseconds` (samples × period): a CPU profile.
    #[default]
    SamplesAndCpu,
    /// One value of this type and unit, the stored counts as they are (allocations, …).
    Single { sample_type: String, unit: String },
}

/// Writes a gzipped pprof with sample types `samples/count` and `cpu/nanoseconds`.
pub fn write_pprof(stacks: StacksRef<'_>, meta: &ExportMeta, out: &mut dyn Write) -> Result<()> {
    let raw = pprof_profile(stacks, meta, &PprofValues::SamplesAndCpu).encode_to_vec();
    // Level 1: on a profile of 20,000 stacks, default compression spent more time than all the
    // rest of the export for a file 10–20 % smaller.
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    gz.write_all(&raw)?;
    gz.finish()?;
    Ok(())
}

/// The pprof of `stacks`, not encoded.
pub fn pprof_profile(stacks: StacksRef<'_>, meta: &ExportMeta, values: &PprofValues) -> Profile {
    let mut b = match values {
        PprofValues::SamplesAndCpu => ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]).period(
            "cpu",
            "nanoseconds",
            meta.period_ns as i64,
        ),
        PprofValues::Single { sample_type, unit } => ProfileBuilder::new(&[(sample_type, unit)]),
    };
    b = b.time((meta.time_ms as i64).saturating_mul(1_000_000), (meta.duration_ms as i64).saturating_mul(1_000_000));
    // One mapping for the symbolized frames, so tools don't look for a binary to symbolize with.
    let filename = b.string("spanprof");
    let mapping = b.mapping(Mapping {
        filename,
        has_functions: true,
        has_filenames: false,
        has_line_numbers: false,
        has_inline_frames: true,
        ..Default::default()
    });
    b.comment(&format!("spanprof: {}", meta.title));
    let labels: Vec<Label> = meta.labels.iter().map(|(k, v)| b.label(k, v)).collect();
    b.reserve_samples(stacks.len());
    for (frames, count) in stacks {
        let location_id = frames.iter().rev().map(|f| b.name_location(f, mapping)).collect();
        let value = match values {
            PprofValues::SamplesAndCpu => vec![*count as i64, (*count as i64).saturating_mul(meta.period_ns as i64)],
            PprofValues::Single { .. } => vec![*count as i64],
        };
        b.sample(location_id, value, labels.clone());
    }
    b.finish()
}

/// Writes a speedscope "sampled" profile (https://www.speedscope.app/file-format-schema.json),
/// serialized straight to `out`.
pub fn write_speedscope(stacks: StacksRef<'_>, meta: &ExportMeta, out: &mut dyn Write) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Frame<'a> {
        name: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Shared<'a> {
        frames: Vec<Frame<'a>>,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Sampled<'a> {
        r#type: &'static str,
        name: &'a str,
        unit: &'static str,
        start_value: u64,
        end_value: u64,
        samples: Vec<Vec<u32>>,
        weights: Vec<u64>,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct File<'a> {
        #[serde(rename = "$schema")]
        schema: &'static str,
        exporter: &'static str,
        name: &'a str,
        active_profile_index: u32,
        shared: Shared<'a>,
        profiles: [Sampled<'a>; 1],
    }
    let mut frame_index: HashMap<&str, u32> = HashMap::new();
    let mut frames = Vec::new();
    let mut samples = Vec::with_capacity(stacks.len());
    let mut weights = Vec::with_capacity(stacks.len());
    for (stack, count) in sorted(stacks) {
        let idx: Vec<u32> = stack
            .iter()
            .map(|f| {
                *frame_index.entry(&**f).or_insert_with(|| {
                    frames.push(Frame { name: f });
                    (frames.len() - 1) as u32
                })
            })
            .collect();
        samples.push(idx);
        weights.push(count.saturating_mul(meta.period_ns));
    }
    let total: u64 = weights.iter().fold(0u64, |a, w| a.saturating_add(*w));
    let file = File {
        schema: "https://www.speedscope.app/file-format-schema.json",
        exporter: concat!("spanprof ", env!("CARGO_PKG_VERSION")),
        name: &meta.title,
        active_profile_index: 0,
        shared: Shared { frames },
        profiles: [Sampled {
            r#type: "sampled",
            name: &meta.title,
            unit: "nanoseconds",
            start_value: 0,
            end_value: total,
            samples,
            weights,
        }],
    };
    serde_json::to_writer(out, &file).map_err(|e| Error::Io(std::io::Error::other(e)))
}

/// Writes an interactive SVG flame graph rendered by inferno, at full resolution.
pub fn write_svg(stacks: StacksRef<'_>, meta: &ExportMeta, out: &mut dyn Write) -> Result<()> {
    if stacks.is_empty() {
        return Err(Error::Corrupt("no stacks to draw".into()));
    }
    let text = folded(stacks);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = meta.title.clone();
    opts.count_name = "samples".to_owned();
    opts.hash = true;
    inferno::flamegraph::from_lines(&mut opts, text.lines(), out)
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn stacks() -> Vec<(Vec<Arc<str>>, u64)> {
        vec![
            (vec![Arc::from("main"), Arc::from("work"), Arc::from("hot")], 7),
            (vec![Arc::from("main"), Arc::from("idle")], 3),
        ]
    }

    fn meta() -> ExportMeta {
        ExportMeta { title: "t".into(), period_ns: 10_000_000, time_ms: 1, duration_ms: 2, labels: Vec::new() }
    }

    #[test]
    fn folded_lines() {
        assert_eq!(folded(&stacks()), "main;idle 3\nmain;work;hot 7\n");
    }

    #[test]
    fn pprof_round_trips_through_ingest() {
        let mut gz = Vec::new();
        write_pprof(&stacks(), &meta(), &mut gz).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut raw).unwrap();
        let p = Profile::decode(raw.as_slice()).unwrap();
        let split = crate::ingest::pprof::split(&p, None).unwrap();
        assert_eq!(split.process.total(), 10);
        assert_eq!(split.period_ns, 10_000_000);
    }

    #[test]
    fn speedscope_weights_are_nanoseconds() {
        let mut out = Vec::new();
        write_speedscope(&stacks(), &meta(), &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["profiles"][0]["endValue"], 100_000_000);
        assert_eq!(v["shared"]["frames"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn svg_has_frames() {
        let mut out = Vec::new();
        write_svg(&stacks(), &meta(), &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("<?xml") && s.contains("hot"), "{}", &s[..200]);
    }
}
