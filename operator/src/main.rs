//! `spanprof-operator`: parses flags, builds a [`Config`], runs the operator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use spanprof_cli::{LogArgs, LogTo, parse_positive_duration};
use spanprof_operator::Config;
use spanprof_operator::inject::Defaults;
use spanprof_operator::pod_security::Level;
use spanprof_operator::tls::{TlsSource, service_dns_names};

/// spanprof operator: SpanProfiling status, the webhook that injects the sampler, and its TLS.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// HTTPS address of the admission webhook.
    #[arg(long, env = "SPANPROF_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    webhook_listen: SocketAddr,
    /// Plain HTTP address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SPANPROF_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// The operator's namespace: holds the TLS Secret; its pods are never injected.
    #[arg(long, env = "SPANPROF_NAMESPACE", default_value = "spanprof")]
    namespace: String,
    /// The Service in front of the webhook; the certificate is issued for its DNS names.
    #[arg(long, env = "SPANPROF_WEBHOOK_SERVICE", default_value = "spanprof-operator")]
    webhook_service: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator fills in.
    #[arg(long, env = "SPANPROF_WEBHOOK_CONFIG_NAME", default_value = "spanprof-operator")]
    webhook_config_name: String,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    defaults: DefaultArgs,
    /// This replica's pod name (the downward API's `metadata.name`), reported on Events.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

/// The webhook's serving certificate.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Webhook TLS")]
struct TlsArgs {
    /// Secret holding the generated CA and serving certificate, shared by all replicas.
    #[arg(long, env = "SPANPROF_TLS_SECRET", default_value = "spanprof-operator-tls")]
    tls_secret: String,
    /// Validity of generated certificates (rotated when a third is left), e.g. 365d, 720h.
    #[arg(long, env = "SPANPROF_CERT_VALIDITY", default_value = "365d", value_parser = parse_positive_duration)]
    cert_validity: Duration,
    /// How often the certificate is checked for rotation and the caBundle re-applied.
    #[arg(long, env = "SPANPROF_CERT_CHECK_INTERVAL", default_value = "10m", value_parser = parse_positive_duration)]
    cert_check_interval: Duration,
    /// Serve this PEM certificate (chain) instead of generating one (e.g. from cert-manager).
    #[arg(long, env = "SPANPROF_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file.
    #[arg(long, env = "SPANPROF_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// With --tls-cert-file: a CA bundle to put into the webhook's caBundle (else left to the user).
    #[arg(long, env = "SPANPROF_TLS_CA_FILE", requires = "tls_cert_file")]
    tls_ca_file: Option<PathBuf>,
}

/// What a SpanProfiling that says nothing gets.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Defaults")]
struct DefaultArgs {
    /// Server URL for SpanProfilings that set none.
    #[arg(long, env = "SPANPROF_DEFAULT_SERVER_URL", default_value = "http://spanprof-server.spanprof.svc:4040")]
    default_server_url: String,
    /// Pod Security level of namespaces without the pod-security.kubernetes.io/enforce label:
    /// privileged (the Kubernetes default), or what the cluster's AdmissionConfiguration sets.
    #[arg(long, env = "SPANPROF_POD_SECURITY_DEFAULT_LEVEL", default_value = "privileged")]
    pod_security_default_level: Level,
    /// Sampler image for SpanProfilings that set none.
    #[arg(long, env = "SPANPROF_SIDECAR_IMAGE", default_value = concat!("ghcr.io/spanprof/spanprof-sidecar:", env!("CARGO_PKG_VERSION")))]
    sidecar_image: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Destructured whole: a flag added to Args and not used here fails to compile.
    let Args {
        webhook_listen,
        metrics_listen,
        namespace,
        webhook_service,
        webhook_config_name,
        tls: TlsArgs { tls_secret, cert_validity, cert_check_interval, tls_cert_file, tls_key_file, tls_ca_file },
        defaults: DefaultArgs { default_server_url, pod_security_default_level, sidecar_image },
        pod_name,
        log,
    } = Args::parse();
    log.init(LogTo::Stdout);
    let tls = match (tls_cert_file, tls_key_file) {
        (Some(cert_file), Some(key_file)) => TlsSource::Files { cert_file, key_file, ca_file: tls_ca_file },
        _ => TlsSource::Managed {
            secret_name: tls_secret,
            dns_names: service_dns_names(&webhook_service, &namespace),
            validity: cert_validity,
        },
    };
    let config = Config {
        webhook_listen,
        metrics_listen,
        tls,
        cert_check_interval,
        webhook_config_name,
        webhook_service,
        defaults: Defaults {
            server_url: default_server_url,
            sidecar_image,
            operator_namespace: namespace,
            pod_security_default: pod_security_default_level,
        },
        pod_name,
    };
    let client = kube::Client::try_default().await?;
    spanprof_operator::run(config, client, None).await?;
    Ok(())
}
