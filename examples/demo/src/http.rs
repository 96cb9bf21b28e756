//! The HTTP API: `/bike`, `/scooter`, `/car` (optional `?region=`), `/healthz`, `/readyz`,
//! `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use tracing::{Instrument, info_span};

use crate::{App, Region, Vehicle, work, workload};

#[derive(Debug, serde::Deserialize)]
pub struct OrderQuery {
    region: Option<Region>,
}

/// The answer to an order.
#[derive(Debug, serde::Serialize)]
pub struct Order {
    vehicle: Vehicle,
    region: &'static str,
    vehicle_index: u32,
    driver_available: bool,
    route_cost: u64,
    fare: f64,
    /// The profile ID of this request's root span (when spanprof is enabled).
    profile_id: Option<String>,
    trace_id: Option<String>,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/bike", get(bike))
        .route("/scooter", get(scooter))
        .route("/car", get(car))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(app)
}

async fn bike(State(app): State<Arc<App>>, Query(q): Query<OrderQuery>) -> Json<Order> {
    let region = q.region.unwrap_or(Region::UsEast);
    let span = info_span!("OrderVehicle", vehicle = "bike", region = region.as_str());
    Json(order(&app, Vehicle::Bike, region).instrument(span).await)
}

async fn scooter(State(app): State<Arc<App>>, Query(q): Query<OrderQuery>) -> Json<Order> {
    let region = q.region.unwrap_or(Region::UsEast);
    let span = info_span!("OrderVehicle", vehicle = "scooter", region = region.as_str());
    Json(order(&app, Vehicle::Scooter, region).instrument(span).await)
}

async fn car(State(app): State<Arc<App>>, Query(q): Query<OrderQuery>) -> Json<Order> {
    let region = q.region.unwrap_or(Region::UsEast);
    let span = info_span!("CarHandler", vehicle = "car", region = region.as_str());
    Json(order(&app, Vehicle::Car, region).instrument(span).await)
}

/// Runs inside the request's root span; each step is a child span and a named function.
async fn order(app: &App, vehicle: Vehicle, region: Region) -> Order {
    let w = workload(vehicle, region, app.config.work_scale);
    let root = spanprof::root_of(&tracing::Span::current());
    if let (true, Some(root)) = (app.config.print_roots, root) {
        println!(
            "{}",
            root_line(
                tracing::Span::current().metadata().map_or("?", |m| m.name()),
                &root,
                app.config.profile_url.as_deref()
            )
        );
    }
    let seed = root.map_or(0x5eed, |r| r.profile_id);
    let vehicle_index = info_span!("find_nearest_vehicle").in_scope(|| work::find_nearest_vehicle(w.fleet, seed));
    // Let other requests run between steps, as a real service waiting on I/O would.
    tokio::task::yield_now().await;
    let (driver_available, route_cost) = if vehicle == Vehicle::Car {
        let available =
            info_span!("check_driver_availability").in_scope(|| work::check_driver_availability(w.drivers, seed));
        tokio::task::yield_now().await;
        (available, info_span!("compute_route").in_scope(|| work::compute_route(w.route_grid, seed)))
    } else {
        (true, 0)
    };
    if w.geofence_points > 0 {
        info_span!("validate_geofence").in_scope(|| work::validate_geofence(w.geofence_points, seed));
    }
    let fare =
        info_span!("price_ride").in_scope(|| work::price_ride(w.price_terms, 1.0 + f64::from(vehicle_index % 7)));
    app.counters.orders[vehicle as usize].fetch_add(1, Ordering::Relaxed);
    Order {
        vehicle,
        region: region.as_str(),
        vehicle_index,
        driver_available,
        route_cost,
        fare,
        profile_id: root.map(|r| r.profile_id_hex()),
        trace_id: root.map(|r| r.trace_id_hex()),
    }
}

/// The line printed per root span with `--print-roots`.
pub fn root_line(name: &str, root: &spanprof::RootSpan, template: Option<&str>) -> String {
    let mut line = format!("root span_name={name} trace_id={} span_id={}", root.trace_id_hex(), root.profile_id_hex());
    if let Some(t) = template {
        line.push_str(" profile_url=");
        line.push_str(&root.profile_url(t));
    }
    line
}

async fn metrics(State(app): State<Arc<App>>) -> String {
    let c = &app.counters;
    let mut out = String::from("# TYPE spanprof_demo_orders_total counter\n");
    for v in Vehicle::ALL {
        let n = c.orders[v as usize].load(Ordering::Relaxed);
        out.push_str(&format!("spanprof_demo_orders_total{{vehicle=\"{}\"}} {n}\n", &v.path()[1..]));
    }
    for (name, value) in [
        ("spanprof_demo_load_sent_total", &c.load_sent),
        ("spanprof_demo_load_failed_total", &c.load_failed),
        ("spanprof_demo_load_skipped_total", &c.load_skipped),
    ] {
        out.push_str(&format!("# TYPE {name} counter\n{name} {}\n", value.load(Ordering::Relaxed)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_lines_carry_ids_and_the_profile_url() {
        let root = spanprof::RootSpan { profile_id: 0x1234, trace_id: 0xabc };
        assert_eq!(
            root_line("CarHandler", &root, Some("http://localhost:4040/profiles/{profile_id}")),
            "root span_name=CarHandler trace_id=00000000000000000000000000000abc span_id=0000000000001234 profile_url=http://localhost:4040/profiles/0000000000001234"
        );
        assert!(!root_line("OrderVehicle", &root, None).contains("profile_url"));
    }
}
