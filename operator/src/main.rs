//! `spanprof-operator`: parses flags, builds a [`Config`], runs the operator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
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
    /// Secret holding the generated CA and serving certificate, shared by all replicas.
    #[arg(long, env = "SPANPROF_TLS_SECRET", default_value = "spanprof-operator-tls")]
    tls_secret: String,
    /// Validity of generated certificates (rotated when a third is left), e.g. 365d, 720h.
    #[arg(long, env = "SPANPROF_CERT_VALIDITY", default_value = "365d", value_parser = parse_duration)]
    cert_validity: Duration,
    /// How often the certificate is checked for rotation and the caBundle re-applied.
    #[arg(long, env = "SPANPROF_CERT_CHECK_INTERVAL", default_value = "10m", value_parser = parse_duration)]
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
    /// This replica's pod name (downward API), reported on Events.
    #[arg(long, env = "SPANPROF_POD_NAME")]
    pod_name: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SPANPROF_LOG_JSON")]
    log_json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or("missing unit (s, m, h or d)")?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration like 365d, 12h, 10m or 30s"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} (s, m, h or d)")),
    };
    if n == 0 {
        return Err("must be more than 0".into());
    }
    Ok(Duration::from_secs(n * secs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        // Colour codes only for a terminal: `kubectl logs` shows them as raw escapes.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).init();
    }
    let tls = match (args.tls_cert_file, args.tls_key_file) {
        (Some(cert_file), Some(key_file)) => TlsSource::Files { cert_file, key_file, ca_file: args.tls_ca_file },
        _ => TlsSource::Managed {
            secret_name: args.tls_secret,
            dns_names: service_dns_names(&args.webhook_service, &args.namespace),
            validity: args.cert_validity,
        },
    };
    let config = Config {
        webhook_listen: args.webhook_listen,
        metrics_listen: args.metrics_listen,
        tls,
        cert_check_interval: args.cert_check_interval,
        webhook_config_name: args.webhook_config_name,
        webhook_service: args.webhook_service.clone(),
        defaults: Defaults {
            server_url: args.default_server_url,
            sidecar_image: args.sidecar_image,
            operator_namespace: args.namespace,
            pod_security_default: args.pod_security_default_level,
        },
        pod_name: args.pod_name,
    };
    let client = kube::Client::try_default().await?;
    spanprof_operator::run(config, client, None).await?;
    Ok(())
}
