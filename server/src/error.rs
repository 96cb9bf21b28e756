//! The server crate's one error type.

use std::fmt;

/// Why a request was rejected, as a short stable tag (the `reason` label of
/// `spanprof_server_rejected_requests_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    BadName,
    BadLabel,
    BadTimestamp,
    UnknownFormat,
    InvalidPprof,
    InvalidProtobuf,
    InvalidJson,
    InvalidGzip,
    InvalidFolded,
    InvalidMultipart,
    TooLarge,
    /// The body did not arrive in time.
    SlowBody,
    UnsupportedMediaType,
    BadQuery,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::BadName => "bad_name",
            Reject::BadLabel => "bad_label",
            Reject::BadTimestamp => "bad_timestamp",
            Reject::UnknownFormat => "unknown_format",
            Reject::InvalidPprof => "invalid_pprof",
            Reject::InvalidProtobuf => "invalid_protobuf",
            Reject::InvalidJson => "invalid_json",
            Reject::InvalidGzip => "invalid_gzip",
            Reject::InvalidFolded => "invalid_folded",
            Reject::InvalidMultipart => "invalid_multipart",
            Reject::TooLarge => "too_large",
            Reject::SlowBody => "slow_body",
            Reject::UnsupportedMediaType => "unsupported_media_type",
            Reject::BadQuery => "bad_query",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something we cannot accept; nothing was stored.
    #[error("{message}")]
    Rejected { reason: Reject, message: String },
    /// The embedded database (fjall) failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A stored record could not be decoded (corruption or a format from a newer version).
    #[error("corrupt record: {0}")]
    Corrupt(String),

    /// The object store of the shared blocks failed (unreachable, refused, …).
    #[error("object store: {0}")]
    Bucket(String),

    /// A setting cannot work (a bad `--object-store` URL, …).
    #[error("configuration: {0}")]
    Config(String),
    /// The data directory's filesystem has less free space than the store keeps in reserve
    /// (`--min-free-disk-bytes`): writes are refused before the disk is really full, so the
    /// engine never fails half-way and writes resume by themselves when space returns.
    #[error("only {free} bytes are free on the data directory's filesystem, under the {reserve}-byte reserve")]
    DiskFull { free: u64, reserve: u64 },
    /// The store is shutting down or its writer is gone.
    #[error("the store is not accepting writes (shutting down)")]
    Unavailable,
    /// Too many inserts are waiting for the disk; the client should retry.
    #[error("the store is overloaded; retry later")]
    Overloaded,
    /// Too many heavy queries are running and waiting (`--max-concurrent-queries`); retry later.
    #[error("too many queries are running; retry later")]
    Busy,
    /// The listen address could not be bound (taken by another process, or not ours).
    #[error("cannot listen on {addr} (--listen): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A storage error caused by a full disk (directly, or fjall refusing writes after one).
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::DiskFull { .. } => true,
            Error::Storage(m) => m.contains("No space left") || m.contains("StorageFull") || m.contains("Poisoned"),
            _ => false,
        }
    }

    /// A rejection of client input.
    pub fn rejected(reason: Reject, message: impl Into<String>) -> Self {
        Error::Rejected { reason, message: message.into() }
    }
}

impl From<fjall::Error> for Error {
    fn from(e: fjall::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
