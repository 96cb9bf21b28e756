//! The `spanprof-sidecar` command line: flags (each with its environment variable, as the
//! operator's webhook sets them), logging, and the run. Here rather than in `main.rs` so that
//! end-to-end tests run the very same command in containers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::Config;
use crate::discover::Targets;
use clap::Parser;
use spanprof_channel::pod::env;
use spanprof_cli::{LogArgs, LogTo, parse_positive_duration};

/// spanprof sampler sidecar: samples the app's threads, labels samples with their root span, pushes profiles.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// spanprof-server (or any Pyroscope) base URL to push to.
    #[arg(long, env = env::SERVER_URL, default_value = "http://spanprof-server:4040")]
    server_url: String,
    /// Directory of the span-context channel files (the shared volume).
    #[arg(long, env = env::CONTEXT_DIR)]
    context_dir: Option<PathBuf>,
    /// Samples per second of CPU time, per thread.
    #[arg(long, env = env::SAMPLE_RATE_HZ, default_value_t = 100)]
    sample_rate_hz: u64,
    /// How often profiles are pushed (e.g. 10s, 500ms).
    #[arg(long, env = env::UPLOAD_INTERVAL, default_value = "10s", value_parser = parse_positive_duration)]
    upload_interval: Duration,
    /// Sample only this process (repeatable). Default: every process of the PID namespace but the sidecar's own.
    #[arg(long = "pid", env = "SPANPROF_PIDS", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Sample only processes that have a channel file in --context-dir.
    #[arg(long, env = "SPANPROF_REQUIRE_CHANNEL")]
    require_channel: bool,
    /// User-stack bytes copied per sample (deeper stacks need more; at most 65000).
    #[arg(
        long = "stack-copy-bytes",
        alias = "stack-bytes",
        env = env::STACK_COPY_BYTES,
        default_value_t = 16384
    )]
    stack_bytes: u32,
    /// Upload bytes buffered while the server is unreachable; the oldest are dropped beyond.
    #[arg(long, env = "SPANPROF_MAX_BUFFER_BYTES", default_value_t = 32 << 20)]
    max_buffer_bytes: usize,
    /// `auto`: a container whose processes are all targets is sampled through its cgroup (one
    /// event per CPU, cheapest for the app; needs CAP_PERFMON), the rest per thread. `thread`:
    /// every thread gets events of its own.
    #[arg(long, env = "SPANPROF_SAMPLING_SCOPE", default_value = "auto")]
    scope: crate::discover::Scope,
    /// How many CPUs the sampled containers may use together (the operator sets the sum of their
    /// CPU limits): the per-CPU rings then hold that many CPUs' second of samples between them
    /// (at least a quarter second each), not a second each. Unset: a second each.
    #[arg(long, env = env::APP_CPUS, value_parser = parse_cpus)]
    app_cpus: Option<f64>,
    /// Also name the functions inlined at each frame (from DWARF line tables, as `perf report`
    /// does; an optimised Rust build inlines most small functions). Costs more symbolization CPU
    /// and memory (BENCHMARKS.md, "Inlined frames").
    #[arg(long, env = "SPANPROF_INLINED_FRAMES")]
    inlined_frames: bool,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = env::SIDECAR_LISTEN, default_value = "0.0.0.0:4041")]
    listen: SocketAddr,
    /// Service name of the profiles of processes whose own environment has no
    /// SPANPROF_SERVICE_NAME (default: each process's command name).
    #[arg(long, env = env::SERVICE_NAME)]
    service_name: Option<String>,
    /// Each container's service name, `container=service,...` (the operator sets it from what
    /// every app container reports); wins over the process's environment and --service-name.
    #[arg(long, env = env::SERVICE_NAMES, default_value = "")]
    service_names: String,
    #[command(flatten)]
    labels: LabelArgs,
    #[command(flatten)]
    log: LogArgs,
}

/// The series labels every profile of the pod carries (the downward API sets them).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Series labels")]
struct LabelArgs {
    /// The pod's namespace (`metadata.namespace`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    namespace: String,
    /// The pod's name (`metadata.name`).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
    /// Container label of the profiles of processes whose own environment has no
    /// SPANPROF_CONTAINER_NAME (the operator sets it in every app container).
    #[arg(long, env = env::CONTAINER_NAME, default_value = "")]
    container: String,
    /// The node's name (`spec.nodeName`).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node: String,
}

/// A positive, finite number of CPUs (`0.5`, `2`).
fn parse_cpus(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("{text:?} is not a positive number of CPUs")),
    }
}

/// Parses the flags and environment, runs the sampler until SIGINT/SIGTERM.
pub fn main() -> ExitCode {
    // Destructured whole: a flag added to Args and not used here fails to compile.
    let Args {
        server_url,
        context_dir,
        sample_rate_hz,
        upload_interval,
        pids,
        require_channel,
        stack_bytes,
        max_buffer_bytes,
        scope,
        app_cpus,
        inlined_frames,
        listen,
        service_name,
        service_names,
        labels: LabelArgs { namespace, pod, container, node },
        log,
    } = Args::parse();
    // The log goes to stderr: the sidecar's stdout is not its own to fill.
    log.init(LogTo::Stderr);
    let service_names = match spanprof_channel::pod::parse_service_names(&service_names) {
        Ok(names) => names,
        Err(e) => {
            eprintln!("spanprof-sidecar: --service-names: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config {
        server_url,
        context_dir: context_dir.filter(|d| !d.as_os_str().is_empty()),
        sample_rate_hz,
        upload_interval,
        targets: Targets { pids, require_channel },
        stack_bytes,
        max_buffer_bytes,
        scope,
        app_cpus,
        inlined_frames,
        listen,
        service_name: service_name.filter(|s| !s.is_empty()),
        service_names,
        series_labels: vec![
            ("namespace".into(), namespace),
            ("pod".into(), pod),
            ("container".into(), container),
            ("node".into(), node),
        ],
    };
    match crate::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("spanprof-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}
