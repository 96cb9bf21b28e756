//! `spanprof-demo`: parses flags, installs tracing with the spanprof layer, runs the service.

use std::net::SocketAddr;

use clap::Parser;
use spanprof::SpanProfLayer;
use spanprof_demo::Config;
use tracing_subscriber::prelude::*;

/// spanprof demo: a ride-sharing service (/bike, /scooter, /car) with a built-in load generator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to serve on.
    #[arg(long, env = "SPANPROF_DEMO_LISTEN", default_value = "127.0.0.1:5050")]
    listen: SocketAddr,
    /// Requests per second the built-in load generator sends to this server (0 = off).
    #[arg(long, env = "SPANPROF_DEMO_LOAD_RPS", default_value_t = 20)]
    load_rps: u32,
    /// Print each root span's name, trace ID, span ID and profile URL to stdout.
    #[arg(long, env = "SPANPROF_DEMO_PRINT_ROOTS")]
    print_roots: bool,
    /// Scale the CPU work of every request.
    #[arg(long, env = "SPANPROF_DEMO_WORK_SCALE", default_value_t = 1.0)]
    work_scale: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spanprof = SpanProfLayer::from_env()?;
    let profile_url = spanprof.profile_url_template().map(str::to_owned);
    let enabled = spanprof.is_enabled();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(spanprof)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter),
        )
        .init();
    if !enabled {
        tracing::warn!("SPANPROF_CONTEXT_DIR is not set: spans are not published (and no IDs are printed)");
    }
    let config = Config {
        listen: args.listen,
        load_rps: args.load_rps,
        print_roots: args.print_roots,
        profile_url,
        work_scale: args.work_scale.max(0.0),
    };
    spanprof_demo::run(config).await
}
