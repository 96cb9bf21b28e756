//! Pyroscope's query API (`querier.v1.QuerierService`, with the `types.v1` messages it uses), as
//! Grafana's Pyroscope data source calls it: each message in protobuf (field numbers from
//! Pyroscope's `api/querier/v1/querier.proto` and `api/types/v1/types.proto`) and in protobuf's
//! canonical JSON (lowerCamelCase names, 64-bit integers as strings; the proto names are read
//! too).

use serde::{Deserialize, Serialize};

use crate::json;
pub use crate::push::LabelPair;

/// `types.v1.ProfileType`.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileType {
    #[prost(string, tag = "1")]
    #[serde(rename = "ID")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "4")]
    #[serde(rename = "sampleType", alias = "sample_type")]
    pub sample_type: String,
    #[prost(string, tag = "5")]
    #[serde(rename = "sampleUnit", alias = "sample_unit")]
    pub sample_unit: String,
    #[prost(string, tag = "6")]
    #[serde(rename = "periodType", alias = "period_type")]
    pub period_type: String,
    #[prost(string, tag = "7")]
    #[serde(rename = "periodUnit", alias = "period_unit")]
    pub period_unit: String,
}

/// `types.v1.Labels`.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Labels {
    #[prost(message, repeated, tag = "1")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub labels: Vec<LabelPair>,
}

/// `types.v1.Series`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Series {
    #[prost(message, repeated, tag = "1")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub points: Vec<Point>,
}

/// `types.v1.Point`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Point {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Unix milliseconds.
    #[prost(int64, tag = "2")]
    #[serde(with = "json::int64")]
    pub timestamp: i64,
    #[prost(message, repeated, tag = "4")]
    #[serde(deserialize_with = "json::nullable::deserialize", skip_serializing_if = "Vec::is_empty")]
    pub exemplars: Vec<Exemplar>,
}

/// `types.v1.Exemplar`: one profile behind a point.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Exemplar {
    /// Unix milliseconds.
    #[prost(int64, tag = "1")]
    #[serde(with = "json::int64")]
    pub timestamp: i64,
    #[prost(string, tag = "2")]
    #[serde(rename = "profileId", alias = "profile_id")]
    pub profile_id: String,
    #[prost(string, tag = "3")]
    #[serde(rename = "spanId", alias = "span_id")]
    pub span_id: String,
    #[prost(int64, tag = "4")]
    #[serde(with = "json::int64")]
    pub value: i64,
    /// Labels of the profile that are not on the series.
    #[prost(message, repeated, tag = "5")]
    #[serde(deserialize_with = "json::nullable::deserialize", skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<LabelPair>,
    #[prost(string, tag = "6")]
    #[serde(rename = "traceId", alias = "trace_id", skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
}

/// `types.v1.LabelValuesRequest`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct LabelValuesRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub matchers: Vec<String>,
    #[prost(int64, tag = "3")]
    #[serde(with = "json::int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "json::int64")]
    pub end: i64,
}

/// `types.v1.LabelNamesRequest`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct LabelNamesRequest {
    #[prost(string, repeated, tag = "1")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub matchers: Vec<String>,
    #[prost(int64, tag = "2")]
    #[serde(with = "json::int64")]
    pub start: i64,
    #[prost(int64, tag = "3")]
    #[serde(with = "json::int64")]
    pub end: i64,
}

/// `types.v1.LabelNamesResponse` and `types.v1.LabelValuesResponse`: the same shape.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct NamesResponse {
    #[prost(string, repeated, tag = "1")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub names: Vec<String>,
}

/// `types.v1.Location`: a frame of a call site.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Location {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `types.v1.StackTraceSelector`: only stacks that start with `call_site` (root first).
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct StackTraceSelector {
    #[prost(message, repeated, tag = "1")]
    #[serde(rename = "callSite", alias = "call_site", deserialize_with = "json::nullable::deserialize")]
    pub call_site: Vec<Location>,
}

/// `types.v1.GetProfileStatsRequest`: no fields.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
pub struct GetProfileStatsRequest {}

/// `types.v1.GetProfileStatsResponse`.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct GetProfileStatsResponse {
    #[prost(bool, tag = "1")]
    #[serde(rename = "dataIngested", alias = "data_ingested")]
    pub data_ingested: bool,
    /// Unix milliseconds.
    #[prost(int64, tag = "2")]
    #[serde(rename = "oldestProfileTime", alias = "oldest_profile_time", with = "json::int64")]
    pub oldest_profile_time: i64,
    #[prost(int64, tag = "3")]
    #[serde(rename = "newestProfileTime", alias = "newest_profile_time", with = "json::int64")]
    pub newest_profile_time: i64,
}

/// `querier.v1.ProfileTypesRequest`.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileTypesRequest {
    #[prost(int64, tag = "1")]
    #[serde(with = "json::int64")]
    pub start: i64,
    #[prost(int64, tag = "2")]
    #[serde(with = "json::int64")]
    pub end: i64,
}

/// `querier.v1.ProfileTypesResponse`.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileTypesResponse {
    #[prost(message, repeated, tag = "1")]
    #[serde(rename = "profileTypes", alias = "profile_types", deserialize_with = "json::nullable::deserialize")]
    pub profile_types: Vec<ProfileType>,
}

/// `querier.v1.SeriesRequest`.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesRequest {
    #[prost(string, repeated, tag = "1")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub matchers: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    #[serde(rename = "labelNames", alias = "label_names", deserialize_with = "json::nullable::deserialize")]
    pub label_names: Vec<String>,
    #[prost(int64, tag = "3")]
    #[serde(with = "json::int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "json::int64")]
    pub end: i64,
}

/// `querier.v1.SeriesResponse`.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesResponse {
    #[prost(message, repeated, tag = "2")]
    #[serde(rename = "labelsSet", alias = "labels_set", deserialize_with = "json::nullable::deserialize")]
    pub labels_set: Vec<Labels>,
}

/// A protobuf enum's JSON form: its value's name or number (`null` = 0); written as the name.
macro_rules! json_enum {
    ($(#[$doc:meta])* $module:ident { $($name:ident = $value:literal => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        pub mod $module {
            $(pub const $name: i32 = $value;)+

            pub fn serialize<S: serde::Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                match *v {
                    $($value => s.serialize_str($text),)+
                    other => s.serialize_i32(other),
                }
            }

            pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                use serde::Deserialize;
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Number(i32),
                    Name(String),
                }
                match Option::<Raw>::deserialize(d)? {
                    None => Ok(0),
                    Some(Raw::Number(n)) => Ok(n),
                    Some(Raw::Name(n)) => match n.as_str() {
                        $($text => Ok($value),)+
                        other => Err(serde::de::Error::custom(format!("unknown enum value {other:?}"))),
                    },
                }
            }
        }
    };
}

json_enum!(
    /// `querier.v1.ProfileFormat`.
    profile_format {
        UNSPECIFIED = 0 => "PROFILE_FORMAT_UNSPECIFIED",
        FLAMEGRAPH = 1 => "PROFILE_FORMAT_FLAMEGRAPH",
        TREE = 2 => "PROFILE_FORMAT_TREE",
        DOT = 3 => "PROFILE_FORMAT_DOT",
        PPROF = 4 => "PROFILE_FORMAT_PPROF",
    }
);

json_enum!(
    /// `types.v1.TimeSeriesAggregationType`.
    aggregation {
        SUM = 0 => "TIME_SERIES_AGGREGATION_TYPE_SUM",
        AVERAGE = 1 => "TIME_SERIES_AGGREGATION_TYPE_AVERAGE",
    }
);

json_enum!(
    /// `types.v1.ExemplarType`.
    exemplar_type {
        UNSPECIFIED = 0 => "EXEMPLAR_TYPE_UNSPECIFIED",
        NONE = 1 => "EXEMPLAR_TYPE_NONE",
        INDIVIDUAL = 2 => "EXEMPLAR_TYPE_INDIVIDUAL",
        SPAN = 3 => "EXEMPLAR_TYPE_SPAN",
    }
);

/// `querier.v1.SelectMergeStacktracesRequest`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectMergeStacktracesRequest {
    #[prost(string, tag = "1")]
    #[serde(rename = "profileTypeID", alias = "profile_typeID", alias = "profileTypeId")]
    pub profile_type_id: String,
    #[prost(string, tag = "2")]
    #[serde(rename = "labelSelector", alias = "label_selector")]
    pub label_selector: String,
    /// Unix milliseconds.
    #[prost(int64, tag = "3")]
    #[serde(with = "json::int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "json::int64")]
    pub end: i64,
    #[prost(int64, optional, tag = "5")]
    #[serde(rename = "maxNodes", alias = "max_nodes", with = "json::opt_int64")]
    pub max_nodes: Option<i64>,
    #[prost(int32, tag = "6")]
    #[serde(with = "profile_format")]
    pub format: i32,
    #[prost(message, optional, tag = "7")]
    #[serde(rename = "stackTraceSelector", alias = "stack_trace_selector")]
    pub stack_trace_selector: Option<StackTraceSelector>,
    #[prost(string, repeated, tag = "8")]
    #[serde(
        rename = "profileIdSelector",
        alias = "profile_id_selector",
        deserialize_with = "json::nullable::deserialize"
    )]
    pub profile_id_selector: Vec<String>,
    #[prost(string, repeated, tag = "10")]
    #[serde(rename = "traceIdSelector", alias = "trace_id_selector", deserialize_with = "json::nullable::deserialize")]
    pub trace_id_selector: Vec<String>,
    #[prost(string, repeated, tag = "11")]
    #[serde(rename = "spanSelector", alias = "span_selector", deserialize_with = "json::nullable::deserialize")]
    pub span_selector: Vec<String>,
}

/// `querier.v1.FlameGraph`: the flamebearer levels (see the server's `flame` module).
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct FlameGraph {
    #[prost(string, repeated, tag = "1")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub names: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub levels: Vec<Level>,
    #[prost(int64, tag = "3")]
    #[serde(with = "json::int64")]
    pub total: i64,
    #[prost(int64, tag = "4")]
    #[serde(rename = "maxSelf", alias = "max_self", with = "json::int64")]
    pub max_self: i64,
}

/// `querier.v1.Level`: `[x offset, total, self, name index]` per bar.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct Level {
    #[prost(int64, repeated, tag = "1")]
    #[serde(with = "json::int64s")]
    pub values: Vec<i64>,
}

/// `querier.v1.SelectMergeStacktracesResponse` (and `SelectMergeSpanProfileResponse`: the same
/// first field).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct FlameGraphResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flamegraph: Option<FlameGraph>,
    /// The merged profile, for `PROFILE_FORMAT_PPROF` (protobuf only: pprof has no JSON form).
    #[prost(message, optional, tag = "5")]
    #[serde(skip)]
    pub pprof: Option<PprofProfile>,
}

/// `querier.v1.PprofProfile`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PprofProfile {
    #[prost(message, optional, tag = "1")]
    pub profile: Option<crate::pprof::Profile>,
}

/// `querier.v1.SelectMergeSpanProfileRequest`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectMergeSpanProfileRequest {
    #[prost(string, tag = "1")]
    #[serde(rename = "profileTypeID", alias = "profile_typeID", alias = "profileTypeId")]
    pub profile_type_id: String,
    #[prost(string, tag = "2")]
    #[serde(rename = "labelSelector", alias = "label_selector")]
    pub label_selector: String,
    #[prost(string, repeated, tag = "3")]
    #[serde(rename = "spanSelector", alias = "span_selector", deserialize_with = "json::nullable::deserialize")]
    pub span_selector: Vec<String>,
    #[prost(int64, tag = "4")]
    #[serde(with = "json::int64")]
    pub start: i64,
    #[prost(int64, tag = "5")]
    #[serde(with = "json::int64")]
    pub end: i64,
    #[prost(int64, optional, tag = "6")]
    #[serde(rename = "maxNodes", alias = "max_nodes", with = "json::opt_int64")]
    pub max_nodes: Option<i64>,
    #[prost(int32, tag = "7")]
    #[serde(with = "profile_format")]
    pub format: i32,
}

/// `querier.v1.SelectMergeProfileRequest`: answered with a `google.v1.Profile` (pprof).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectMergeProfileRequest {
    #[prost(string, tag = "1")]
    #[serde(rename = "profileTypeID", alias = "profile_typeID", alias = "profileTypeId")]
    pub profile_type_id: String,
    #[prost(string, tag = "2")]
    #[serde(rename = "labelSelector", alias = "label_selector")]
    pub label_selector: String,
    #[prost(int64, tag = "3")]
    #[serde(with = "json::int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "json::int64")]
    pub end: i64,
    #[prost(int64, optional, tag = "5")]
    #[serde(rename = "maxNodes", alias = "max_nodes", with = "json::opt_int64")]
    pub max_nodes: Option<i64>,
    #[prost(message, optional, tag = "6")]
    #[serde(rename = "stackTraceSelector", alias = "stack_trace_selector")]
    pub stack_trace_selector: Option<StackTraceSelector>,
    #[prost(string, repeated, tag = "7")]
    #[serde(
        rename = "profileIdSelector",
        alias = "profile_id_selector",
        deserialize_with = "json::nullable::deserialize"
    )]
    pub profile_id_selector: Vec<String>,
    #[prost(string, repeated, tag = "8")]
    #[serde(rename = "traceIdSelector", alias = "trace_id_selector", deserialize_with = "json::nullable::deserialize")]
    pub trace_id_selector: Vec<String>,
}

/// `querier.v1.SelectSeriesRequest`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectSeriesRequest {
    #[prost(string, tag = "1")]
    #[serde(rename = "profileTypeID", alias = "profile_typeID", alias = "profileTypeId")]
    pub profile_type_id: String,
    #[prost(string, tag = "2")]
    #[serde(rename = "labelSelector", alias = "label_selector")]
    pub label_selector: String,
    #[prost(int64, tag = "3")]
    #[serde(with = "json::int64")]
    pub start: i64,
    #[prost(int64, tag = "4")]
    #[serde(with = "json::int64")]
    pub end: i64,
    #[prost(string, repeated, tag = "5")]
    #[serde(rename = "groupBy", alias = "group_by", deserialize_with = "json::nullable::deserialize")]
    pub group_by: Vec<String>,
    /// Seconds.
    #[prost(double, tag = "6")]
    pub step: f64,
    /// Proto3 `optional` on the wire alike; absent is SUM (0).
    #[prost(int32, tag = "7")]
    #[serde(with = "aggregation")]
    pub aggregation: i32,
    #[prost(message, optional, tag = "8")]
    #[serde(rename = "stackTraceSelector", alias = "stack_trace_selector")]
    pub stack_trace_selector: Option<StackTraceSelector>,
    #[prost(int64, optional, tag = "9")]
    #[serde(with = "json::opt_int64")]
    pub limit: Option<i64>,
    #[prost(int32, tag = "10")]
    #[serde(rename = "exemplarType", alias = "exemplar_type", with = "exemplar_type")]
    pub exemplar_type: i32,
}

/// `querier.v1.SelectSeriesResponse`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectSeriesResponse {
    #[prost(message, repeated, tag = "1")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub series: Vec<Series>,
}

/// `querier.v1.DiffRequest`: two selections (their `format` is ignored).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffRequest {
    #[prost(message, optional, tag = "1")]
    pub left: Option<SelectMergeStacktracesRequest>,
    #[prost(message, optional, tag = "2")]
    pub right: Option<SelectMergeStacktracesRequest>,
}

/// `querier.v1.FlameGraphDiff`: per bar `[left x, left total, left self, right x, right total,
/// right self, name index]`, offsets delta-encoded per side.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct FlameGraphDiff {
    #[prost(string, repeated, tag = "1")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub names: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    #[serde(deserialize_with = "json::nullable::deserialize")]
    pub levels: Vec<Level>,
    #[prost(int64, tag = "3")]
    #[serde(with = "json::int64")]
    pub total: i64,
    #[prost(int64, tag = "4")]
    #[serde(rename = "maxSelf", alias = "max_self", with = "json::int64")]
    pub max_self: i64,
    #[prost(int64, tag = "5")]
    #[serde(rename = "leftTicks", with = "json::int64")]
    pub left_ticks: i64,
    #[prost(int64, tag = "6")]
    #[serde(rename = "rightTicks", with = "json::int64")]
    pub right_ticks: i64,
}

/// `querier.v1.DiffResponse`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffResponse {
    #[prost(message, optional, tag = "1")]
    pub flamegraph: Option<FlameGraphDiff>,
}
