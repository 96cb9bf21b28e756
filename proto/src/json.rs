//! Protobuf's canonical JSON for the integer types serde does not map alike: 64-bit integers
//! are written as strings and read from strings or numbers, as protojson does.

use serde::{Deserialize, Deserializer, Serializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum IntText {
    Number(i64),
    Text(String),
}

impl IntText {
    fn value<E: serde::de::Error>(self) -> Result<i64, E> {
        match self {
            IntText::Number(n) => Ok(n),
            IntText::Text(t) => t.trim().parse().map_err(|_| E::custom(format!("{t:?} is not a 64-bit integer"))),
        }
    }
}

/// An `int64` field.
pub mod int64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Option::<IntText>::deserialize(d)?.map_or(Ok(0), IntText::value)
    }
}

/// An `optional int64` field.
pub mod opt_int64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<IntText>::deserialize(d)?.map(IntText::value).transpose()
    }
}

/// A `repeated int64` field.
pub mod int64s {
    use super::*;
    use serde::ser::SerializeSeq;

    pub fn serialize<S: Serializer>(v: &[i64], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for n in v {
            seq.serialize_element(&n.to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
        Option::<Vec<IntText>>::deserialize(d)?.unwrap_or_default().into_iter().map(IntText::value).collect()
    }
}

/// A `repeated` field that may be `null`.
pub mod nullable {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
    }
}
