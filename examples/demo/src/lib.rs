//! spanprof-demo: a ride-sharing HTTP service whose requests burn CPU in named functions, under
//! the root spans `OrderVehicle` (`/bike`, `/scooter`) and `CarHandler` (`/car`), with a built-in
//! load generator — the workload for spanprof's local demo and end-to-end tests.
#![forbid(unsafe_code)]

pub mod http;
pub mod load;
pub mod work;

use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// What the demo runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Requests per second the built-in load generator sends to this server (0: none).
    pub load_rps: u32,
    /// Print one line per root span: name, trace ID, span ID and profile URL.
    pub print_roots: bool,
    /// `SPANPROF_PROFILE_URL`: template with `{profile_id}`.
    pub profile_url: Option<String>,
    /// Scales all CPU work (1.0 ≈ 2–4 ms of CPU per request on this project’s 2-core dev VM, release build).
    pub work_scale: f64,
}

/// The vehicles one can order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vehicle {
    Bike,
    Scooter,
    Car,
}

impl Vehicle {
    pub const ALL: [Vehicle; 3] = [Vehicle::Bike, Vehicle::Scooter, Vehicle::Car];

    pub fn path(self) -> &'static str {
        match self {
            Vehicle::Bike => "/bike",
            Vehicle::Scooter => "/scooter",
            Vehicle::Car => "/car",
        }
    }
}

/// Regions; `eu-north` is the slow one (extra geofence validation), so its profiles differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Region {
    UsEast,
    EuNorth,
    ApSouth,
}

impl Region {
    pub const ALL: [Region; 3] = [Region::UsEast, Region::EuNorth, Region::ApSouth];

    pub fn as_str(self) -> &'static str {
        match self {
            Region::UsEast => "us-east",
            Region::EuNorth => "eu-north",
            Region::ApSouth => "ap-south",
        }
    }
}

/// How much of each kind of work one order takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Workload {
    pub fleet: u32,
    pub drivers: u32,
    pub route_grid: usize,
    pub price_terms: u32,
    pub geofence_points: u32,
}

/// The work for an order: cars also check drivers and plan a route; eu-north validates geofences.
pub fn workload(vehicle: Vehicle, region: Region, scale: f64) -> Workload {
    let s = |n: f64| (n * scale).max(0.0) as u32;
    let fleet = match vehicle {
        Vehicle::Bike => s(200_000.0),
        Vehicle::Scooter => s(300_000.0),
        Vehicle::Car => s(150_000.0),
    };
    let (drivers, route_grid) = match vehicle {
        Vehicle::Car => (s(400_000.0), s(300.0) as usize),
        _ => (0, 0),
    };
    let geofence_points = if region == Region::EuNorth { s(400_000.0) } else { 0 };
    Workload { fleet, drivers, route_grid, price_terms: s(50_000.0), geofence_points }
}

/// Counters served on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub orders: [AtomicU64; 3],
    pub load_sent: AtomicU64,
    pub load_failed: AtomicU64,
    /// Load ticks skipped because too many requests were already in flight.
    pub load_skipped: AtomicU64,
}

/// Shared by the handlers.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub counters: Counters,
}

/// Serves until SIGINT/SIGTERM, with the load generator running against the server when
/// `load_rps > 0`.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, load_rps = config.load_rps, "spanprof-demo listening");
    let app = Arc::new(App { config, counters: Counters::default() });
    let load = (app.config.load_rps > 0).then(|| tokio::spawn(load::generate(addr, Arc::clone(&app))));
    axum::serve(listener, http::router(Arc::clone(&app))).with_graceful_shutdown(shutdown()).await?;
    if let Some(load) = load {
        load.abort();
    }
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cars_and_the_slow_region_do_extra_work() {
        let bike = workload(Vehicle::Bike, Region::UsEast, 1.0);
        let car = workload(Vehicle::Car, Region::UsEast, 1.0);
        assert_eq!((bike.drivers, bike.route_grid, bike.geofence_points), (0, 0, 0));
        assert!(car.drivers > 0 && car.route_grid > 0);
        assert!(workload(Vehicle::Scooter, Region::EuNorth, 1.0).geofence_points > 0);
        assert_eq!(workload(Vehicle::Car, Region::EuNorth, 0.0).fleet, 0);
        assert_eq!(workload(Vehicle::Bike, Region::ApSouth, 2.0).fleet, 2 * bike.fleet);
    }
}
