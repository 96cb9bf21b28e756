//! Peers: the other replicas sharing the bucket, asked for what only they hold — their local
//! store and the block they are uploading — so any replica answers any query with everything.
//! One internal call, `POST /internal/v1/local` with a [`LocalQuery`], answered by
//! [`super::layered::LayeredStore::local_answer`] from that replica's own data only (never its
//! peers', so calls do not recurse).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ProcessQuery, SeriesPoints, SpanProfile, SpanStat, SpanSummary, Stacks};
use crate::error::{Error, Result};
use crate::model::Labels;

/// The internal route peers call.
pub const LOCAL_PATH: &str = "/internal/v1/local";
/// How long a resolution of `--peers` is used.
const RESOLVE_EVERY: Duration = Duration::from_secs(10);
/// A peer that does not answer in this time makes the answer partial.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// What one replica is asked about its own data.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LocalQuery {
    /// The local part of one span profile, stacks included.
    Profile {
        id: String,
    },
    /// The local metadata of these profiles.
    Summaries {
        ids: Vec<String>,
    },
    /// Profile IDs of the local span profiles of a trace.
    Trace {
        trace_id: String,
    },
    /// Listing candidates strictly after `after` (last seen ms, profile ID), newest first.
    List {
        service: Option<String>,
        span_name: Option<String>,
        from_ms: Option<u64>,
        after: Option<(u64, String)>,
        limit: usize,
    },
    /// Local whole-process parts of the selected series.
    Process {
        query: ProcessQuery,
    },
    /// Local per-bucket samples of the selected series.
    ProcessSeries {
        query: ProcessQuery,
    },
    /// Local span index entries of the selected span rollups.
    SpanStats {
        query: ProcessQuery,
    },
    Services,
    /// Labels of every local whole-process series.
    Series,
}

/// Stacks with their frame names once: `(frame indexes, count)`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WireStacks {
    pub names: Vec<String>,
    pub stacks: Vec<(Vec<u32>, u64)>,
}

impl WireStacks {
    pub fn from_stacks(stacks: &Stacks) -> Self {
        let mut index: HashMap<Arc<str>, u32> = HashMap::new();
        let mut out = WireStacks::default();
        for (frames, count) in stacks {
            let ids = frames
                .iter()
                .map(|f| {
                    *index.entry(f.clone()).or_insert_with(|| {
                        out.names.push(f.to_string());
                        out.names.len() as u32 - 1
                    })
                })
                .collect();
            out.stacks.push((ids, *count));
        }
        out
    }

    pub fn into_stacks(self) -> Result<Stacks> {
        let names: Vec<Arc<str>> = self.names.into_iter().map(Arc::from).collect();
        self.stacks
            .into_iter()
            .map(|(ids, count)| {
                let frames = ids
                    .iter()
                    .map(|&i| {
                        names.get(i as usize).cloned().ok_or_else(|| Error::Corrupt("peer answer: frame index".into()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((frames, count))
            })
            .collect()
    }
}

/// One replica's answer about its own data.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LocalAnswer {
    /// The answering replica's instance ID (a replica ignores its own answer).
    pub instance: String,
    /// The blocks its local generations become (their data is in this answer, so the querier
    /// leaves those blocks out even once they are uploaded).
    #[serde(default)]
    pub local_blocks: Vec<String>,
    /// Blocks it uploaded lately (the querier's listing of the bucket may not have them yet).
    pub recent_blocks: Vec<String>,
    #[serde(default)]
    pub profile: Option<(SpanSummary, WireStacks)>,
    #[serde(default)]
    pub summaries: Vec<SpanSummary>,
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub candidates: Vec<(u64, String)>,
    #[serde(default)]
    pub process: Vec<(u64, WireStacks)>,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub series: Vec<Labels>,
    #[serde(default)]
    pub series_points: Vec<SeriesPoints>,
    #[serde(default)]
    pub span_stats: Vec<SpanStat>,
}

impl LocalAnswer {
    pub fn span_profile(&mut self) -> Result<Option<SpanProfile>> {
        match self.profile.take() {
            Some((summary, stacks)) => Ok(Some(SpanProfile { summary, stacks: stacks.into_stacks()? })),
            None => Ok(None),
        }
    }
}

/// The peers of this replica: `--peers` as given, resolved when asked (a headless Service's
/// name resolves to every pod's address).
pub struct Peers {
    spec: Vec<PeerSpec>,
    client: reqwest_tls::Client,
    /// This replica's instance ID: random per process.
    pub instance: String,
    resolved: Mutex<Option<(Instant, Vec<SocketAddr>)>>,
}

enum PeerSpec {
    /// `dns+host:port`: every address the name resolves to.
    Dns(String),
    /// `host:port`.
    Addr(String),
}

impl Peers {
    /// Parses `--peers`: `dns+<host>:<port>` (every address of, e.g., a headless Service) or a
    /// comma list of `host:port`.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut out = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (dns, addr) = match part.strip_prefix("dns+") {
                Some(rest) => (true, rest),
                None => (false, part),
            };
            if addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
                return Err(Error::Config(format!("--peers {part:?}: expected host:port or dns+host:port")));
            }
            out.push(if dns { PeerSpec::Dns(addr.to_owned()) } else { PeerSpec::Addr(addr.to_owned()) });
        }
        super::use_ring_for_tls();
        let client = reqwest_tls::Client::builder()
            .timeout(PEER_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Config(format!("peer client: {e}")))?;
        let random = std::collections::hash_map::RandomState::new();
        let instance = format!("{:016x}", std::hash::BuildHasher::hash_one(&random, std::process::id()));
        Ok(Peers { spec: out, client, instance, resolved: Mutex::new(None) })
    }

    async fn addresses(&self) -> Vec<SocketAddr> {
        if let Some((at, addrs)) = self.resolved.lock().ok().and_then(|r| r.clone())
            && at.elapsed() < RESOLVE_EVERY
        {
            return addrs;
        }
        let mut out = Vec::new();
        for s in &self.spec {
            let (PeerSpec::Dns(a) | PeerSpec::Addr(a)) = s;
            match tokio::net::lookup_host(a.as_str()).await {
                Ok(found) => {
                    let found: Vec<SocketAddr> = found.collect();
                    match s {
                        PeerSpec::Dns(_) => out.extend(found),
                        PeerSpec::Addr(_) => out.extend(found.into_iter().next()),
                    }
                }
                Err(e) => tracing::warn!(peer = %a, error = %e, "a peer's name does not resolve"),
            }
        }
        out.sort();
        out.dedup();
        if let Ok(mut r) = self.resolved.lock() {
            *r = Some((Instant::now(), out.clone()));
        }
        out
    }

    /// Asks every peer; returns the answers of the others and how many peers failed.
    pub async fn ask(&self, q: &LocalQuery) -> (Vec<LocalAnswer>, Vec<String>) {
        let body = match serde_json::to_vec(q) {
            Ok(b) => b,
            Err(e) => return (Vec::new(), vec![e.to_string()]),
        };
        let addrs = self.addresses().await;
        let calls = addrs.iter().map(|a| {
            let url = format!("http://{a}{LOCAL_PATH}");
            let body = body.clone();
            async move {
                let r = self.client.post(&url).header("content-type", "application/json").body(body).send().await;
                let r = match r {
                    Ok(r) if r.status().is_success() => r,
                    Ok(r) => return Err(format!("{a}: {}", r.status())),
                    Err(e) => return Err(format!("{a}: {e}")),
                };
                let bytes = r.bytes().await.map_err(|e| format!("{a}: {e}"))?;
                serde_json::from_slice::<LocalAnswer>(&bytes).map_err(|e| format!("{a}: {e}"))
            }
        });
        let mut answers = Vec::new();
        let mut failed = Vec::new();
        for r in futures_util::future::join_all(calls).await {
            match r {
                Ok(a) if a.instance == self.instance => {}
                Ok(a) => answers.push(a),
                Err(e) => failed.push(e),
            }
        }
        (answers, failed)
    }
}

thread_local! {
    /// Why the answer the current thread is building misses data (a peer down), if it does.
    static PARTIAL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Marks the answer being built on this thread as partial.
pub fn mark_partial(why: String) {
    PARTIAL.with(|p| *p.borrow_mut() = Some(why));
}

/// Whether the answer built on this thread since the last call is partial, and why; resets.
pub fn take_partial() -> Option<String> {
    PARTIAL.with(|p| p.borrow_mut().take())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_specs_parse_or_say_what_is_wrong() {
        assert_eq!(Peers::parse("dns+spanprof-server-headless:4040, 10.0.0.2:4040").unwrap().spec.len(), 2);
        assert!(Peers::parse("nohost").is_err());
        assert!(Peers::parse("dns+x:port").is_err());
        assert!(Peers::parse("").unwrap().spec.is_empty());
    }

    #[test]
    fn stacks_round_trip_with_names_once() {
        let stacks: Stacks =
            vec![(vec![Arc::from("main"), Arc::from("a")], 3), (vec![Arc::from("main"), Arc::from("b")], 1)];
        let wire = WireStacks::from_stacks(&stacks);
        assert_eq!(wire.names, ["main", "a", "b"]);
        assert_eq!(wire.into_stacks().unwrap(), stacks);
    }
}
