//! The sidecar's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// perf_event_open refused: the message says what to grant.
    #[error("perf events are not permitted: {0}")]
    PerfNotPermitted(String),
    /// No file descriptor left for another event: a sampled thread takes one per CPU.
    #[error(
        "out of file descriptors ({source}): every sampled thread takes one per CPU ({cpus} here) \
         and the open-file limit is {limit}; raise the sidecar container's nofile limit"
    )]
    FileDescriptors { cpus: usize, limit: String, source: std::io::Error },
    /// The thread exited between being listed and its events being opened.
    #[error("thread {tid} exited before it could be sampled")]
    ThreadGone { tid: u32 },
    #[error("perf_event_open for {what}: {source}")]
    Perf { what: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a usable ELF file: {message}")]
    Elf { path: PathBuf, message: String },
    #[error("bad setting: {0}")]
    Config(String),
    #[error("push to {url} failed: {message}")]
    Push { url: String, message: String },
    #[error("server rejected the upload ({status}): {body}")]
    Rejected { status: u16, body: String },
    #[error("serving metrics: {0}")]
    Serve(std::io::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
