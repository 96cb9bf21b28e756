//! The CPU work of each request, in distinct named functions so that each shows up as its own
//! frame in a flame graph. `#[inline(never)]` keeps the frames; each body computes something
//! different, so no two functions can be folded into one by the compiler or linker.

use std::hint::black_box;

/// Scans a pseudo-random fleet for the vehicle closest to the rider (floating point).
#[inline(never)]
pub fn find_nearest_vehicle(fleet_size: u32, seed: u64) -> u32 {
    let (mut best, mut best_d) = (0, f64::MAX);
    let mut x = seed | 1;
    for i in 0..fleet_size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (dx, dy) = ((x & 0xffff) as f64 - 32768.0, ((x >> 16) & 0xffff) as f64 - 32768.0);
        let d = (dx * dx + dy * dy).sqrt();
        if d < best_d {
            best_d = d;
            best = i;
        }
    }
    black_box(best)
}

/// Checks driver schedules for a free one (integer hashing).
#[inline(never)]
pub fn check_driver_availability(drivers: u32, seed: u64) -> bool {
    let mut h = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut free = 0u32;
    for d in 0..drivers {
        h = (h ^ u64::from(d)).wrapping_mul(0x0100_0000_01b3);
        h = h.rotate_left(23) ^ (h >> 11);
        free += u32::from(h.is_multiple_of(5));
    }
    black_box(free > 0)
}

/// Plans the route to the pickup point (a small dynamic program over a grid).
#[inline(never)]
pub fn compute_route(grid: usize, seed: u64) -> u64 {
    let mut row = vec![0u64; grid];
    let mut cost = seed;
    for _ in 0..grid {
        let mut left = 0u64;
        for cell in row.iter_mut() {
            cost = cost.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let step = (cost >> 59) + 1;
            *cell = (*cell).min(left).wrapping_add(step);
            left = *cell;
        }
    }
    black_box(row.last().copied().unwrap_or(0))
}

/// Prices the ride with surge pricing (a series evaluated term by term).
#[inline(never)]
pub fn price_ride(terms: u32, distance: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = 1.0;
    for k in 1..=terms {
        term *= distance / f64::from(k);
        sum += term.sin().abs() * 0.5;
        if term < 1e-12 {
            term = distance;
        }
    }
    black_box(2.5 + sum / f64::from(terms.max(1)))
}

/// Extra work of the slow region: re-validating the vehicle's geofence.
#[inline(never)]
pub fn validate_geofence(points: u32, seed: u64) -> u32 {
    let mut inside = 0;
    let mut s = seed as u32 | 1;
    for _ in 0..points {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let (x, y) = ((s >> 8) & 0x3ff, (s >> 18) & 0x3ff);
        inside += u32::from(x * x + y * y < 1024 * 1024 / 2);
    }
    black_box(inside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_deterministic_and_depends_on_its_input() {
        assert_eq!(find_nearest_vehicle(1000, 7), find_nearest_vehicle(1000, 7));
        assert_ne!(
            (0..8).map(|s| find_nearest_vehicle(1000, s)).collect::<Vec<_>>(),
            vec![find_nearest_vehicle(1000, 0); 8]
        );
        assert_eq!(compute_route(16, 3), compute_route(16, 3));
        assert!(price_ride(100, 3.0) > 2.5);
        assert!(validate_geofence(1000, 1) > 0);
        let available: Vec<bool> = (0..10).map(|s| check_driver_availability(3, s)).collect();
        assert!(available.contains(&true) && available.contains(&false));
    }
}
