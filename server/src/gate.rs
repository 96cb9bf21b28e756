//! The bound on heavy queries (profiles, traces, whole-process views and their exports): at most
//! `max_running` build their answer at once, at most `max_queued` more wait for a turn, and any
//! beyond are turned away at once (503 with `Retry-After`), so a crowd of large queries can
//! neither take all of the server's memory nor starve ingest of CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// How many heavy queries run and wait at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryLimits {
    /// Queries building their answer at once (`--max-concurrent-queries`).
    pub max_running: usize,
    /// Queries waiting for a turn; more are answered 503 right away.
    pub max_queued: usize,
    /// Longest wait for a turn before a 503.
    pub max_wait: Duration,
}

impl QueryLimits {
    /// `running` queries at once (at least one), four waiting per running one, 30 s of waiting.
    pub fn running(running: usize) -> Self {
        let running = running.max(1);
        QueryLimits { max_running: running, max_queued: 4 * running, max_wait: Duration::from_secs(30) }
    }
}

impl Default for QueryLimits {
    /// One running query per core: they are CPU-bound.
    fn default() -> Self {
        QueryLimits::running(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }
}

/// The gate heavy queries pass; see the module docs.
#[derive(Debug)]
pub struct QueryGate {
    limits: QueryLimits,
    permits: Arc<Semaphore>,
    /// Running plus waiting.
    inside: AtomicUsize,
}

/// A turn to run one heavy query; the next waiting query goes when it is dropped. It moves with
/// the work (into the task that streams an export), so the turn lasts as long as the work.
#[derive(Debug)]
pub struct QueryTurn {
    _permit: OwnedSemaphorePermit,
    inside: Arc<QueryGate>,
}

impl Drop for QueryTurn {
    fn drop(&mut self) {
        self.inside.inside.fetch_sub(1, Ordering::AcqRel);
    }
}

impl QueryGate {
    pub fn new(limits: QueryLimits) -> Arc<Self> {
        let limits = QueryLimits { max_running: limits.max_running.max(1), ..limits };
        Arc::new(QueryGate {
            limits,
            permits: Arc::new(Semaphore::new(limits.max_running)),
            inside: AtomicUsize::new(0),
        })
    }

    /// Waits for a turn; [`Error::Busy`] when the queue is full or the wait too long.
    pub async fn enter(self: &Arc<Self>) -> Result<QueryTurn, Error> {
        let cap = self.limits.max_running + self.limits.max_queued;
        if self.inside.fetch_add(1, Ordering::AcqRel) >= cap {
            self.inside.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Busy);
        }
        match tokio::time::timeout(self.limits.max_wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(QueryTurn { _permit: permit, inside: self.clone() }),
            // Timed out, or the semaphore closed (never closed).
            _ => {
                self.inside.fetch_sub(1, Ordering::AcqRel);
                Err(Error::Busy)
            }
        }
    }

    /// Queries running or waiting now.
    pub fn inside(&self) -> usize {
        self.inside.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_running_and_queued_queries_are_turned_away_and_turns_come_back() {
        let gate = QueryGate::new(QueryLimits { max_running: 2, max_queued: 1, max_wait: Duration::from_secs(60) });
        let a = gate.enter().await.unwrap();
        let _b = gate.enter().await.unwrap();
        // The third waits (queued); the fourth finds running + queued full.
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.enter().await.map(|_| ()) });
        while gate.inside() < 3 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(gate.enter().await, Err(Error::Busy)));
        assert_eq!(gate.inside(), 3, "a refused query leaves no trace");
        drop(a);
        waiting.await.unwrap().expect("the queued query gets the freed turn");
        assert_eq!(gate.inside(), 1);
        gate.enter().await.expect("room again");
    }

    #[tokio::test]
    async fn a_wait_longer_than_the_limit_is_turned_away() {
        let gate = QueryGate::new(QueryLimits { max_running: 1, max_queued: 5, max_wait: Duration::from_millis(20) });
        let _a = gate.enter().await.unwrap();
        assert!(matches!(gate.enter().await, Err(Error::Busy)));
        assert_eq!(gate.inside(), 1);
    }
}
