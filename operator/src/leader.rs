//! Leader election over a `coordination.k8s.io/v1` Lease in the operator's namespace, so that only
//! one replica reports status and publishes Events, while every replica serves the webhook.
//!
//! The decision (create, renew, take over, follow) is a pure function of the Lease as read and
//! the time; the shell around it reads the Lease and writes it back with the `resourceVersion` it
//! read (a create when there is none), so when two replicas race for the same Lease the API
//! server accepts one write and answers the other 409.

use std::future::Future;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// How the election is timed (client-go's defaults, shortened: a crashed leader is replaced
/// within `lease_duration` plus one `retry_every`).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a Lease holds after its last renewal.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_every: Duration,
    /// How often a follower looks at the Lease.
    pub retry_every: Duration,
    /// A leader that could not renew for this long stops acting as leader; shorter than
    /// `lease_duration`, so it has stepped down before anyone may take over.
    pub renew_deadline: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// What a replica should do about the Lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease: create it, holding it.
    Create,
    /// We hold it: renew it.
    Renew,
    /// It is released or expired: take it over.
    TakeOver,
    /// Another replica holds it until `expires`.
    Follow { holder: String, expires: Timestamp },
}

/// The step for `identity` at `now`, given the Lease (if any). A Lease without a
/// `leaseDurationSeconds` lasts `default_duration`.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp, default_duration: Duration) -> Step {
    let Some(lease) = lease else { return Step::Create };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Step::Renew;
    }
    if holder.is_empty() {
        return Step::TakeOver;
    }
    match expiry(&spec, default_duration) {
        // Clocks are compared across nodes here: they only need to agree to well within the
        // lease duration, and the conditional write keeps a wrong guess from making two leaders
        // of one Lease version.
        Some(expires) if expires > now => Step::Follow { holder, expires },
        _ => Step::TakeOver,
    }
}

/// When a Lease lapses: its last renewal (or acquisition) plus its duration.
fn expiry(spec: &LeaseSpec, default_duration: Duration) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let seconds = spec.lease_duration_seconds.map_or(default_duration.as_secs() as i64, i64::from);
    renewed.checked_add(SignedDuration::from_secs(seconds)).ok()
}

/// The Lease as `identity` writes it when taking it (`previous`: the Lease it read, if any).
pub fn acquired(previous: Option<&Lease>, name: &str, identity: &str, now: Timestamp, duration: Duration) -> Lease {
    let old = previous.and_then(|l| l.spec.clone()).unwrap_or_default();
    // As client-go counts: every acquisition of an existing Lease by a replica that did not hold
    // it is a transition, also after a graceful release (no holder) by another replica.
    let changes_hands = previous.is_some() && old.holder_identity.as_deref() != Some(identity);
    let transitions = old.lease_transitions.unwrap_or(0).saturating_add(i32::from(changes_hands));
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            // The version read: the write only succeeds if nobody wrote since.
            resource_version: previous.and_then(|l| l.metadata.resource_version.clone()),
            ..previous.map(|l| l.metadata.clone()).unwrap_or_default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_owned()),
            lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..old
        }),
    }
}

/// The Lease as its holder writes it when renewing.
pub fn renewed(lease: &Lease, now: Timestamp) -> Lease {
    let mut lease = lease.clone();
    lease.spec.get_or_insert_with(Default::default).renew_time = Some(MicroTime(now));
    lease
}

/// The Lease as its holder writes it when shutting down: no holder, so another replica takes
/// over at its next look instead of waiting for the Lease to expire.
pub fn released(lease: &Lease, now: Timestamp) -> Lease {
    let mut lease = lease.clone();
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(now));
    lease
}

/// One replica's side of the election.
pub struct Elector {
    /// Leases of the operator's namespace.
    pub api: Api<Lease>,
    pub name: String,
    /// This replica's name (holderIdentity).
    pub identity: String,
    pub timing: Timing,
}

impl Elector {
    /// One round: reads the Lease and creates, renews or takes it over when due. Returns whether
    /// this replica holds it afterwards; losing a race (409) is `Ok(false)`, not an error.
    pub async fn round(&self, now: Timestamp) -> Result<bool> {
        let current = self.api.get_opt(&self.name).await?;
        let duration = self.timing.lease_duration;
        let write = match decide(current.as_ref(), &self.identity, now, duration) {
            Step::Follow { .. } => return Ok(false),
            Step::Create => {
                let lease = acquired(None, &self.name, &self.identity, now, duration);
                self.api.create(&PostParams::default(), &lease).await
            }
            Step::Renew => {
                let lease = renewed(current.as_ref().ok_or_else(|| Error::Config("no lease to renew".into()))?, now);
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
            Step::TakeOver => {
                let lease = acquired(current.as_ref(), &self.name, &self.identity, now, duration);
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
        };
        match write {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up if this replica holds it (a conditional write; losing it is fine).
    pub async fn release(&self, now: Timestamp) -> Result<()> {
        let Some(lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.identity.as_str()) {
            return Ok(());
        }
        match self.api.replace(&self.name, &PostParams::default(), &released(&lease, now)).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs the election until `shutdown` resolves, publishing leadership on `leader`; then
    /// releases the Lease if held.
    pub async fn run(self, leader: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        // When this replica last held the Lease according to a successful round.
        let mut last_held: Option<tokio::time::Instant> = None;
        loop {
            let held = match self.round(Timestamp::now()).await {
                Ok(held) => {
                    last_held = held.then(tokio::time::Instant::now);
                    held
                }
                Err(e) => {
                    tracing::warn!(lease = self.name, error = %e, "leader election: the Lease could not be read or written");
                    // Keep leading through short API hiccups, but stop before the Lease can lapse.
                    last_held.is_some_and(|t| t.elapsed() < self.timing.renew_deadline)
                }
            };
            // Only a change is published: renewing must not look like gaining leadership again
            // (that made the leader reconcile everything at every renewal).
            let mut was = false;
            leader.send_if_modified(|current| {
                was = std::mem::replace(current, held);
                was != held
            });
            if held && !was {
                tracing::info!(lease = self.name, identity = self.identity, "became the leader");
            } else if was && !held {
                tracing::info!(lease = self.name, identity = self.identity, "no longer the leader");
            }
            let wait = if held { self.timing.renew_every } else { self.timing.retry_every };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut shutdown => break,
            }
        }
        if leader.send_replace(false) {
            match self.release(Timestamp::now()).await {
                Ok(()) => tracing::info!(lease = self.name, "released the Lease"),
                Err(e) => {
                    tracing::warn!(lease = self.name, error = %e, "releasing the Lease failed; it expires on its own")
                }
            }
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether this replica may act as the leader, as the election last decided.
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// Follows an election's `leader` channel.
    pub fn new(rx: watch::Receiver<bool>) -> Self {
        Leadership(rx)
    }

    /// Always the leader: a single replica without an election (tests, local runs).
    pub fn always() -> Self {
        let (_, rx) = watch::channel(true);
        Leadership(rx)
    }

    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// Yields once each time this replica becomes the leader.
    pub fn gained(&self) -> impl Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.0.clone(), |mut rx| async move {
            loop {
                rx.changed().await.ok()?;
                if *rx.borrow_and_update() {
                    return Some(((), rx));
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECOND: SignedDuration = SignedDuration::from_secs(1);
    const DEFAULT: Duration = Duration::from_secs(15);

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn lease(holder: Option<&str>, renewed: &str, duration: Option<i32>) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "spanprof-operator", "namespace": "spanprof", "resourceVersion": "7"},
            "spec": {
                "holderIdentity": holder, "leaseDurationSeconds": duration,
                "acquireTime": "2025-06-01T09:00:00.000000Z", "renewTime": renewed, "leaseTransitions": 2
            }
        }))
        .unwrap()
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide(None, "op-0", t("2025-06-01T10:00:00Z"), DEFAULT), Step::Create);
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_it_lapsed() {
        let l = lease(Some("op-0"), "2025-06-01T09:00:00Z", Some(15));
        assert_eq!(decide(Some(&l), "op-0", t("2025-06-01T10:00:00Z"), DEFAULT), Step::Renew);
    }

    #[test]
    fn a_fresh_lease_of_another_replica_is_followed_until_it_expires() {
        let l = lease(Some("op-1"), "2025-06-01T10:00:00Z", Some(15));
        let now = t("2025-06-01T10:00:14Z");
        assert_eq!(
            decide(Some(&l), "op-0", now, DEFAULT),
            Step::Follow { holder: "op-1".into(), expires: t("2025-06-01T10:00:15Z") }
        );
        // At and after the expiry it is taken over.
        assert_eq!(decide(Some(&l), "op-0", now + SECOND, DEFAULT), Step::TakeOver);
        assert_eq!(decide(Some(&l), "op-0", t("2025-06-01T11:00:00Z"), DEFAULT), Step::TakeOver);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        for holder in [None, Some("")] {
            let l = lease(holder, "2025-06-01T10:00:00Z", Some(15));
            assert_eq!(decide(Some(&l), "op-0", t("2025-06-01T10:00:01Z"), DEFAULT), Step::TakeOver);
        }
    }

    #[test]
    fn missing_fields_fall_back_to_the_default_duration_and_acquire_time() {
        let l = lease(Some("op-1"), "2025-06-01T10:00:00Z", None);
        assert!(matches!(decide(Some(&l), "op-0", t("2025-06-01T10:00:14Z"), DEFAULT), Step::Follow { .. }));
        assert_eq!(decide(Some(&l), "op-0", t("2025-06-01T10:00:16Z"), DEFAULT), Step::TakeOver);
        let mut l = lease(Some("op-1"), "2025-06-01T10:00:00Z", Some(15));
        l.spec.as_mut().unwrap().renew_time = None;
        // acquireTime 09:00 + 15 s lapsed long ago.
        assert_eq!(decide(Some(&l), "op-0", t("2025-06-01T10:00:00Z"), DEFAULT), Step::TakeOver);
        l.spec.as_mut().unwrap().acquire_time = None;
        assert_eq!(decide(Some(&l), "op-0", t("2025-06-01T10:00:00Z"), DEFAULT), Step::TakeOver);
    }

    #[test]
    fn taking_a_lease_carries_its_version_and_counts_transitions() {
        let now = t("2025-06-01T10:01:00Z");
        let old = lease(Some("op-1"), "2025-06-01T10:00:00Z", Some(15));
        let new = acquired(Some(&old), "spanprof-operator", "op-0", now, DEFAULT);
        assert_eq!(new.metadata.resource_version.as_deref(), Some("7"));
        let spec = new.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("op-0"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!((spec.acquire_time.unwrap().0, spec.renew_time.unwrap().0), (now, now));
        assert_eq!(spec.lease_transitions, Some(3));
        // Taking over a lease another replica released on shutdown is a transition too (client-go
        // counts it; the real-cluster run showed 0 after graceful handovers).
        let free = lease(None, "2025-06-01T10:00:00Z", Some(15));
        assert_eq!(
            acquired(Some(&free), "spanprof-operator", "op-0", now, DEFAULT).spec.unwrap().lease_transitions,
            Some(3)
        );
        let created = acquired(None, "spanprof-operator", "op-0", now, DEFAULT);
        assert_eq!(created.metadata.resource_version, None);
        assert_eq!(created.spec.unwrap().lease_transitions, Some(0));
    }

    #[test]
    fn renewing_and_releasing_touch_only_their_fields() {
        let now = t("2025-06-01T10:00:05Z");
        let l = lease(Some("op-0"), "2025-06-01T10:00:00Z", Some(15));
        let r = renewed(&l, now);
        assert_eq!(r.spec.as_ref().unwrap().renew_time.as_ref().unwrap().0, now);
        assert_eq!(r.spec.as_ref().unwrap().acquire_time, l.spec.as_ref().unwrap().acquire_time);
        assert_eq!(r.metadata, l.metadata);
        let gone = released(&l, now);
        assert_eq!(gone.spec.as_ref().unwrap().holder_identity, None);
        assert_eq!(decide(Some(&gone), "op-1", now, DEFAULT), Step::TakeOver);
    }

    #[tokio::test]
    async fn leadership_reports_each_gain() {
        use futures::StreamExt;
        let (tx, rx) = watch::channel(false);
        let leadership = Leadership::new(rx);
        let mut gained = std::pin::pin!(leadership.gained());
        assert!(!leadership.is_leader());
        tx.send_replace(true);
        assert_eq!(gained.next().await, Some(()));
        assert!(leadership.is_leader());
        tx.send_replace(false);
        tx.send_replace(true);
        assert_eq!(gained.next().await, Some(()));
        drop(tx);
        assert_eq!(gained.next().await, None);
        assert!(Leadership::always().is_leader());
    }
}
