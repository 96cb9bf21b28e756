//! The pprof and Pyroscope push messages the sidecar builds, from the shared `spanprof-proto` crate.

pub use spanprof_proto::pprof::{Function, Label, Line, Location, Profile, ProfileBuilder, Sample, ValueType};
pub use spanprof_proto::push::{LabelPair, PushRequest, RawProfileSeries, RawSample};
