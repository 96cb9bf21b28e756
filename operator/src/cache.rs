//! Watch-fed caches that say when their first full list is in.
//!
//! kube-runtime 5's `Store::wait_until_ready` keeps a single waker: of several tasks waiting on
//! one store, only the last to poll is woken. On the real cluster the controller's runner and
//! the readiness task both waited on the SpanProfiling store, the controller won, and `/readyz`
//! stayed 503 forever. So nothing here waits on a store: each cache has a [`Synced`] flag of its
//! own, set when the watcher's initial list has been applied to the store, that any number of
//! tasks can read or await.

use std::fmt::Debug;
use std::hash::Hash;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// Whether a cache holds its first complete list (it stays true across later re-lists: the
/// store keeps serving the previous list until the new one is complete).
#[derive(Clone, Debug)]
pub struct Synced(watch::Receiver<bool>);

impl Synced {
    /// A flag and the sender that sets it.
    pub fn new() -> (watch::Sender<bool>, Synced) {
        let (tx, rx) = watch::channel(false);
        (tx, Synced(rx))
    }

    /// Already synced (tests, and caches filled by hand).
    pub fn done() -> Synced {
        Synced(watch::channel(true).1)
    }

    pub fn is_synced(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once synced; also when the cache's stream is gone (then it never will be).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// Yields once, when the cache becomes synced.
    pub fn on_sync(&self) -> impl Stream<Item = ()> + Send + 'static {
        let rx = self.0.clone();
        futures::stream::once(async move {
            let mut rx = rx;
            let _ = rx.wait_for(|synced| *synced).await;
        })
    }
}

/// A cache of `api`'s objects: the store, its [`Synced`] flag, and the stream of touched objects
/// that fills both (with backoff on watch errors), to be driven by the caller.
pub fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, Synced, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let (tx, synced) = Synced::new();
    let events = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .inspect(move |event| {
            // The reflector has applied the event when it passes by: on InitDone the store holds
            // the whole list.
            if let Ok(watcher::Event::InitDone) = event {
                tx.send_if_modified(|synced| !std::mem::replace(synced, true));
            }
        })
        .touched_objects();
    (reader, synced, events)
}

/// Drives `events` (a cache's stream) until it ends, logging watch errors; for caches that
/// nothing else consumes.
pub async fn drive<K>(events: impl Stream<Item = Result<K, watcher::Error>>, what: &str) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            tracing::warn!(cache = what, error = %e, "watch failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_is_woken() {
        // The defect of the store's own readiness: two waiters, one wake-up.
        let (tx, synced) = Synced::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = synced.clone();
                tokio::spawn(async move { s.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!synced.is_synced());
        tx.send_replace(true);
        for w in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(1), w).await.unwrap().unwrap();
        }
        assert!(synced.is_synced());
        assert!(Synced::done().is_synced());
    }
}
