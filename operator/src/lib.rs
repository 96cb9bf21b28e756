//! spanprof-operator: the `SpanProfiling` CRD, the webhook that injects the sampler, the status
//! controller and the webhook's TLS.
#![forbid(unsafe_code)]

pub mod cache;
pub mod controller;
pub mod crd;
pub mod error;
pub mod inject;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod pod_security;
pub mod rbac;
pub mod serving;
pub mod tls;
pub mod validation;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;

pub use error::{Error, Result};

use cache::Synced;

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
    /// The Service in front of the webhook, in the operator's namespace.
    pub webhook_service: String,
    /// Injection fallbacks and the operator's namespace.
    pub defaults: Defaults,
    /// This replica's name, as the reporting instance of Events.
    pub pod_name: Option<String>,
}

/// Readiness of this replica: it has a serving certificate and has listed SpanProfilings and
/// namespaces, so its answers to admission requests are right.
struct Health {
    metrics: Arc<Metrics>,
    resolver: Arc<CertResolver>,
    profilings_synced: Synced,
    namespaces_synced: Synced,
}

/// Runs the operator against the API server `client` talks to, until SIGINT/SIGTERM (or
/// `shutdown`); then stops the controller, lets in-flight admission requests finish and returns.
pub async fn run(config: Config, client: Client, shutdown: Option<tokio::sync::oneshot::Receiver<()>>) -> Result<()> {
    // Bind first: a taken port is a configuration error to report at once, naming the address.
    let webhook_listener = bind(config.webhook_listen, "webhook (--webhook-listen)").await?;
    let metrics_listener = bind(config.metrics_listen, "metrics and probes (--metrics-listen)").await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        match shutdown {
            Some(rx) => {
                let _ = rx.await;
            }
            None => spanprof_cli::shutdown_signal().await,
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

    let metrics = Arc::new(Metrics::default());
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
        let (mut rx, metrics) = (leader_rx.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                metrics.leader.set(i64::from(*rx.borrow_and_update()));
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    // Whether the API server can call the webhook: part of every SpanProfiling's status.
    let (serving_tx, serving_rx) = watch::channel(serving::Serving::Unknown);
    let target = serving::Target {
        configuration: config.webhook_config_name.clone(),
        service: config.webhook_service.clone(),
        namespace: config.defaults.operator_namespace.clone(),
    };
    {
        let (watch, stop) = (serving::watch(client.clone(), target, serving_tx), stopped());
        tokio::spawn(async move {
            tokio::select! {
                () = watch => {}
                () = stop => {}
            }
        });
    }

    // Controller, and the SpanProfiling cache the webhook shares with it.
    let (controller, caches, pod_events) = controller::controller(client.clone());
    let ctx = Arc::new(
        controller::Context::new(
            client.clone(),
            caches.pods,
            recorder.clone(),
            metrics.clone(),
            config.defaults.clone(),
            serving_rx,
        )
        .with_pods_synced(caches.pods_synced)
        .with_leadership(leader::Leadership::new(leader_rx)),
    );
    let controller_task = tokio::spawn(controller::run(controller, pod_events, ctx, stopped()));
    log_when_synced(caches.profilings_synced.clone(), "SpanProfiling cache synced");

    // Namespaces, for the Pod Security level each enforces.
    let (namespaces, namespaces_synced, namespace_events) = webhook::namespace_cache(client.clone());
    {
        let (drive, stop) = (cache::drive(namespace_events, "namespaces"), stopped());
        tokio::spawn(async move {
            tokio::select! {
                () = drive => {}
                () = stop => {}
            }
        });
    }
    log_when_synced(namespaces_synced.clone(), "namespace cache synced");

    let health = Arc::new(Health {
        metrics: metrics.clone(),
        resolver: Arc::new(CertResolver::default()),
        profilings_synced: caches.profilings_synced.clone(),
        namespaces_synced,
    });

    // Certificates.
    let webhook_configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.defaults.operator_namespace);
    tokio::spawn(maintain_certificates(config.clone(), secrets, webhook_configs, health.clone(), stopped()));

    // Webhook.
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(webhook::publish_events(events_rx, recorder, client.clone()));
    let state = Arc::new(webhook::WebhookState {
        profilings: caches.profilings,
        profilings_synced: caches.profilings_synced,
        namespaces,
        defaults: config.defaults.clone(),
        metrics: metrics.clone(),
        events: events_tx,
    });
    let tls_config = tls::server_config(health.resolver.clone())?;
    tracing::info!(addr = %config.webhook_listen, "webhook listening (HTTPS)");
    // The API server gives a webhook call 10 s at most (its default `timeoutSeconds`): no request
    // in flight at shutdown needs longer.
    let limits = spanprof_cli::serve::Limits { drain: Duration::from_secs(10), ..Default::default() };
    let webhook = tokio::spawn(spanprof_cli::serve::serve_tls(
        webhook_listener,
        tls_config,
        webhook::router(state),
        limits,
        stopped(),
    ));

    // Probes and metrics.
    tracing::info!(addr = %config.metrics_listen, "metrics and probes listening");
    let probes = axum::serve(metrics_listener, spanprof_cli::admin_router(health)).with_graceful_shutdown(stopped());

    let (probes, webhook, controller, elector) = tokio::join!(probes, webhook, controller_task, elector_task);
    probes?;
    webhook.map_err(|e| Error::Config(format!("webhook task: {e}")))??;
    controller.map_err(|e| Error::Config(format!("controller task: {e}")))?;
    elector.map_err(|e| Error::Config(format!("leader election task: {e}")))?;
    Ok(())
}

/// Binds `addr`, or says which address could not be bound and what it was for.
async fn bind(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, what: what.to_owned(), source })
}

fn log_when_synced(synced: Synced, message: &'static str) {
    tokio::spawn(async move {
        synced.wait().await;
        if synced.is_synced() {
            tracing::info!("{message}");
        }
    });
}

/// A holder identity when no `--pod-name` is given (local runs): unique per process.
fn fallback_identity() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "spanprof-operator".into());
    format!("{host}-{}", std::process::id())
}

/// `/healthz` (the process serves), `/readyz` (it can answer admission requests as configured),
/// `/metrics`.
impl spanprof_cli::Admin for Health {
    fn live(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    fn ready(&self) -> std::result::Result<(), String> {
        if !self.resolver.is_ready() {
            Err("no serving certificate yet".into())
        } else if !self.profilings_synced.is_synced() {
            Err("SpanProfiling cache not synced yet".into())
        } else if !self.namespaces_synced.is_synced() {
            // Without namespace labels the webhook could inject pods that Pod Security then rejects.
            Err("namespace cache not synced yet".into())
        } else {
            Ok(())
        }
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
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
