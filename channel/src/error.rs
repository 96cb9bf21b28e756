//! The channel crate's one error type.

use std::path::PathBuf;

/// Why a channel file could not be created or opened. Publishing transitions never fails: what
/// cannot be written is dropped and counted in the file's header.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the magic word (not a channel file, or not yet ready).
    #[error("{0}: not a span-context file (or not initialised yet)")]
    BadMagic(PathBuf),
    #[error("{path}: span-context layout version {found}, this build reads version {expected}")]
    UnsupportedVersion { path: PathBuf, found: u64, expected: u64 },
    /// Sizes out of bounds, or a header that does not describe the file.
    #[error("invalid span-context layout: {0}")]
    Layout(String),
    /// The file was written by an earlier process with the same PID (another start time).
    #[error("{0}: stale span-context file (another process with this PID wrote it)")]
    Stale(PathBuf),
    /// The file is not owned by the process's user.
    #[error("{path}: owned by uid {file_uid}, not by the process's uid {process_uid}: not trusted")]
    Untrusted { path: PathBuf, file_uid: u32, process_uid: u32 },
    /// A malformed `SPANPROF_SERVICE_NAMES` (see [`crate::pod`]).
    #[error("invalid SPANPROF_SERVICE_NAMES: {0}")]
    ServiceNames(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
