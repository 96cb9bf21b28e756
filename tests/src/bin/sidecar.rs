//! `e2e-sidecar`: the sampler with a short upload interval, configured by `E2E_*` variables:
//! `E2E_SERVER_URL`, `E2E_CONTEXT_DIR` (optional), `E2E_PID` (optional; without it every process
//! with a channel file), `E2E_LISTEN` (metrics), `E2E_UPLOAD_INTERVAL_MS` (1000), `E2E_SERVICE`
//! (`e2e`), `E2E_SAMPLE_RATE_HZ` (100), `E2E_STACK_BYTES` (16384; the benchmark's cost breakdown
//! varies these two), `E2E_SCOPE` (`auto`; `thread` for per-thread events only), `E2E_MAX_BUFFER_BYTES` (8 MiB),
//! `E2E_APP_CPUS` (unset: the targets' CPU limit, which sizes the rings), `E2E_INLINED_FRAMES`
//! (`1`: name inlined functions too).
#![forbid(unsafe_code)]

use std::time::Duration;

use spanprof_sidecar::Config;
use spanprof_sidecar::discover::Targets;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let pids: Vec<u32> = var("E2E_PID").map(|p| p.parse()).transpose()?.into_iter().collect();
    let config = Config {
        server_url: var("E2E_SERVER_URL").unwrap_or_else(|| "http://127.0.0.1:4040".into()),
        context_dir: var("E2E_CONTEXT_DIR").map(Into::into),
        sample_rate_hz: var("E2E_SAMPLE_RATE_HZ").map(|v| v.parse()).transpose()?.unwrap_or(100),
        upload_interval: Duration::from_millis(
            var("E2E_UPLOAD_INTERVAL_MS").map(|v| v.parse()).transpose()?.unwrap_or(1000),
        ),
        targets: Targets { require_channel: pids.is_empty(), pids },
        stack_bytes: var("E2E_STACK_BYTES").map(|v| v.parse()).transpose()?.unwrap_or(16384),
        max_buffer_bytes: var("E2E_MAX_BUFFER_BYTES").map(|v| v.parse()).transpose()?.unwrap_or(8 << 20),
        app_cpus: var("E2E_APP_CPUS").map(|v| v.parse()).transpose()?,
        inlined_frames: var("E2E_INLINED_FRAMES").is_some_and(|v| v == "1"),
        scope: var("E2E_SCOPE").map(|v| v.parse()).transpose().map_err(anyhow::Error::msg)?.unwrap_or_default(),
        listen: var("E2E_LISTEN").unwrap_or_else(|| "127.0.0.1:0".into()).parse()?,
        service_name: Some(var("E2E_SERVICE").unwrap_or_else(|| "e2e".into())),
        service_names: Vec::new(),
        series_labels: vec![("namespace".into(), "test".into())],
    };
    spanprof_sidecar::run(config)?;
    Ok(())
}
