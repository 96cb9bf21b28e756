//! `e2e-demo`: the spanprof demo service with its load generator and the SDK installed, as
//! `spanprof-demo` runs it; `E2E_DEMO_LISTEN`, `E2E_LOAD_RPS` (20), `E2E_WORK_SCALE` (1.0), and
//! `SPANPROF_CONTEXT_DIR` (without it the SDK is off).
#![forbid(unsafe_code)]

use spanprof::SpanProfLayer;
use spanprof_demo::Config;
use tracing_subscriber::prelude::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let spanprof = SpanProfLayer::from_env()?;
    tracing_subscriber::registry()
        .with(spanprof)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let config = Config {
        listen: var("E2E_DEMO_LISTEN").unwrap_or_else(|| "127.0.0.1:5050".into()).parse()?,
        load_rps: var("E2E_LOAD_RPS").map(|v| v.parse()).transpose()?.unwrap_or(20),
        print_roots: false,
        profile_url: None,
        work_scale: var("E2E_WORK_SCALE").map(|v| v.parse()).transpose()?.unwrap_or(1.0),
    };
    spanprof_demo::run(config).await
}
