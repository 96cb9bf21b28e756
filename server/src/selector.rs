//! Label selectors in Pyroscope's (and Prometheus's) form — `{service_name="ride",
//! span_name=~"Order.*"}` — parsed once and matched against series labels, and the profile
//! types a series is queried as (`__profile_type__`).
//!
//! As in Prometheus, a label a series lacks matches as the empty string, and regular expressions
//! are anchored at both ends. Span samples are kept per series with their span's name as the
//! `span_name` label, so `span_name!=""` selects the CPU inside spans and `span_name=""` the CPU
//! outside them.

use spanprof_proto::labels as wire;
use std::fmt;

use regex::Regex;

use crate::error::{Error, Reject, Result};
use crate::model::Labels;

/// The label that names the span a series' samples ran in (absent: outside any span).
pub const SPAN_NAME_LABEL: &str = wire::SPAN_NAME;
/// The label a selector names a profile type with (Pyroscope's).
pub const PROFILE_TYPE_LABEL: &str = "__profile_type__";
/// The series label that names the profile type's short name (`process_cpu`, `wall`, …).
pub const NAME_LABEL: &str = wire::NAME;

/// Longest selector accepted, in bytes.
const MAX_SELECTOR_BYTES: usize = 16 << 10;
/// Most bytes a compiled regular expression may take (a hostile pattern fails to compile
/// instead of taking the server's memory).
const MAX_REGEX_BYTES: usize = 1 << 20;

/// How a matcher compares a label's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Equal,
    NotEqual,
    Matches,
    NotMatches,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Equal => "=",
            Op::NotEqual => "!=",
            Op::Matches => "=~",
            Op::NotMatches => "!~",
        }
    }
}

/// One `name op "value"` of a selector.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: Op,
    pub value: String,
    /// The anchored expression of `=~` and `!~`.
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.op == o.op && self.value == o.value
    }
}

impl Matcher {
    pub fn new(name: &str, op: Op, value: &str) -> Result<Self> {
        let regex = match op {
            Op::Matches | Op::NotMatches => Some(
                regex::RegexBuilder::new(&format!("^(?s:{value})$"))
                    .size_limit(MAX_REGEX_BYTES)
                    .build()
                    .map_err(|e| bad(format!("{name}{}{value:?}: not a regular expression: {e}", op.as_str())))?,
            ),
            _ => None,
        };
        Ok(Matcher { name: name.to_owned(), op, value: value.to_owned(), regex })
    }

    /// Whether `value` (the empty string for a label the series lacks) passes.
    pub fn matches(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (Op::Equal, _) => value == self.value,
            (Op::NotEqual, _) => value != self.value,
            (Op::Matches, Some(r)) => r.is_match(value),
            (Op::NotMatches, Some(r)) => !r.is_match(value),
            // `new` compiles the expression of every regex matcher.
            (Op::Matches | Op::NotMatches, None) => false,
        }
    }
}

/// A parsed selector: every matcher must pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    pub matchers: Vec<Matcher>,
}

fn bad(msg: String) -> Error {
    Error::rejected(Reject::BadQuery, format!("invalid label selector: {msg}"))
}

impl Selector {
    /// Selects every series.
    pub fn all() -> Self {
        Selector::default()
    }

    /// Parses `{name op "value", …}`; an empty or blank text selects everything. Values are
    /// quoted with `"` or `'` (Go escapes) or with backticks (raw).
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(bad(format!("{} bytes; at most {MAX_SELECTOR_BYTES}", text.len())));
        }
        let mut p = Parser { s: text.trim().as_bytes(), at: 0, text: text.trim() };
        if p.s.is_empty() {
            return Ok(Selector::all());
        }
        let mut matchers = Vec::new();
        // A leading metric name selects `__name__`, as in PromQL: `process_cpu{…}`.
        if p.s.first().is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_' || *c == b':') {
            let start = p.at;
            while p.s.get(p.at).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b':') {
                p.at += 1;
            }
            matchers.push(Matcher::new(NAME_LABEL, Op::Equal, &p.text[start..p.at])?);
            p.skip_space();
            if p.at == p.s.len() {
                return Ok(Selector { matchers });
            }
        }
        p.expect(b'{')?;
        loop {
            p.skip_space();
            if p.eat(b'}') {
                break;
            }
            // A label name as it is, or quoted (Prometheus 3's UTF-8 names: `"k8s.namespace"`).
            let name = if matches!(p.s.get(p.at), Some(b'"' | b'\'' | b'`')) { p.string()? } else { p.name()? };
            if name.is_empty() {
                return Err(bad(format!("an empty label name in {:?}", p.text)));
            }
            p.skip_space();
            let op = p.op()?;
            p.skip_space();
            let value = p.string()?;
            matchers.push(Matcher::new(&name, op, &value)?);
            p.skip_space();
            if p.eat(b',') {
                continue;
            }
            p.expect(b'}')?;
            break;
        }
        p.skip_space();
        if p.at != p.s.len() {
            return Err(bad(format!("unexpected {:?} after the closing brace", &p.text[p.at..])));
        }
        Ok(Selector { matchers })
    }

    /// Adds a matcher (e.g. a service the request names besides the selector).
    pub fn and(mut self, matcher: Matcher) -> Self {
        self.matchers.push(matcher);
        self
    }

    /// Whether a series with these labels is selected. `__profile_type__` compares with the
    /// series' profile type ID ([`ProfileType::of_series`]).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|m| {
            let value = if m.name == PROFILE_TYPE_LABEL {
                ProfileType::of_series(labels).id
            } else {
                labels.get(&m.name).cloned().unwrap_or_default()
            };
            m.matches(&value)
        })
    }

    /// [`Selector::matches`] for a profile chosen by its ID: matchers on labels the profile
    /// does not carry at all are left out. An ID names one profile; a selector sent with it by a
    /// link (Tempo adds `service_namespace` from a span's resource, say) only narrows by what
    /// the profile records, and a label the sampler never saw must not hide the profile.
    pub fn matches_recorded(&self, labels: &Labels) -> bool {
        self.matchers.iter().all(|m| {
            if m.name == PROFILE_TYPE_LABEL {
                return m.matches(&ProfileType::of_series(labels).id);
            }
            match labels.get(&m.name) {
                Some(v) => m.matches(v),
                None => true,
            }
        })
    }

    /// The value an `=` matcher requires of `name`, if there is one (index lookups).
    pub fn required(&self, name: &str) -> Option<&str> {
        self.matchers.iter().find(|m| m.name == name && m.op == Op::Equal).map(|m| m.value.as_str())
    }

    /// The selector without its matchers on `name`.
    pub fn without(&self, name: &str) -> Self {
        Selector { matchers: self.matchers.iter().filter(|m| m.name != name).cloned().collect() }
    }
}

/// The text form, which [`Selector::parse`] reads back.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if crate::ingest::legacy::valid_label_name(&m.name) {
                f.write_str(&m.name)?;
            } else {
                write!(f, "{}", serde_json::Value::String(m.name.clone()))?;
            }
            write!(f, "{}{}", m.op.as_str(), serde_json::Value::String(m.value.clone()))?;
        }
        f.write_str("}")
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Selector::parse(&text).map_err(serde::de::Error::custom)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.at) == Some(&b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Result<()> {
        if self.eat(b) {
            return Ok(());
        }
        let found = self.text.get(self.at..).and_then(|r| r.chars().next());
        Err(bad(match found {
            Some(c) => format!("expected '{}' at byte {}, found {c:?} in {:?}", b as char, self.at, self.text),
            None => format!("expected '{}' at the end of {:?}", b as char, self.text),
        }))
    }

    fn name(&mut self) -> Result<String> {
        let start = self.at;
        while self.s.get(self.at).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.') {
            self.at += 1;
        }
        let name = &self.text[start..self.at];
        if !crate::ingest::legacy::valid_label_name(name) {
            return Err(bad(format!("expected a label name at byte {start} of {:?}", self.text)));
        }
        Ok(name.to_owned())
    }

    fn op(&mut self) -> Result<Op> {
        let op = match (self.s.get(self.at), self.s.get(self.at + 1)) {
            (Some(b'='), Some(b'~')) => Op::Matches,
            (Some(b'!'), Some(b'~')) => Op::NotMatches,
            (Some(b'!'), Some(b'=')) => Op::NotEqual,
            (Some(b'='), _) => Op::Equal,
            _ => return Err(bad(format!("expected =, !=, =~ or !~ at byte {} of {:?}", self.at, self.text))),
        };
        self.at += if op == Op::Equal { 1 } else { 2 };
        Ok(op)
    }

    /// A quoted value: `"…"` or `'…'` with Go's escapes, or a raw `` `…` ``.
    fn string(&mut self) -> Result<String> {
        let start = self.at;
        let quote = match self.s.get(self.at) {
            Some(&q @ (b'"' | b'\'' | b'`')) => q,
            _ => return Err(bad(format!("expected a quoted value at byte {start} of {:?}", self.text))),
        };
        self.at += 1;
        let rest = &self.text[self.at..];
        let mut out = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c as u32 == u32::from(quote) {
                self.at += i + 1;
                return Ok(out);
            }
            if c != '\\' || quote == b'`' {
                out.push(c);
                continue;
            }
            let unterminated = || bad(format!("unterminated escape in {:?}", self.text));
            let (_, e) = chars.next().ok_or_else(unterminated)?;
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'a' => out.push('\u{7}'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'v' => out.push('\u{b}'),
                '\\' | '"' | '\'' => out.push(e),
                'x' | 'u' | 'U' => {
                    let digits = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = (0..digits).filter_map(|_| chars.next().map(|(_, h)| h)).collect();
                    let c = u32::from_str_radix(&hex, 16)
                        .ok()
                        .filter(|_| hex.len() == digits)
                        .and_then(char::from_u32)
                        .ok_or_else(|| bad(format!("invalid escape \\{e}{hex} in {:?}", self.text)))?;
                    out.push(c);
                }
                other => return Err(bad(format!("unknown escape \\{other} in {:?}", self.text))),
            }
        }
        Err(bad(format!("unterminated quoted value at byte {start} of {:?}", self.text)))
    }
}

/// A profile type as Pyroscope names it: `name:sample_type:sample_unit:period_type:period_unit`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProfileType {
    /// The whole ID, e.g. `process_cpu:cpu:nanoseconds:cpu:nanoseconds`.
    pub id: String,
    /// The series' `__name__`.
    pub name: String,
    pub sample_type: String,
    pub sample_unit: String,
    pub period_type: String,
    pub period_unit: String,
}

/// The CPU profile type: what span profiles hold.
pub const CPU_PROFILE_TYPE: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";

impl ProfileType {
    /// Splits an ID; `Err` when it does not have five parts (a sixth, Pyroscope's `:delta`
    /// marker, is dropped).
    pub fn parse(id: &str) -> Result<Self> {
        let parts: Vec<&str> = id.split(':').collect();
        let id = if parts.len() == 6 { id.rsplit_once(':').map_or(id, |(five, _)| five) } else { id };
        let [name, sample_type, sample_unit, period_type, period_unit, ..] = parts[..] else {
            return Err(Error::rejected(
                Reject::BadQuery,
                format!(
                    "profile type {id:?} is not name:sample_type:sample_unit:period_type:period_unit, e.g. {CPU_PROFILE_TYPE}"
                ),
            ));
        };
        if parts.len() > 6 {
            return Err(Error::rejected(
                Reject::BadQuery,
                format!(
                    "profile type {id:?} is not name:sample_type:sample_unit:period_type:period_unit, e.g. {CPU_PROFILE_TYPE}"
                ),
            ));
        }
        Ok(ProfileType {
            id: id.to_owned(),
            name: name.to_owned(),
            sample_type: sample_type.to_owned(),
            sample_unit: sample_unit.to_owned(),
            period_type: period_type.to_owned(),
            period_unit: period_unit.to_owned(),
        })
    }

    /// The type a series is queried as: its `__profile_type__` label when ingest recorded one,
    /// else Pyroscope's ID for its `__name__` (a stored count of a time-based type is a number
    /// of samples, shown as nanoseconds: samples × period).
    pub fn of_series(labels: &Labels) -> Self {
        if let Some(t) = labels.get(PROFILE_TYPE_LABEL).and_then(|id| ProfileType::parse(id).ok()) {
            return t;
        }
        let name = labels.get(NAME_LABEL).map_or(wire::PROCESS_CPU, String::as_str);
        let id = match name {
            wire::PROCESS_CPU => CPU_PROFILE_TYPE.to_owned(),
            "wall" => "wall:wall:nanoseconds:wall:nanoseconds".to_owned(),
            "memory" => "memory:alloc_space:bytes:space:bytes".to_owned(),
            "goroutine" | "goroutines" => format!("{name}:goroutine:count:goroutine:count"),
            "mutex" | "block" => format!("{name}:contentions:count:{name}:count"),
            other => format!("{other}:samples:count:{other}:count"),
        };
        // Every arm above has five parts (a `__name__` holds no `:`: ingest checks label names,
        // and a value with `:` only makes the last parts longer).
        ProfileType::parse(&id).unwrap_or(ProfileType {
            id,
            name: name.to_owned(),
            sample_type: "samples".into(),
            sample_unit: "count".into(),
            period_type: name.to_owned(),
            period_unit: "count".into(),
        })
    }

    /// Whether stored counts are samples of a clock (shown as samples × period nanoseconds).
    pub fn counts_samples(&self) -> bool {
        self.sample_unit == "nanoseconds"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_every_operator_and_quote() {
        let s = Selector::parse(r#"{service_name="ride", span_name=~"Order.*" , pod!='p\'1', x!~`a\d+`,}"#).unwrap();
        let got: Vec<(&str, Op, &str)> = s.matchers.iter().map(|m| (m.name.as_str(), m.op, m.value.as_str())).collect();
        assert_eq!(
            got,
            [
                ("service_name", Op::Equal, "ride"),
                ("span_name", Op::Matches, "Order.*"),
                ("pod", Op::NotEqual, "p'1"),
                ("x", Op::NotMatches, r"a\d+")
            ]
        );
        assert_eq!(Selector::parse("{}").unwrap(), Selector::all());
        assert_eq!(Selector::parse("  ").unwrap(), Selector::all());
        assert_eq!(Selector::parse(r#"{a="\u00e9\x41\n"}"#).unwrap().matchers[0].value, "éA\n");
        // A metric name is a `__name__` matcher; quoted label names may hold any character.
        let named = Selector::parse(r#"process_cpu{"k8s.namespace"="shop"}"#).unwrap();
        let got: Vec<(&str, &str)> = named.matchers.iter().map(|m| (m.name.as_str(), m.value.as_str())).collect();
        assert_eq!(got, [("__name__", "process_cpu"), ("k8s.namespace", "shop")]);
        assert_eq!(Selector::parse("process_cpu").unwrap().matchers.len(), 1);
        assert_eq!(Selector::parse(&named.to_string()).unwrap(), named, "quoted names read back");
        // The text form reads back.
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        for (text, says) in [
            ("service_name=\"a\"", "expected '{'"),
            ("{service_name}", "expected =, !="),
            ("{service_name=ride}", "quoted value"),
            ("{a=\"b\"", "expected '}'"),
            ("{a=\"b}", "unterminated"),
            ("{a=~\"(\"}", "not a regular expression"),
            ("{1a=\"b\"}", "label name"),
            ("{a=\"b\"} x", "after the closing brace"),
            ("{a=\"\\q\"}", "unknown escape"),
        ] {
            let e = Selector::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(Selector::parse(&format!("{{a=\"{}\"}}", "x".repeat(MAX_SELECTOR_BYTES))).is_err());
    }

    #[test]
    fn matching_follows_prometheus() {
        let series = labels(&[("service_name", "ride"), ("__name__", "process_cpu"), ("span_name", "OrderVehicle")]);
        let outside = labels(&[("service_name", "ride"), ("__name__", "process_cpu")]);
        let m = |s: &str, l: &Labels| Selector::parse(s).unwrap().matches(l);
        assert!(m(r#"{span_name=~"Order.*"}"#, &series));
        assert!(
            m("{span_name=~\"Order.*\"}", &labels(&[("span_name", "Order\nVehicle")])),
            "`.` matches a newline too"
        );
        assert!(!m(r#"{span_name=~"Order"}"#, &series), "anchored");
        assert!(m(r#"{span_name!=""}"#, &series) && !m(r#"{span_name!=""}"#, &outside));
        assert!(m(r#"{span_name=""}"#, &outside), "a missing label is the empty string");
        assert!(m(r#"{span_name!~"Order.*"}"#, &outside));
        assert!(m(&format!("{{__profile_type__=\"{CPU_PROFILE_TYPE}\"}}"), &series));
        assert!(!m(r#"{__profile_type__="memory:alloc_space:bytes:space:bytes"}"#, &series));
        assert!(m("{}", &series));
    }

    #[test]
    fn a_profile_by_id_is_narrowed_only_by_the_labels_it_records() {
        let span = labels(&[("service_name", "ride"), ("__name__", "process_cpu"), ("span_name", "Order")]);
        let tempo = Selector::parse(r#"{service_name="ride", service_namespace="shop"}"#).unwrap();
        assert!(!tempo.matches(&span), "as a series selector, the missing label is \"\"");
        assert!(tempo.matches_recorded(&span));
        assert!(!Selector::parse(r#"{service_name="other"}"#).unwrap().matches_recorded(&span));
        let memory = Selector::parse(r#"{__profile_type__="memory:alloc_space:bytes:space:bytes"}"#).unwrap();
        assert!(!memory.matches_recorded(&span), "span profiles are CPU");
    }

    #[test]
    fn profile_types_of_series() {
        assert_eq!(ProfileType::of_series(&labels(&[("__name__", "process_cpu")])).id, CPU_PROFILE_TYPE);
        let wall = ProfileType::of_series(&labels(&[("__name__", "wall")]));
        assert_eq!((wall.name.as_str(), wall.sample_unit.as_str()), ("wall", "nanoseconds"));
        assert!(wall.counts_samples());
        let recorded =
            labels(&[("__name__", "memory"), (PROFILE_TYPE_LABEL, "memory:inuse_objects:count:space:bytes")]);
        assert_eq!(ProfileType::of_series(&recorded).sample_type, "inuse_objects");
        assert!(ProfileType::parse("cpu").is_err());
        assert!(ProfileType::parse("a:b:c:d:e:f:g").is_err());
        assert_eq!(ProfileType::parse(&format!("{CPU_PROFILE_TYPE}:delta")).unwrap().id, CPU_PROFILE_TYPE);
    }
}
