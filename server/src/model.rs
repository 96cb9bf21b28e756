//! The server's vocabulary: profile and trace IDs, stacks with counts, and what one ingest adds.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The default sampling period: 100 Hz.
pub const DEFAULT_PERIOD_NS: u64 = 10_000_000;

/// A span profile's ID: the local root span's 64-bit span ID, shown as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileId(pub u64);

impl ProfileId {
    /// Parses exactly 16 hex digits (either case); the all-zero ID is invalid, as in OpenTelemetry.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 16 {
            return None;
        }
        let v = u64::from_str_radix(s, 16).ok()?;
        (v != 0 && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(ProfileId(v))
    }
}

impl fmt::Display for ProfileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A 128-bit trace ID, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub u128);

impl TraceId {
    /// Parses exactly 32 hex digits; the all-zero ID is invalid.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = u128::from_str_radix(s, 16).ok()?;
        (v != 0).then_some(TraceId(v))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Stacks (root first) with sample counts; identical stacks add up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackCounts {
    counts: HashMap<Vec<String>, u64>,
}

impl StackCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `count` samples of `stack` (root first). Zero counts and empty stacks are ignored.
    pub fn add(&mut self, stack: Vec<String>, count: u64) {
        if count == 0 || stack.is_empty() {
            return;
        }
        *self.counts.entry(stack).or_insert(0) += count;
    }

    /// Adds every stack of `other`.
    pub fn merge(&mut self, other: StackCounts) {
        for (stack, count) in other.counts {
            self.add(stack, count);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Number of distinct stacks.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Total samples over all stacks.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[String], u64)> {
        self.counts.iter().map(|(s, c)| (s.as_slice(), *c))
    }

    /// Scales every count by `num / den` (used to bring samples taken at another period onto
    /// a stored profile's period); a non-zero count never rounds down to zero.
    pub fn rescale(&mut self, num: u64, den: u64) {
        if num == den || den == 0 {
            return;
        }
        for c in self.counts.values_mut() {
            let scaled = (u128::from(*c) * u128::from(num) + u128::from(den / 2)) / u128::from(den);
            *c = u64::try_from(scaled).unwrap_or(u64::MAX).max(1);
        }
    }
}

impl FromIterator<(Vec<String>, u64)> for StackCounts {
    fn from_iter<I: IntoIterator<Item = (Vec<String>, u64)>>(iter: I) -> Self {
        let mut s = StackCounts::new();
        for (stack, count) in iter {
            s.add(stack, count);
        }
        s
    }
}

/// Series labels (`service_name`, `namespace`, `pod`, …), sorted by name.
pub type Labels = BTreeMap<String, String>;

/// The samples one ingest request adds to one span profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContribution {
    pub profile_id: ProfileId,
    pub trace_id: Option<TraceId>,
    pub span_name: Option<String>,
    pub stacks: StackCounts,
}

/// Everything one series of one ingest request adds: span profiles and the whole-process rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesBatch {
    /// Series labels; always holds `service_name`.
    pub labels: Labels,
    /// Sampling period of the counts, in nanoseconds.
    pub period_ns: u64,
    /// Start and end of the profiled interval, Unix milliseconds.
    pub from_ms: u64,
    pub until_ms: u64,
    pub spans: Vec<SpanContribution>,
    /// Samples outside any span: the series' whole-process profile.
    pub process: StackCounts,
}

impl SeriesBatch {
    pub fn service_name(&self) -> &str {
        self.labels.get("service_name").map(String::as_str).unwrap_or("unknown")
    }

    /// Samples in spans plus samples outside them.
    pub fn total_samples(&self) -> u64 {
        self.process.total() + self.spans.iter().map(|s| s.stacks.total()).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print_as_lowercase_hex() {
        let id = ProfileId::parse("00F067AA0BA902B7").unwrap();
        assert_eq!(id.to_string(), "00f067aa0ba902b7");
        assert!(ProfileId::parse("0000000000000000").is_none());
        assert!(ProfileId::parse("00f067aa0ba902b").is_none());
        assert!(ProfileId::parse("+0f067aa0ba902b7").is_none());
        let t = TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceId::parse("4bf92f3577b34da6a3ce929d0e0e473").is_none());
    }

    #[test]
    fn identical_stacks_add_up_and_rescale_keeps_nonzero() {
        let mut s = StackCounts::new();
        s.add(vec!["a".into(), "b".into()], 2);
        s.add(vec!["a".into(), "b".into()], 3);
        s.add(vec!["a".into()], 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.total(), 5);
        s.rescale(1, 10);
        assert_eq!(s.total(), 1);
    }
}
