//! Ingest: turns Pyroscope's protocols (legacy `/ingest` and the Connect push API) into
//! [`SeriesBatch`](crate::model::SeriesBatch)es for the store. Everything here is pure: bytes and
//! query strings in, batches or a [`Rejected`](crate::error::Error::Rejected) error out.

pub mod decode;
pub mod legacy;
pub mod pprof;
pub mod push;

/// Limits applied to every request body.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest body accepted on the wire, bytes.
    pub max_body_bytes: usize,
    /// Largest size any payload may decompress to, bytes (gzip bomb guard).
    pub max_decompressed_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 16 << 20, max_decompressed_bytes: 64 << 20 }
    }
}
