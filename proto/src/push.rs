//! Pyroscope's `push.v1.PusherService/Push` request, in protobuf and in its canonical JSON form.

use serde::Deserialize;

/// `push.v1.PushRequest`: the series pushed in one upload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<RawProfileSeries>,
}

/// One series: its labels and the raw pprof profiles collected for it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawProfileSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<RawSample>,
}

/// `types.v1.LabelPair`.
#[derive(Clone, PartialEq, Eq, prost::Message, serde::Serialize, Deserialize)]
#[serde(default)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// One raw profile: a (possibly gzipped) pprof and the upload's ID (not a span ID).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawSample {
    #[prost(bytes = "vec", tag = "1")]
    pub raw_profile: Vec<u8>,
    #[prost(string, tag = "2")]
    pub id: String,
}

/// The protobuf-JSON form of [`PushRequest`] (Connect's `application/json`): field names in
/// lowerCamelCase, `bytes` as base64.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PushRequestJson {
    pub series: Vec<RawProfileSeriesJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawProfileSeriesJson {
    pub labels: Vec<LabelPairJson>,
    pub samples: Vec<RawSampleJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LabelPairJson {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawSampleJson {
    #[serde(alias = "raw_profile")]
    #[serde(rename = "rawProfile")]
    pub raw_profile: String,
    #[serde(alias = "id")]
    #[serde(rename = "ID")]
    pub id: String,
}
