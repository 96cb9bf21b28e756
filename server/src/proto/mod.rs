//! Wire formats spanprof speaks, from the shared `spanprof-proto` crate.

pub use spanprof_proto::{pprof, push, querier};
