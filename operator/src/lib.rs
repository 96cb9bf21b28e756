//! spanprof-operator: the `SpanProfiling` CRD, the webhook that injects the sampler, the status
//! controller and the webhook's TLS.
#![forbid(unsafe_code)]

pub mod controller;
pub mod crd;
pub mod error;
pub mod inject;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod pod_security;
pub mod rbac;
pub mod tls;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;

pub use error::{Error, Result};

use inject::Defaults;
use metrics::Metrics;
use tls::{CertResolver, Ensured, SecretStore, TlsSource};

/// Everything the operator needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTPS address of the webhook.
    pub webhook_listen: SocketAddr,
    /// Plain HTTP address of `/metrics`, `/healthz` and `/readyz`.
    pub metrics_listen: SocketAddr,
    /// Where the webhook's certificate comes from.
    pub tls: TlsSource,
    /// How often the certificate is checked for rotation (and the caBundle re-applied).
    pub cert_check_interval: Duration,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    pub webhook_config_name: String,
    /// Injection fallbacks and the operator's namespace.
    pub defaults: Defaults,
    /// This replica's name, as the reporting instance of Events.
    pub pod_name: Option<String>,
}

/// Readiness of this replica: it has a serving certificate and has listed SpanProfilings and
/// namespaces.
#[derive(Default)]
struct Health {
    metrics: Arc<Metrics>,
    resolver: Arc<CertResolver>,
    cache_synced: AtomicBool,
    namespaces_synced: AtomicBool,
}

/// Runs the operator until SIGINT/SIGTERM (or `shutdown`), then stops the controller, lets
/// in-flight admission requests finish and returns.
pub async fn run(config: Config, shutdown: Option<tokio::sync::oneshot::Receiver<()>>) -> Result<()> {
    let client = Client::try_default().await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        match shutdown {
            Some(rx) => {
                let _ = rx.await;
            }
            None => wait_for_signal().await,
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let health = Arc::new(Health::default());
    let reporter = Reporter { controller: names::MANAGER.into(), instance: config.pod_name.clone() };
    let recorder = Recorder::new(client.clone(), reporter);

    // Leader election: only the leader reports status and publishes Events; every replica
    // serves the webhook, and readiness does not depend on leading.
    let (leader_tx, leader_rx) = watch::channel(false);
    let elector = leader::Elector {
        api: Api::namespaced(client.clone(), &config.defaults.operator_namespace),
        name: names::LEASE_NAME.to_owned(),
        identity: config.pod_name.clone().unwrap_or_else(fallback_identity),
        timing: leader::Timing::default(),
    };
    let elector_task = tokio::spawn(elector.run(leader_tx, stopped()));
    {
        let (mut rx, metrics) = (leader_rx.clone(), health.metrics.clone());
        tokio::spawn(async move {
            loop {
                metrics.leader.set(i64::from(*rx.borrow_and_update()));
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    // Controller, and the SpanProfiling cache the webhook shares with it.
    let (controller, pods_store, pods) = controller::controller(client.clone());
    let profilings = controller.store();
    let ctx = Arc::new(
        controller::Context::new(client.clone(), pods_store, recorder.clone(), health.metrics.clone(), config.defaults.clone())
            .with_leadership(leader::Leadership::new(leader_rx)),
    );
    let controller_task = tokio::spawn(controller::run(controller, pods, ctx, stopped()));
    {
        let (profilings, health) = (profilings.clone(), health.clone());
        tokio::spawn(async move {
            if profilings.wait_until_ready().await.is_ok() {
                health.cache_synced.store(true, Ordering::Release);
                tracing::info!("SpanProfiling cache synced");
            }
        });
    }

    // Namespaces, for the Pod Security level each enforces.
    let (namespaces, namespace_events) = webhook::namespace_cache(client.clone());
    {
        let stop = stopped();
        tokio::spawn(async move {
            tokio::select! {
                () = namespace_events.for_each(|res| async move {
                    if let Err(e) = res {
                        tracing::warn!(error = %e, "namespace watch failed; retrying");
                    }
                }) => {}
                () = stop => {}
            }
        });
        let (namespaces, health) = (namespaces.clone(), health.clone());
        tokio::spawn(async move {
            if namespaces.wait_until_ready().await.is_ok() {
                health.namespaces_synced.store(true, Ordering::Release);
                tracing::info!("namespace cache synced");
            }
        });
    }

    // Certificates.
    let webhook_configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.defaults.operator_namespace);
    tokio::spawn(maintain_certificates(config.clone(), secrets, webhook_configs, health.clone(), stopped()));

    // Webhook.
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(webhook::publish_events(events_rx, recorder));
    let state = Arc::new(webhook::WebhookState {
        profilings,
        namespaces,
        defaults: config.defaults.clone(),
        metrics: health.metrics.clone(),
        events: events_tx,
    });
    let tls_config = tls::server_config(health.resolver.clone())?;
    let webhook_listener = tokio::net::TcpListener::bind(config.webhook_listen).await?;
    tracing::info!(addr = %config.webhook_listen, "webhook listening (HTTPS)");
    let webhook = tokio::spawn(webhook::serve_tls(webhook_listener, tls_config, webhook::router(state), stopped()));

    // Probes and metrics.
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen).await?;
    tracing::info!(addr = %config.metrics_listen, "metrics and probes listening");
    let probes = axum::serve(metrics_listener, health_router(health)).with_graceful_shutdown(stopped());

    let (probes, webhook, controller, elector) = tokio::join!(probes, webhook, controller_task, elector_task);
    probes?;
    webhook.map_err(|e| Error::Config(format!("webhook task: {e}")))??;
    controller.map_err(|e| Error::Config(format!("controller task: {e}")))?;
    elector.map_err(|e| Error::Config(format!("leader election task: {e}")))?;
    Ok(())
}

/// A holder identity when no `--pod-name` is given (local runs): unique per process.
fn fallback_identity() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "spanprof-operator".into());
    format!("{host}-{}", std::process::id())
}

fn health_router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(health)
}

async fn readyz(State(h): State<Arc<Health>>) -> Response {
    let not_ready = if !h.resolver.is_ready() {
        "no serving certificate yet"
    } else if !h.cache_synced.load(Ordering::Acquire) {
        "SpanProfiling cache not synced yet"
    } else if !h.namespaces_synced.load(Ordering::Acquire) {
        // Without namespace labels the webhook could inject pods that Pod Security then rejects.
        "namespace cache not synced yet"
    } else {
        return "ready".into_response();
    };
    (StatusCode::SERVICE_UNAVAILABLE, not_ready).into_response()
}

async fn render_metrics(State(h): State<Arc<Health>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], h.metrics.render())
        .into_response()
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Keeps a current serving certificate in the resolver and its CA in the webhook registration:
/// checks every `cert_check_interval`, retries failures after 10 s.
async fn maintain_certificates(
    config: Config,
    secrets: Api<Secret>,
    webhook_configs: Api<MutatingWebhookConfiguration>,
    health: Arc<Health>,
    stopped: impl std::future::Future<Output = ()>,
) {
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let delay = match refresh_certificate(&config, &secrets, &webhook_configs, &health).await {
            Ok(()) => config.cert_check_interval,
            Err(e) => {
                tracing::error!(error = %e, "webhook certificate refresh failed");
                Duration::from_secs(10)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut stopped => return,
        }
    }
}

async fn refresh_certificate(
    config: &Config,
    secrets: &Api<Secret>,
    webhook_configs: &Api<MutatingWebhookConfiguration>,
    health: &Health,
) -> Result<()> {
    let ca_pem = match &config.tls {
        TlsSource::Managed { secret_name, dns_names, validity } => {
            let store = SecretStore {
                api: secrets.clone(),
                name: secret_name.clone(),
                namespace: config.defaults.operator_namespace.clone(),
                dns_names: dns_names.clone(),
                validity: *validity,
            };
            let ensured = store.ensure(unix_now()).await?;
            if let Ensured::Generated { why, .. } = &ensured {
                health.metrics.certificate_rotations.inc();
                tracing::info!(secret = secret_name, why, "generated a new webhook certificate");
            }
            let bundle = ensured.bundle();
            health.resolver.set(bundle.certified_key()?);
            health.metrics.certificate_expiry.set(bundle.not_after);
            Some(bundle.ca_bundle())
        }
        TlsSource::Files { cert_file, key_file, ca_file } => {
            health.resolver.set(tls::load_files(cert_file, key_file)?);
            match ca_file {
                Some(f) => Some(std::fs::read_to_string(f)?),
                None => None,
            }
        }
    };
    if let Some(ca) = ca_pem {
        tls::apply_ca_bundle(webhook_configs, &config.webhook_config_name, &ca).await?;
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
