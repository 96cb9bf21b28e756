//! `perftools.profiles` (pprof's `profile.proto`), the format every profiler in the field exports.

/// A complete pprof profile.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// A sample type and its unit, as indices into the string table.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// One stack (leaf first) with its values and labels.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// A sample label: string or numeric.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// A mapped binary.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// An address, with the (possibly inlined) functions at it, outermost last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// A function and line at a location.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// A function's names and source file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// Builds a pprof profile — the one way spanprof writes pprof (the sidecar's pushes, the
/// server's exports, the tests' and benchmarks' payloads): strings interned once (index 0 is
/// the empty string), a function per name, locations as the caller defines them, IDs from 1.
#[derive(Debug, Default)]
pub struct ProfileBuilder {
    profile: Profile,
    strings: ahash::AHashMap<String, i64>,
    functions: ahash::AHashMap<String, u64>,
    name_locations: ahash::AHashMap<(String, u64), u64>,
}

impl ProfileBuilder {
    /// A profile whose samples carry one value per `(type, unit)`, in that order.
    pub fn new(sample_types: &[(&str, &str)]) -> Self {
        let mut b = ProfileBuilder::default();
        b.profile.string_table.push(String::new());
        b.strings.insert(String::new(), 0);
        b.profile.sample_type = sample_types.iter().map(|(t, u)| b.value_type(t, u)).collect();
        b
    }

    fn value_type(&mut self, r#type: &str, unit: &str) -> ValueType {
        ValueType { r#type: self.string(r#type), unit: self.string(unit) }
    }

    /// The sampling period: one sample every `period` of `(type, unit)` (CPU: nanoseconds).
    pub fn period(mut self, r#type: &str, unit: &str, period: i64) -> Self {
        self.profile.period_type = Some(self.value_type(r#type, unit));
        self.profile.period = period;
        self
    }

    /// When the profile starts (Unix ns) and how long it covers.
    pub fn time(mut self, time_nanos: i64, duration_nanos: i64) -> Self {
        self.profile.time_nanos = time_nanos;
        self.profile.duration_nanos = duration_nanos;
        self
    }

    /// The index of `s` in the string table, adding it when new.
    pub fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    /// A free-text comment on the profile.
    pub fn comment(&mut self, text: &str) {
        let c = self.string(text);
        self.profile.comment.push(c);
    }

    /// Adds a mapping (its `id` is assigned; name its file with [`Self::string`]); returns its ID.
    pub fn mapping(&mut self, mut m: Mapping) -> u64 {
        m.id = self.profile.mapping.len() as u64 + 1;
        let id = m.id;
        self.profile.mapping.push(m);
        id
    }

    /// The function named `name` (name and system name alike), added when new.
    pub fn function(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.functions.get(name) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let n = self.string(name);
        self.profile.function.push(Function { id, name: n, system_name: n, ..Default::default() });
        self.functions.insert(name.to_owned(), id);
        id
    }

    /// Adds a location: `address` in mapping `mapping_id` (0: none) with `lines`, the innermost
    /// (inlined) function first. Returns its ID.
    pub fn location(&mut self, mapping_id: u64, address: u64, lines: Vec<Line>) -> u64 {
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location { id, mapping_id, address, line: lines, is_folded: false });
        id
    }

    /// The location of function `name` alone (symbolized frames without addresses): one per
    /// name and mapping.
    pub fn name_location(&mut self, name: &str, mapping_id: u64) -> u64 {
        if let Some(&id) = self.name_locations.get(&(name.to_owned(), mapping_id)) {
            return id;
        }
        let function_id = self.function(name);
        let id = self.location(mapping_id, 0, vec![Line { function_id, line: 0, column: 0 }]);
        self.name_locations.insert((name.to_owned(), mapping_id), id);
        id
    }

    /// A string label.
    pub fn label(&mut self, key: &str, value: &str) -> Label {
        Label { key: self.string(key), str: self.string(value), ..Default::default() }
    }

    /// Adds a sample: its locations leaf first, one value per sample type, its labels.
    pub fn sample(&mut self, location_id: Vec<u64>, value: Vec<i64>, label: Vec<Label>) {
        self.profile.sample.push(Sample { location_id, value, label });
    }

    /// Room for `n` more samples.
    pub fn reserve_samples(&mut self, n: usize) {
        self.profile.sample.reserve(n);
    }

    pub fn finish(self) -> Profile {
        self.profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_interns_strings_functions_and_name_locations_once() {
        let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")])
            .period("cpu", "nanoseconds", 10_000_000)
            .time(1_000, 2_000);
        let main = b.name_location("main", 0);
        let work = b.name_location("work", 0);
        assert_eq!(b.name_location("main", 0), main);
        let l = b.label("span_id", "00f067aa0ba902b7");
        b.sample(vec![work, main], vec![3, 30_000_000], vec![l]);
        let p = b.finish();
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        assert_eq!(p.string_table.iter().filter(|x| x.as_str() == "nanoseconds").count(), 1);
        assert_eq!((s(p.sample_type[1].r#type), s(p.sample_type[1].unit)), ("cpu", "nanoseconds"));
        assert_eq!((p.period, p.time_nanos, p.duration_nanos), (10_000_000, 1_000, 2_000));
        assert_eq!(p.function.len(), 2);
        assert_eq!(p.location.iter().map(|l| l.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(s(p.function[0].name), "main");
        assert_eq!((s(p.sample[0].label[0].key), s(p.sample[0].label[0].str)), ("span_id", "00f067aa0ba902b7"));
    }
}
