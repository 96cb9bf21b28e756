//! The names spanprof's profiles carry: sample labels that tie a sample to its span, and the
//! series labels and profile type name every pusher sets. Pyroscope's SDKs and its span
//! profiling integrations use the same names.

/// The local root span's ID (16 hex digits): the span profile a sample belongs to.
pub const SPAN_ID: &str = "span_id";
/// Any other profile ID a profiler sets (Pyroscope lets users pick strings); same role as
/// [`SPAN_ID`].
pub const PROFILE_ID: &str = "profile_id";
/// The trace the span belongs to (32 hex digits).
pub const TRACE_ID: &str = "trace_id";
/// The local root span's name.
pub const SPAN_NAME: &str = "span_name";
/// The series label naming the profiled service.
pub const SERVICE_NAME: &str = "service_name";
/// The series label naming the profile type.
pub const NAME: &str = "__name__";
/// The profile type of CPU profiles.
pub const PROCESS_CPU: &str = "process_cpu";
