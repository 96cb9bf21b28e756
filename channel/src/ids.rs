//! Span and trace IDs as every part of spanprof writes and reads them: 16 and 32 hex digits,
//! shown in lowercase, read in either case; the all-zero ID is invalid (as in OpenTelemetry).
//! Here, with the channel that carries them from the app to the sampler, so the SDK shows them
//! the same way without depending on the wire formats; `spanprof-proto` re-exports this module
//! (with the `serde` feature: an ID is its hex digits in JSON).

use std::fmt;

/// A 64-bit span ID: the ID of a local root span, which is its span profile's ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub u64);

/// A 128-bit trace ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub u128);

/// Exactly `digits` hex digits, not all zero.
fn parse_hex(s: &str, digits: usize) -> Option<u128> {
    if s.len() != digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(s, 16).ok().filter(|&v| v != 0)
}

impl SpanId {
    /// Parses exactly 16 hex digits; the all-zero ID is invalid.
    pub fn parse(s: &str) -> Option<Self> {
        parse_hex(s, 16).map(|v| SpanId(v as u64))
    }
}

impl TraceId {
    /// Parses exactly 32 hex digits; the all-zero ID is invalid.
    pub fn parse(s: &str) -> Option<Self> {
        parse_hex(s, 32).map(TraceId)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// In JSON: the ID's hex digits.
#[cfg(feature = "serde")]
impl serde::Serialize for SpanId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for SpanId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpanId::parse(&s).ok_or_else(|| serde::de::Error::custom("not a span ID (16 hex digits, not all zero)"))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for TraceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TraceId::parse(&s).ok_or_else(|| serde::de::Error::custom("not a trace ID (32 hex digits, not all zero)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_in_either_case_and_show_in_lowercase() {
        let s = SpanId::parse("00F067AA0BA902B7").unwrap();
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        let t = TraceId::parse("4bf92f3577b34da6A3CE929D0E0E4736").unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in
            ["0000000000000000", "00f067aa0ba902b", "00f067aa0ba902b77", "00f067aa0ba902bg", "+0f067aa0ba902b7", ""]
        {
            assert_eq!(SpanId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(TraceId::parse(&"0".repeat(32)), None);
        assert_eq!(TraceId::parse("00f067aa0ba902b7"), None);
    }
}
