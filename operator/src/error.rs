//! The operator crate's one error type.

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A certificate or key could not be generated or read.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The TLS Secret holds something we cannot use.
    #[error("TLS secret {name}: {message}")]
    TlsSecret { name: String, message: String },
    /// Other replicas kept changing the TLS Secret while we tried to update it.
    #[error("TLS secret {0}: still conflicting after retries")]
    Conflict(String),
    /// Serialising an object failed (a bug, reported instead of panicking).
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// A file could not be read or a socket not bound.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind { addr: std::net::SocketAddr, what: String, source: std::io::Error },
    /// The MutatingWebhookConfiguration (or our entry in it) that the operator fills in is missing.
    #[error(
        "MutatingWebhookConfiguration {name}: {message}; the chart installs it (helm install/upgrade), the operator \
         only fills in its caBundle"
    )]
    WebhookConfiguration { name: String, message: String },
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
