//! Wire formats shared by the server and the sidecar: pprof's `profile.proto`, Pyroscope's
//! push API and the query API Grafana's Pyroscope data source calls.
//!
//! The messages are written by hand with `prost` derives from the public field numbers of
//! `perftools.profiles.Profile` and `push.v1.PushRequest`, so no `protoc` is needed to build.
#![forbid(unsafe_code)]

/// Span and trace IDs: one parse and one format (they live with the channel that carries them).
pub use spanprof_channel::ids;
pub mod json;
pub mod labels;
pub mod pprof;
pub mod push;
pub mod querier;
