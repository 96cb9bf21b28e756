//! The span index: each span profile's samples, period and last-seen time, packed into chunks
//! per (span-rollup series, minute of last seen), so a span name's hour of spans is a few
//! hundred rows to read rather than one row per span (reading 100,000 one-row entries out of
//! the engine's memtable took ~70 ms; the chunks take a few).
//!
//! A chunk holds at most [`CHUNK_ENTRIES`] entries; a profile's record names its chunk
//! (`SpanRecord::stat_chunk`), so a merge updates its entry in place, and a move to another
//! minute or a deletion takes it out of exactly that chunk.

use crate::error::{Error, Result};

/// Most entries of one chunk: a merge that moves a span rewrites one chunk of ~500 bytes (256
/// entries cut ingest of such merges by half: 4 KiB rewritten per span), and an hour of 100,000
/// spans is ~3,000 rows to read.
pub const CHUNK_ENTRIES: usize = 32;

/// One span profile in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The profile ID's key ([`super::shared::id_key`]).
    pub id: Vec<u8>,
    pub samples: u64,
    pub period_ns: u64,
    pub last_seen_ms: u64,
}

/// (series, minute bucket start, chunk number): big-endian, so one series' chunks sort by time.
pub fn chunk_key(series: u64, minute: u64, chunk: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..8].copy_from_slice(&series.to_be_bytes());
    k[8..16].copy_from_slice(&minute.to_be_bytes());
    k[16..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// The (series, minute, chunk) of a [`chunk_key`].
pub fn decode_chunk_key(key: &[u8]) -> Result<(u64, u64, u32)> {
    let k: &[u8; 20] = key.try_into().map_err(|_| Error::Corrupt("span index key".into()))?;
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&k[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let mut c = [0u8; 4];
    c.copy_from_slice(&k[16..]);
    Ok((u64_at(0), u64_at(8), u32::from_be_bytes(c)))
}

/// A chunk's value: per entry the ID key's length and bytes, samples, period and the last-seen
/// time's offset into the chunk's minute, as varints.
pub fn encode_chunk(minute: u64, entries: &[Entry]) -> Vec<u8> {
    use prost::encoding::encode_varint;
    let mut out = Vec::with_capacity(entries.len() * 16);
    for e in entries {
        encode_varint(e.id.len() as u64, &mut out);
        out.extend_from_slice(&e.id);
        encode_varint(e.samples, &mut out);
        encode_varint(e.period_ns, &mut out);
        encode_varint(e.last_seen_ms.saturating_sub(minute), &mut out);
    }
    out
}

/// Decodes a chunk of `minute`, calling `visit` per entry (ID key, samples, period, last seen)
/// without copying the IDs.
pub fn visit_chunk(
    minute: u64,
    mut bytes: &[u8],
    mut visit: impl FnMut(&[u8], u64, u64, u64) -> Result<()>,
) -> Result<()> {
    use prost::encoding::decode_varint;
    let corrupt = |_| Error::Corrupt("span index chunk".into());
    while !bytes.is_empty() {
        let len = decode_varint(&mut bytes).map_err(corrupt)? as usize;
        if len > bytes.len() {
            return Err(Error::Corrupt("span index chunk: ID past the end".into()));
        }
        let (id, rest) = bytes.split_at(len);
        bytes = rest;
        let samples = decode_varint(&mut bytes).map_err(corrupt)?;
        let period = decode_varint(&mut bytes).map_err(corrupt)?;
        let offset = decode_varint(&mut bytes).map_err(corrupt)?;
        visit(id, samples, period, minute.saturating_add(offset))?;
    }
    Ok(())
}

/// A chunk's entries.
pub fn decode_chunk(minute: u64, bytes: &[u8]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    visit_chunk(minute, bytes, |id, samples, period_ns, last_seen_ms| {
        out.push(Entry { id: id.to_vec(), samples, period_ns, last_seen_ms });
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip() {
        let minute = 1_700_000_040_000;
        let entries = vec![
            Entry {
                id: vec![1, 2, 3, 4, 5, 6, 7, 8],
                samples: 3,
                period_ns: 10_000_000,
                last_seen_ms: minute + 59_999,
            },
            Entry { id: b"order #42\xff".to_vec(), samples: 0, period_ns: 1, last_seen_ms: minute },
        ];
        assert_eq!(decode_chunk(minute, &encode_chunk(minute, &entries)).unwrap(), entries);
        assert_eq!(decode_chunk_key(&chunk_key(7, minute, 3)).unwrap(), (7, minute, 3));
        assert!(chunk_key(7, minute, u32::MAX) < chunk_key(7, minute + 60_000, 0), "a series' chunks sort by minute");
    }

    #[test]
    fn a_truncated_chunk_is_an_error_not_a_panic() {
        let minute = 60_000;
        let bytes = encode_chunk(
            minute,
            &[Entry { id: vec![9; 8], samples: 300, period_ns: 10_000_000, last_seen_ms: minute + 5 }],
        );
        for cut in 0..bytes.len() {
            let _ = decode_chunk(minute, &bytes[..cut]);
        }
        assert!(decode_chunk(minute, &[200]).is_err());
    }
}
