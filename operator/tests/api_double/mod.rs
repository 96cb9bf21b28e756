//! An in-memory Kubernetes API server over real HTTP, enough for the operator's run loop: list and
//! watch (with resource versions, label selectors and metadata-only responses), get, create,
//! update (optimistic concurrency), server-side apply and merge patches, for any resource path.
//! It keeps every object as JSON and counts the requests it serves, so tests can assert what the
//! operator did and change the cluster under it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Where an object lives: resource (plural, with its group for non-core), namespace, name.
type Key = (String, String, String);

#[derive(Default)]
struct Cluster {
    objects: BTreeMap<Key, Value>,
    /// Every change: (resource version, key, event type, object after the change).
    log: Vec<(u64, Key, &'static str, Value)>,
    rv: u64,
    /// Requests served, as `"<METHOD> <path>"`.
    requests: Vec<String>,
}

/// The API server double; clones share one cluster.
#[derive(Clone)]
pub struct ApiDouble {
    state: Arc<Mutex<Cluster>>,
    changed: Arc<watch::Sender<u64>>,
    pub addr: SocketAddr,
}

impl ApiDouble {
    /// Serves on an ephemeral port of 127.0.0.1.
    pub async fn start() -> ApiDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the API double");
        let addr = listener.local_addr().expect("local address");
        let double = ApiDouble { state: Arc::default(), changed: Arc::new(watch::channel(0).0), addr };
        let app = Router::new().fallback(handle).with_state(double.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        double
    }

    /// A kube client talking to this double.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().expect("URL");
        kube::Client::try_from(kube::Config::new(url)).expect("client")
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or replaces `object` under `resource` (e.g. `"pods"`,
    /// `"spanprofilings.spanprof.dev"`), as a controller of the cluster would, and notifies
    /// watchers.
    pub fn put(&self, resource: &str, object: Value) -> Value {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let name = object["metadata"]["name"].as_str().expect("object has a name").to_owned();
        let key = (resource.to_owned(), ns, name);
        let mut st = self.lock();
        let existed = st.objects.contains_key(&key);
        let stored = store(&mut st, key, object, if existed { "MODIFIED" } else { "ADDED" });
        drop(st);
        self.notify();
        stored
    }

    /// The stored object, if any.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(&(resource.to_owned(), namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Every stored object of `resource`.
    pub fn all(&self, resource: &str) -> Vec<Value> {
        self.lock().objects.iter().filter(|((r, _, _), _)| r == resource).map(|(_, v)| v.clone()).collect()
    }

    /// How many served requests start with `prefix` (e.g. `"PATCH /apis/spanprof.dev"`).
    pub fn requests(&self, prefix: &str) -> usize {
        self.lock().requests.iter().filter(|r| r.starts_with(prefix)).count()
    }

    fn notify(&self) {
        let rv = self.lock().rv;
        self.changed.send_replace(rv);
    }
}

/// Stores `object` with a new resource version and logs the change.
fn store(st: &mut Cluster, key: Key, mut object: Value, event: &'static str) -> Value {
    st.rv += 1;
    let rv = st.rv;
    let meta = &mut object["metadata"];
    meta["resourceVersion"] = json!(rv.to_string());
    if meta.get("uid").is_none() {
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
    }
    if meta.get("creationTimestamp").is_none() {
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    if !key.1.is_empty() {
        meta["namespace"] = json!(key.1);
    }
    st.objects.insert(key.clone(), object.clone());
    st.log.push((rv, key, event, object.clone()));
    object
}

/// What a request addresses.
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    /// apiVersion of the resource's objects.
    api_version: String,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let api_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    let qualify = |r: &str| if group.is_empty() { r.to_owned() } else { format!("{r}.{group}") };
    let t = |resource: &str, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        resource: qualify(resource),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        subresource: sub.map(str::to_owned),
        api_version: api_version.clone(),
    };
    Some(match rest {
        ["namespaces", ns, resource, rest @ ..] => t(resource, Some(ns), rest.first().copied(), rest.get(1).copied()),
        [resource] => t(resource, None, None, None),
        [resource, name] => t(resource, None, Some(name), None),
        [resource, name, sub] => t(resource, None, Some(name), Some(sub)),
        _ => return None,
    })
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b,c=d` label selectors (equality only, which is all the operator uses).
fn matches_labels(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => object["metadata"]["labels"][k.trim()].as_str() == Some(v.trim()),
        None => false,
    })
}

fn metadata_only(object: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]})
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn ok(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn handle(State(api): State<ApiDouble>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    api.lock().requests.push(format!("{method} {}", uri.path()));
    let Some(target) = parse_path(uri.path()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("no such path {}", uri.path()));
    };
    let q = query(&uri);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let meta_only = accept.contains("as=PartialObjectMetadata");
    let ns = target.namespace.clone().unwrap_or_default();
    match (&method, &target.name) {
        (&Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            watch_response(api, target, q, meta_only)
        }
        (&Method::GET, None) => {
            let st = api.lock();
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((r, n, _), o)| {
                    *r == target.resource
                        && (target.namespace.is_none() || *n == ns)
                        && matches_labels(o, q.get("labelSelector"))
                })
                .map(|(_, o)| if meta_only { metadata_only(o) } else { o.clone() })
                .collect();
            let (api_version, kind) = if meta_only {
                ("meta.k8s.io/v1".to_owned(), "PartialObjectMetadataList".to_owned())
            } else {
                (target.api_version.clone(), "List".to_owned())
            };
            let list = json!({
                "apiVersion": api_version, "kind": kind,
                "metadata": {"resourceVersion": st.rv.to_string()},
                "items": items,
            });
            ok(StatusCode::OK, &list)
        }
        (&Method::GET, Some(name)) => match api.get(&target.resource, &ns, name) {
            Some(o) => ok(StatusCode::OK, &if meta_only { metadata_only(&o) } else { o }),
            None => status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", target.resource)),
        },
        (&Method::POST, None) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON".into());
            };
            let name = match object["metadata"]["name"].as_str() {
                Some(n) => n.to_owned(),
                None => match object["metadata"]["generateName"].as_str() {
                    Some(g) => format!("{g}{}", api.lock().rv + 1),
                    None => return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "no name".into()),
                },
            };
            object["metadata"]["name"] = json!(name);
            let key = (target.resource.clone(), ns, name.clone());
            let mut st = api.lock();
            if st.objects.contains_key(&key) {
                return status(StatusCode::CONFLICT, "AlreadyExists", format!("\"{name}\" already exists"));
            }
            let stored = store(&mut st, key, object, "ADDED");
            drop(st);
            api.notify();
            ok(StatusCode::CREATED, &stored)
        }
        (&Method::PUT, Some(name)) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON".into());
            };
            let key = (target.resource.clone(), ns, name.clone());
            let mut st = api.lock();
            let Some(current) = st.objects.get(&key) else {
                return status(StatusCode::NOT_FOUND, "NotFound", format!("\"{name}\" not found"));
            };
            let expected = object["metadata"]["resourceVersion"].as_str();
            if expected.is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str()) {
                return status(StatusCode::CONFLICT, "Conflict", format!("\"{name}\": the object has been modified"));
            }
            let stored = store(&mut st, key, object, "MODIFIED");
            drop(st);
            api.notify();
            ok(StatusCode::OK, &stored)
        }
        (&Method::PATCH, Some(name)) => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            // Apply patches arrive as JSON (valid YAML); merge patches as JSON.
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("a {content_type} body that is not JSON"),
                );
            };
            let key = (target.resource.clone(), ns, name.clone());
            let mut st = api.lock();
            let Some(mut object) = st.objects.get(&key).cloned() else {
                return status(StatusCode::NOT_FOUND, "NotFound", format!("\"{name}\" not found"));
            };
            if target.subresource.as_deref() == Some("status") {
                object["status"] = patch["status"].clone();
            } else {
                merge(&mut object, &patch);
            }
            let stored = store(&mut st, key, object, "MODIFIED");
            drop(st);
            api.notify();
            ok(StatusCode::OK, &stored)
        }
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{method} {}", uri.path())),
    }
}

/// A merge in the spirit of server-side apply: maps merge, lists of named objects merge by name,
/// anything else is replaced.
fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if k == "apiVersion" || k == "kind" {
                    continue;
                }
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(a), Value::Array(b)) if b.iter().all(|v| v["name"].is_string()) => {
            for v in b {
                match a.iter_mut().find(|x| x["name"] == v["name"]) {
                    Some(x) => merge(x, v),
                    None => a.push(v.clone()),
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// A watch: every logged change after `resourceVersion` that matches, then new ones as they
/// happen, as newline-delimited JSON events, until the client goes away.
fn watch_response(api: ApiDouble, target: Target, q: BTreeMap<String, String>, meta_only: bool) -> Response {
    let since: u64 = q.get("resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0);
    let selector = q.get("labelSelector").cloned();
    let rx = api.changed.subscribe();
    let stream = futures::stream::unfold((api, rx, since), move |(api, mut rx, since)| {
        let (target_resource, target_ns, selector) =
            (target.resource.clone(), target.namespace.clone(), selector.clone());
        async move {
            loop {
                let batch: Vec<(u64, String)> = {
                    let st = api.lock();
                    st.log
                        .iter()
                        .filter(|(rv, (r, n, _), _, o)| {
                            *rv > since
                                && *r == target_resource
                                && target_ns.as_ref().is_none_or(|ns| ns == n)
                                && matches_labels(o, selector.as_ref())
                        })
                        .map(|(rv, _, event, o)| {
                            let object = if meta_only { metadata_only(o) } else { o.clone() };
                            (*rv, format!("{}\n", json!({"type": event, "object": object})))
                        })
                        .collect()
                };
                if let Some((last, _)) = batch.last() {
                    let last = *last;
                    let text: String = batch.into_iter().map(|(_, line)| line).collect();
                    return Some((Ok::<Bytes, std::io::Error>(Bytes::from(text)), (api, rx, last)));
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
