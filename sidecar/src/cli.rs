//! The `spanprof-sidecar` command line: flags (each with its environment variable, as the
//! operator's webhook sets them), logging, and the run. Here rather than in `main.rs` so that
//! end-to-end tests run the very same command in containers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::agent::Targets;
use crate::{Config, parse_duration};
use clap::Parser;

/// spanprof sampler sidecar: samples the app's threads, labels samples with their root span, pushes profiles.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// spanprof-server (or any Pyroscope) base URL to push to.
    #[arg(long, env = "SPANPROF_SERVER_URL", default_value = "http://spanprof-server:4040")]
    server_url: String,
    /// Directory of the span-context channel files (the shared volume).
    #[arg(long, env = "SPANPROF_CONTEXT_DIR")]
    context_dir: Option<PathBuf>,
    /// Samples per second of CPU time, per thread.
    #[arg(long, env = "SPANPROF_SAMPLE_RATE_HZ", default_value_t = 100)]
    sample_rate_hz: u64,
    /// How often profiles are pushed (e.g. 10s, 500ms).
    #[arg(long, env = "SPANPROF_UPLOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
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
        env = "SPANPROF_STACK_COPY_BYTES",
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
    scope: crate::agent::Scope,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "SPANPROF_SIDECAR_LISTEN", default_value = "0.0.0.0:4041")]
    listen: SocketAddr,
    /// Service name of the profiles of processes whose own environment has no
    /// SPANPROF_SERVICE_NAME (default: each process's command name).
    #[arg(long, env = "SPANPROF_SERVICE_NAME")]
    service_name: Option<String>,
    /// Each container's service name, `container=service,...` (the operator sets it from what
    /// every app container reports); wins over the process's environment and --service-name.
    #[arg(long, env = "SPANPROF_SERVICE_NAMES", default_value = "")]
    service_names: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    namespace: String,
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
    /// Container label of the profiles of processes whose own environment has no
    /// SPANPROF_CONTAINER_NAME (the operator sets it in every app container).
    #[arg(long, env = "SPANPROF_CONTAINER_NAME", default_value = "")]
    container: String,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node: String,
}

/// Parses the flags and environment, runs the sampler until SIGINT/SIGTERM.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: `kubectl logs` shows them as raw escapes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let a = Args::parse();
    let service_names = match spanprof_channel::pod::parse_service_names(&a.service_names) {
        Ok(names) => names,
        Err(e) => {
            eprintln!("spanprof-sidecar: --service-names: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config {
        server_url: a.server_url,
        context_dir: a.context_dir.filter(|d| !d.as_os_str().is_empty()),
        sample_rate_hz: a.sample_rate_hz,
        upload_interval: a.upload_interval,
        targets: Targets { pids: a.pids, require_channel: a.require_channel },
        stack_bytes: a.stack_bytes,
        max_buffer_bytes: a.max_buffer_bytes,
        scope: a.scope,
        listen: a.listen,
        service_name: a.service_name.filter(|s| !s.is_empty()),
        service_names,
        series_labels: vec![
            ("namespace".into(), a.namespace),
            ("pod".into(), a.pod),
            ("container".into(), a.container),
            ("node".into(), a.node),
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
