//! Reading pprof profiles: picks the CPU sample type, resolves stacks to frame names and splits
//! samples into span profiles (by the `span_id`/`profile_id`, `trace_id`, `span_name` sample labels)
//! and the whole-process rest.

use ahash::AHashMap as HashMap;
use spanprof_proto::labels as wire;

use prost::Message;

use crate::error::{Error, Reject, Result};
use crate::model::{DEFAULT_PERIOD_NS, DroppedLabels, Frames, ProfileId, SpanContribution, StackCounts, TraceId};
use crate::proto::pprof::{Function, Location, Mapping, Profile};

/// The samples of one pprof, split by span.
#[derive(Debug, Default)]
pub struct SplitProfile {
    pub period_ns: u64,
    /// Profile time range from `time_nanos`/`duration_nanos`, Unix ms, when the profile says.
    pub time_range_ms: Option<(u64, u64)>,
    pub frames: Frames,
    pub spans: Vec<SpanContribution>,
    pub process: StackCounts,
    /// Samples whose span or trace label could not be used (kept without it).
    pub dropped: DroppedLabels,
    /// What the values measure: a wall-time profile sent without a profile type is stored as
    /// `wall`, not as CPU.
    pub measure: Measure,
}

/// Decodes a (possibly gzipped) pprof.
pub fn decode(data: &[u8], max_decompressed: usize) -> Result<Profile> {
    let raw = super::decode::maybe_gunzip(data, max_decompressed, "pprof profile")?;
    match Profile::decode(raw.as_slice()) {
        Ok(p) => Ok(p),
        // A string that is not UTF-8 costs that string, not the profile (as in Pyroscope).
        Err(e) if e.to_string().contains("UTF-8") => {
            let repaired = strings_made_utf8(&raw)?;
            tracing::debug!("a pprof string table held invalid UTF-8; replaced it");
            Profile::decode(repaired.as_slice()).map_err(invalid_protobuf)
        }
        Err(e) => Err(invalid_protobuf(e)),
    }
}

/// `raw` with every string-table entry (field 6) made valid UTF-8 (invalid bytes become
/// U+FFFD); all other fields are copied as they are.
fn strings_made_utf8(raw: &[u8]) -> Result<Vec<u8>> {
    use prost::bytes::Buf;
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint, skip_field};
    const STRING_TABLE: u32 = 6;
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut buf = raw;
    while buf.has_remaining() {
        let start = raw.len() - buf.remaining();
        let (tag, wire_type) = decode_key(&mut buf).map_err(invalid_protobuf)?;
        if tag == STRING_TABLE && wire_type == WireType::LengthDelimited {
            let len = usize::try_from(decode_varint(&mut buf).map_err(invalid_protobuf)?).unwrap_or(usize::MAX);
            if len > buf.remaining() {
                return Err(invalid("a string-table entry runs past the end of the profile".into()));
            }
            let text = String::from_utf8_lossy(&buf[..len]);
            encode_key(STRING_TABLE, WireType::LengthDelimited, &mut out);
            encode_varint(text.len() as u64, &mut out);
            out.extend_from_slice(text.as_bytes());
            buf.advance(len);
        } else {
            skip_field(wire_type, tag, &mut buf, DecodeContext::default()).map_err(invalid_protobuf)?;
            out.extend_from_slice(&raw[start..raw.len() - buf.remaining()]);
        }
    }
    Ok(out)
}

fn invalid_protobuf(e: prost::DecodeError) -> Error {
    Error::rejected(Reject::InvalidPprof, format!("invalid pprof protobuf: {e}"))
}

struct Strings<'a>(&'a [String]);

impl<'a> Strings<'a> {
    fn get(&self, i: i64) -> Result<&'a str> {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.0.get(i))
            .map(String::as_str)
            .ok_or_else(|| invalid(format!("string index {i} out of range ({} strings)", self.0.len())))
    }
}

fn invalid(msg: String) -> Error {
    Error::rejected(Reject::InvalidPprof, format!("invalid pprof: {msg}"))
}

/// What the values a profile's samples are taken from measure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Measure {
    /// CPU time, or samples of a CPU-time clock.
    #[default]
    Cpu,
    /// Wall-clock time (idle included), as Node.js's and other wall-time profilers measure.
    Wall,
    /// Allocated or live memory: objects or bytes.
    Memory,
    /// Something else (locks, goroutines, …), taken as it is.
    Other,
}

impl Measure {
    /// The profile type (`__name__`) a series of this measure is stored under when the
    /// request did not say: Pyroscope's names.
    pub fn profile_type(self) -> &'static str {
        match self {
            Measure::Cpu => wire::PROCESS_CPU,
            Measure::Wall => "wall",
            Measure::Memory => "memory",
            Measure::Other => "other",
        }
    }
}

/// How sample values turn into sample counts.
#[derive(Clone, Copy, Debug)]
struct ValuePick {
    index: usize,
    /// Divide values by this to get samples (1 when values already count samples).
    divisor: u64,
    period_ns: u64,
    measure: Measure,
}

fn pick_value(p: &Profile, s: &Strings<'_>) -> Result<ValuePick> {
    if p.sample_type.is_empty() {
        return Err(invalid("no sample_type".into()));
    }
    let period_ns = match p.period_type {
        Some(pt) if s.get(pt.unit)? == "nanoseconds" && p.period > 0 => p.period as u64,
        _ => DEFAULT_PERIOD_NS,
    };
    let mut types = Vec::with_capacity(p.sample_type.len());
    for vt in &p.sample_type {
        types.push((s.get(vt.r#type)?, s.get(vt.unit)?));
    }
    let clock = match p.period_type {
        Some(pt) => s.get(pt.r#type)?,
        None => "",
    };
    // CPU time first: a wall-time profiler that also measures CPU (Node.js's with
    // collectCpuTime: `sample/count`, `wall/nanoseconds`, `cpu/nanoseconds`) is a CPU profile
    // through that value; Go's `samples/count` and `cpu/nanoseconds` agree.
    if let Some(i) = types.iter().position(|&(t, u)| t == "cpu" && u == "nanoseconds") {
        return Ok(ValuePick { index: i, divisor: period_ns, period_ns, measure: Measure::Cpu });
    }
    // Sample counts measure what the sampling clock does.
    let measure = if clock == "wall" { Measure::Wall } else { Measure::Cpu };
    if let Some(i) = types.iter().position(|&(t, u)| (t == "samples" || t == "sample") && u == "count") {
        return Ok(ValuePick { index: i, divisor: 1, period_ns, measure });
    }
    if let Some(i) = types.iter().position(|&(t, u)| t == "wall" && u == "nanoseconds") {
        return Ok(ValuePick { index: i, divisor: period_ns, period_ns, measure: Measure::Wall });
    }
    // Another profile type (e.g. allocations): keep its values as they are.
    let default = s.get(p.default_sample_type).unwrap_or("");
    let index = types.iter().position(|&(t, _)| !default.is_empty() && t == default).unwrap_or(0);
    let (t, u) = types[index];
    // V8's heap profiles say `objects`/`space`, Go's and the Pyroscope clients' `inuse_*`/`alloc_*`.
    let memory =
        u == "bytes" || ["objects", "space"].contains(&t) || t.starts_with("inuse_") || t.starts_with("alloc_");
    Ok(ValuePick { index, divisor: 1, period_ns, measure: if memory { Measure::Memory } else { Measure::Other } })
}

/// Resolves every location to frame indices in `frames`, root-most inlined frame first.
fn location_frames(p: &Profile, s: &Strings<'_>, frames: &mut Frames) -> Result<HashMap<u64, Vec<u32>>> {
    let functions: HashMap<u64, &Function> = p.function.iter().map(|f| (f.id, f)).collect();
    let mappings: HashMap<u64, &Mapping> = p.mapping.iter().map(|m| (m.id, m)).collect();
    let mut out = HashMap::with_capacity(p.location.len());
    for loc in &p.location {
        out.insert(loc.id, frames_of(loc, &functions, &mappings, s, frames)?);
    }
    Ok(out)
}

fn frames_of(
    loc: &Location,
    functions: &HashMap<u64, &Function>,
    mappings: &HashMap<u64, &Mapping>,
    s: &Strings<'_>,
    table: &mut Frames,
) -> Result<Vec<u32>> {
    // Unsymbolized: `module+0xoffset` (or the bare address), never dropped.
    let unsymbolized = |table: &mut Frames| -> Result<u32> {
        let frame = match mappings.get(&loc.mapping_id) {
            Some(m) => {
                let file = s.get(m.filename)?;
                let base = file.rsplit('/').next().unwrap_or(file);
                let offset = loc.address.wrapping_sub(m.memory_start).wrapping_add(m.file_offset);
                if base.is_empty() { format!("0x{:x}", loc.address) } else { format!("{base}+0x{offset:x}") }
            }
            None => format!("0x{:x}", loc.address),
        };
        Ok(table.intern(&frame))
    };
    let mut frames = Vec::with_capacity(loc.line.len().max(1));
    // The last line is the caller the earlier ones were inlined into: root first means reversed.
    for line in loc.line.iter().rev() {
        // A line naming a function the profile does not define (as .NET profilers write) is an
        // unknown frame, as Pyroscope takes it, not a reason to refuse the profile.
        let Some(f) = functions.get(&line.function_id) else {
            frames.push(unsymbolized(table)?);
            continue;
        };
        let mut name = s.get(f.name)?;
        if name.is_empty() {
            name = s.get(f.system_name)?;
        }
        if !name.is_empty() {
            frames.push(table.intern(name));
        }
    }
    if frames.is_empty() {
        frames.push(unsymbolized(table)?);
    }
    Ok(frames)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SpanKey {
    id: ProfileId,
    trace: Option<TraceId>,
    name: i64,
}

/// Splits a pprof into span profiles and the whole-process rest. `forced_span` (the legacy
/// `/ingest` `span_id` label) puts every sample into that span.
pub fn split(p: &Profile, forced_span: Option<&SpanContribution>) -> Result<SplitProfile> {
    let s = Strings(&p.string_table);
    if p.string_table.first().is_some_and(|s| !s.is_empty()) {
        return Err(invalid("string_table[0] must be the empty string".into()));
    }
    let pick = pick_value(p, &s)?;
    let mut table = Frames::default();
    let frames = location_frames(p, &s, &mut table)?;
    let unknown = table.intern("[unknown]");
    let key_of = |name: &str| p.string_table.iter().position(|k| k == name).map(|i| i as i64);
    let (k_span, k_profile, k_trace, k_name) =
        (key_of(wire::SPAN_ID), key_of(wire::PROFILE_ID), key_of(wire::TRACE_ID), key_of(wire::SPAN_NAME));

    let mut spans: HashMap<SpanKey, StackCounts> = HashMap::new();
    let mut process = StackCounts::new();
    let mut stack: Vec<u32> = Vec::with_capacity(64);
    // Many samples share a label value: each distinct string is parsed once (None: unusable).
    let mut span_ids: HashMap<i64, Option<ProfileId>> = HashMap::new();
    let mut trace_ids: HashMap<i64, Option<TraceId>> = HashMap::new();
    let mut dropped = DroppedLabels::default();
    for (n, sample) in p.sample.iter().enumerate() {
        if sample.value.len() != p.sample_type.len() {
            return Err(invalid(format!(
                "sample {n} has {} values for {} sample types",
                sample.value.len(),
                p.sample_type.len()
            )));
        }
        let value = sample.value[pick.index];
        if value <= 0 {
            continue;
        }
        // Round to the nearest sample; a positive value is at least one sample.
        let value = value as u64;
        let count = if pick.divisor > 1 { value.saturating_add(pick.divisor / 2) / pick.divisor } else { value }.max(1);
        stack.clear();
        for loc_id in sample.location_id.iter().rev() {
            let f =
                frames.get(loc_id).ok_or_else(|| invalid(format!("sample {n} refers to unknown location {loc_id}")))?;
            stack.extend_from_slice(f);
        }
        if stack.is_empty() {
            stack.push(unknown);
        }
        crate::model::bound_depth(&mut stack, &mut table);

        let (mut span_id, mut bad_span) = (None, false);
        let (mut trace, mut bad_trace) = (None, false);
        let mut name = 0;
        for l in &sample.label {
            if Some(l.key) == k_span || Some(l.key) == k_profile {
                let id = match span_ids.get(&l.str) {
                    Some(id) => id.clone(),
                    None => {
                        let v = s.get(l.str)?;
                        let id = ProfileId::parse(v)
                            .inspect_err(|why| {
                                tracing::debug!(sample = n, value = ?v, why, "a span_id/profile_id label that is no profile ID: the sample counts as whole-process");
                            })
                            .ok();
                        span_ids.insert(l.str, id.clone());
                        id
                    }
                };
                match id {
                    Some(id) => span_id = Some(id),
                    None => bad_span = true,
                }
            } else if Some(l.key) == k_trace {
                let id = match trace_ids.get(&l.str) {
                    Some(&id) => id,
                    None => {
                        let id = TraceId::parse(s.get(l.str)?);
                        trace_ids.insert(l.str, id);
                        id
                    }
                };
                match id {
                    Some(id) => trace = Some(id),
                    None => bad_trace = true,
                }
            } else if Some(l.key) == k_name {
                s.get(l.str)?;
                name = l.str;
            }
        }
        if bad_span && span_id.is_none() && forced_span.is_none() {
            dropped.span_id += 1;
        }
        if bad_trace && trace.is_none() && span_id.is_some() && forced_span.is_none() {
            dropped.trace_id += 1;
        }
        match (forced_span, span_id) {
            (Some(f), _) => spans
                .entry(SpanKey { id: f.profile_id.clone(), trace: f.trace_id, name: -1 })
                .or_default()
                .add(&stack, count),
            (None, Some(id)) => spans.entry(SpanKey { id, trace, name }).or_default().add(&stack, count),
            (None, None) => process.add(&stack, count),
        }
    }

    let mut merged: HashMap<ProfileId, SpanContribution> = HashMap::new();
    for (key, stacks) in spans {
        let span_name = match (key.name, forced_span) {
            (-1, Some(f)) => f.span_name.clone(),
            (0, _) => None,
            (i, _) => Some(s.get(i)?.to_owned()),
        };
        let entry = merged.entry(key.id.clone()).or_insert_with(|| SpanContribution {
            profile_id: key.id,
            trace_id: None,
            span_name: None,
            stacks: StackCounts::new(),
        });
        entry.trace_id = entry.trace_id.or(key.trace);
        if entry.span_name.is_none() {
            entry.span_name = span_name;
        }
        entry.stacks.merge(stacks);
    }
    let mut spans: Vec<SpanContribution> = merged.into_values().collect();
    spans.sort_by(|a, b| a.profile_id.cmp(&b.profile_id));

    let time_range_ms = (p.time_nanos > 0).then(|| {
        let from = p.time_nanos as u64 / 1_000_000;
        (from, from + (p.duration_nanos.max(0) as u64) / 1_000_000)
    });
    Ok(SplitProfile {
        period_ns: pick.period_ns,
        time_range_ms,
        frames: table,
        spans,
        process,
        dropped,
        measure: pick.measure,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::pprof::{Line, ProfileBuilder, ValueType};

    /// Builds a pprof: `stacks` are (root-first frames, cpu ns, span labels).
    /// Root-first frames, CPU nanoseconds, sample labels.
    pub(crate) type StackSpec<'a> = (&'a [&'a str], i64, &'a [(&'a str, &'a str)]);

    pub(crate) fn build(stacks: &[StackSpec<'_>]) -> Profile {
        let mut b = ProfileBuilder::new(&[("cpu", "nanoseconds")]).period("cpu", "nanoseconds", 10_000_000);
        for (frames, value, labels) in stacks {
            let locations = frames.iter().rev().map(|f| b.name_location(f, 0)).collect();
            let label = labels.iter().map(|(k, v)| b.label(k, v)).collect();
            b.sample(locations, vec![*value], label);
        }
        b.finish()
    }

    #[test]
    fn splits_spans_from_whole_process_samples() {
        let span = "00f067aa0ba902b7";
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let p = build(&[
            (&["main", "work", "hot"], 30_000_000, &[("span_id", span), ("trace_id", trace), ("span_name", "Order")]),
            (&["main", "work", "hot"], 20_000_000, &[("profile_id", span)]),
            (&["main", "idle"], 10_000_000, &[]),
        ]);
        let split = split(&p, None).unwrap();
        assert_eq!(split.period_ns, 10_000_000);
        assert_eq!(split.spans.len(), 1);
        let sc = &split.spans[0];
        assert_eq!(sc.profile_id.to_string(), span);
        assert_eq!(sc.trace_id.unwrap().to_string(), trace);
        assert_eq!(sc.span_name.as_deref(), Some("Order"));
        assert_eq!(sc.stacks.total(), 5);
        assert_eq!(split.process.total(), 1);
        let names: Vec<&str> = split.process.iter().next().unwrap().0.iter().map(|&f| split.frames.name(f)).collect();
        assert_eq!(names, ["main", "idle"]);
    }

    /// Sets the profile's sample types (each sample gets `values`) and period type.
    fn retype(p: &mut Profile, types: &[(&str, &str)], clock: &str, values: &[i64]) {
        let mut idx = |s: &str| match p.string_table.iter().position(|x| x == s) {
            Some(i) => i as i64,
            None => {
                p.string_table.push(s.into());
                p.string_table.len() as i64 - 1
            }
        };
        let sample_type: Vec<ValueType> =
            types.iter().map(|&(t, u)| ValueType { r#type: idx(t), unit: idx(u) }).collect();
        let period_type = ValueType { r#type: idx(clock), unit: idx("nanoseconds") };
        p.sample_type = sample_type;
        p.period_type = Some(period_type);
        for sample in &mut p.sample {
            sample.value = values.to_vec();
        }
    }

    #[test]
    fn the_value_and_what_it_measures_follow_the_sample_types() {
        // Sample types, the period's type, each sample's values → samples stored, measure.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a [i64], u64, Measure);
        let cases: &[Case<'_>] = &[
            // Node.js wall profile with CPU time (as @datadog/pprof writes it): the CPU value.
            (
                &[("sample", "count"), ("wall", "nanoseconds"), ("cpu", "nanoseconds")],
                "wall",
                &[1, 10_000_000, 30_000_000],
                3,
                Measure::Cpu,
            ),
            // Its Pyroscope client's renaming, the same.
            (
                &[("samples", "count"), ("wall", "nanoseconds"), ("cpu", "nanoseconds")],
                "wall",
                &[1, 10_000_000, 30_000_000],
                3,
                Measure::Cpu,
            ),
            // Node.js wall profile without CPU time: wall samples, not CPU.
            (&[("samples", "count"), ("wall", "nanoseconds")], "wall", &[2, 20_000_000], 2, Measure::Wall),
            // Go CPU: samples and CPU time agree.
            (&[("samples", "count"), ("cpu", "nanoseconds")], "cpu", &[4, 40_000_000], 4, Measure::Cpu),
            // V8 heap (objects, space) and Go heap: memory, values as they are.
            (&[("objects", "count"), ("space", "bytes")], "space", &[5, 4096], 5, Measure::Memory),
            (&[("alloc_objects", "count"), ("alloc_space", "bytes")], "space", &[6, 4096], 6, Measure::Memory),
            (&[("contentions", "count"), ("delay", "nanoseconds")], "contentions", &[7, 1], 7, Measure::Other),
        ];
        for &(types, clock, values, samples, measure) in cases {
            let mut p = build(&[(&["a"], 1, &[])]);
            retype(&mut p, types, clock, values);
            let sp = split(&p, None).unwrap();
            assert_eq!((sp.process.total(), sp.measure), (samples, measure), "{types:?}");
        }
    }

    #[test]
    fn rejects_bad_references_and_labels() {
        let mut p = build(&[(&["a"], 10_000_000, &[])]);
        p.sample[0].location_id = vec![99];
        assert!(split(&p, None).unwrap_err().to_string().contains("unknown location 99"));
        // A label value that is no ID costs the label, not the sample or the request; any
        // string within the ID rules is a profile ID of its own.
        let too_long = "x".repeat(129);
        let p = build(&[
            (&["a"], 10_000_000, &[("span_id", "0000000000000000")]),
            (&["a"], 20_000_000, &[("span_id", "00f067aa0ba902b7"), ("trace_id", "not-a-trace")]),
            (&["b"], 30_000_000, &[]),
            (&["c"], 40_000_000, &[("profile_id", "checkout-42")]),
            (&["c"], 50_000_000, &[("span_id", &too_long)]),
            (&["d"], 60_000_000, &[("span_id", "239")]),
            (&["d"], 70_000_000, &[("span_id", "line\nbreak")]),
        ]);
        let sp = split(&p, None).unwrap();
        assert_eq!(sp.process.total(), 1 + 3 + 5 + 7, "the samples with an unusable span_id are whole-process");
        let spans: Vec<(String, u64, Option<TraceId>)> =
            sp.spans.iter().map(|s| (s.profile_id.to_string(), s.stacks.total(), s.trace_id)).collect();
        assert_eq!(
            spans,
            [("00f067aa0ba902b7".into(), 2, None), ("239".into(), 6, None), ("checkout-42".into(), 4, None)]
        );
        assert_eq!(sp.dropped, DroppedLabels { span_id: 3, trace_id: 1 });
        let mut p = build(&[(&["a"], 10_000_000, &[])]);
        p.function[0].name = 1000;
        assert!(split(&p, None).unwrap_err().to_string().contains("out of range"));
        assert!(decode(b"\xff\xff\xff", 1000).is_err());
    }

    #[test]
    fn inlined_frames_and_unsymbolized_addresses() {
        let mut p = build(&[(&["outer"], 10_000_000, &[])]);
        // Inline "inner" into the location of "outer": the last line is the caller.
        let inner = p.string_table.len() as i64;
        p.string_table.push("inner".into());
        p.function.push(Function { id: 50, name: inner, ..Default::default() });
        p.location[0].line.insert(0, Line { function_id: 50, line: 3, column: 0 });
        let file = p.string_table.len() as i64;
        p.string_table.push("/usr/lib/libfoo.so".into());
        p.mapping.push(Mapping {
            id: 7,
            memory_start: 0x1000,
            file_offset: 0x200,
            filename: file,
            ..Default::default()
        });
        p.location.push(Location { id: 60, mapping_id: 7, address: 0x1234, ..Default::default() });
        p.sample[0].location_id.insert(0, 60);
        let split = split(&p, None).unwrap();
        let names: Vec<&str> = split.process.iter().next().unwrap().0.iter().map(|&f| split.frames.name(f)).collect();
        assert_eq!(names, ["outer", "inner", "libfoo.so+0x434"]);
    }

    #[test]
    fn invalid_utf8_in_the_string_table_costs_that_string_not_the_profile() {
        let p = build(&[(&["main", "caf\u{e9}"], 30_000_000, &[]), (&["main"], 10_000_000, &[])]);
        let mut raw = p.encode_to_vec();
        // Turn "café" (UTF-8 c3 a9) into Latin-1 (e9 alone): invalid UTF-8, same length less one.
        let at = raw.windows(5).position(|w| w == "café".as_bytes()).unwrap();
        raw.splice(at + 3..at + 5, [0xe9]);
        raw[at - 1] -= 1; // the string's length prefix
        assert!(Profile::decode(raw.as_slice()).is_err(), "prost alone refuses it");
        let decoded = decode(&raw, 1 << 20).unwrap();
        let split = split(&decoded, None).unwrap();
        assert_eq!(split.process.total(), 4);
        let mut stacks: Vec<Vec<&str>> =
            split.process.iter().map(|(s, _)| s.iter().map(|&f| split.frames.name(f)).collect()).collect();
        stacks.sort();
        assert_eq!(stacks, [vec!["main"], vec!["main", "caf\u{fffd}"]]);
        // Still refused: what is not a protobuf at all.
        assert!(decode(&raw[..raw.len() - 3], 1 << 20).is_err());
    }

    #[test]
    fn a_line_naming_an_undefined_function_is_an_unknown_frame_and_the_samples_stay() {
        // As .NET profilers write: a location whose line names a function the profile lacks.
        let mut p = build(&[(&["main", "work"], 30_000_000, &[]), (&["main"], 10_000_000, &[])]);
        let file = p.string_table.len() as i64;
        p.string_table.push("/app/libcoreclr.so".into());
        p.mapping.push(Mapping { id: 9, memory_start: 0x4000, file_offset: 0, filename: file, ..Default::default() });
        let work = p.sample[0].location_id[0];
        let loc = p.location.iter_mut().find(|l| l.id == work).unwrap();
        loc.mapping_id = 9;
        loc.address = 0x4abc;
        loc.line[0].function_id = 4242;
        let split = split(&p, None).unwrap();
        assert_eq!(split.process.total(), 4, "every sample is kept");
        let mut stacks: Vec<Vec<&str>> =
            split.process.iter().map(|(s, _)| s.iter().map(|&f| split.frames.name(f)).collect()).collect();
        stacks.sort();
        assert_eq!(stacks, [vec!["main"], vec!["main", "libcoreclr.so+0xabc"]]);
    }
}
