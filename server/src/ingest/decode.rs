//! Bounded decompression, so a small gzip bomb cannot exhaust memory.

use std::io::Read;

use crate::error::{Error, Reject, Result};

/// Whether `data` starts with the gzip magic bytes.
pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

/// Decompresses gzip `data`, failing once the output would exceed `limit` bytes.
pub fn gunzip_limited(data: &[u8], limit: usize, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    let mut reader = flate2::read::MultiGzDecoder::new(data).take(limit as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| Error::rejected(Reject::InvalidGzip, format!("{what}: invalid gzip data: {e}")))?;
    if out.len() > limit {
        return Err(Error::rejected(
            Reject::TooLarge,
            format!("{what}: decompresses to more than the limit of {limit} bytes"),
        ));
    }
    Ok(out)
}

/// Returns `data` decompressed when it is gzip, else as is.
pub fn maybe_gunzip(data: &[u8], limit: usize, what: &str) -> Result<Vec<u8>> {
    if is_gzip(data) { gunzip_limited(data, limit, what) } else { Ok(data.to_vec()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn round_trips_and_stops_bombs() {
        let z = gzip(b"hello");
        assert_eq!(maybe_gunzip(&z, 100, "x").unwrap(), b"hello");
        assert_eq!(maybe_gunzip(b"plain", 100, "x").unwrap(), b"plain");
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20_000);
        let err = gunzip_limited(&bomb, 1 << 20, "body").unwrap_err();
        assert!(matches!(err, Error::Rejected { reason: Reject::TooLarge, .. }), "{err}");
        let err = gunzip_limited(&z[..z.len() - 4], 100, "body").unwrap_err();
        assert!(matches!(err, Error::Rejected { reason: Reject::InvalidGzip, .. }), "{err}");
    }
}
