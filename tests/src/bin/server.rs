//! `e2e-server <listen> <data-dir>`: spanprof-server on the embedded store with default settings.
#![forbid(unsafe_code)]

use std::time::Duration;

use spanprof_server::Config;
use spanprof_server::store::Retention;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:4040".into()).parse()?;
    let data_dir = args.next().unwrap_or_else(|| "./spanprof-data".into()).into();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("warn")).init();
    let config = Config {
        listen,
        data_dir,
        retention: Retention { max_age: None, max_bytes: None },
        retention_interval: Duration::from_secs(60),
        limits: Default::default(),
        store: Default::default(),
        queries: Default::default(),
        blocks: None,
    };
    spanprof_server::run(config, None).await?;
    Ok(())
}
