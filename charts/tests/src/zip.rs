//! Just enough of the ZIP format to take one file out of an archive (stored or deflated entries,
//! no ZIP64), so the tests need no `unzip` tool.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

const EOCD: u32 = 0x0605_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The contents of the entry `name` of the archive at `path`, CRC-checked.
pub fn extract(path: &Path, name: &str) -> Result<Vec<u8>> {
    let err = |message: String| Error::Zip { path: path.to_owned(), message };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let bad = || err("not a ZIP archive (or a truncated one)".into());
    // The end-of-central-directory record is within the last 64 KiB + 22 bytes.
    let floor = bytes.len().saturating_sub(22 + 0xffff);
    let eocd =
        (floor..bytes.len().saturating_sub(21)).rev().find(|&i| u32_at(&bytes, i) == Some(EOCD)).ok_or_else(bad)?;
    let entries = u16_at(&bytes, eocd + 10).ok_or_else(bad)?;
    let mut at = u32_at(&bytes, eocd + 16).ok_or_else(bad)? as usize;
    for _ in 0..entries {
        if u32_at(&bytes, at) != Some(CENTRAL) {
            return Err(bad());
        }
        let method = u16_at(&bytes, at + 10).ok_or_else(bad)?;
        let crc = u32_at(&bytes, at + 16).ok_or_else(bad)?;
        let compressed = u32_at(&bytes, at + 20).ok_or_else(bad)? as usize;
        let size = u32_at(&bytes, at + 24).ok_or_else(bad)? as usize;
        let name_len = u16_at(&bytes, at + 28).ok_or_else(bad)? as usize;
        let extra_len = u16_at(&bytes, at + 30).ok_or_else(bad)? as usize;
        let comment_len = u16_at(&bytes, at + 32).ok_or_else(bad)? as usize;
        let local = u32_at(&bytes, at + 42).ok_or_else(bad)? as usize;
        let entry_name = bytes.get(at + 46..at + 46 + name_len).ok_or_else(bad)?;
        at += 46 + name_len + extra_len + comment_len;
        if entry_name != name.as_bytes() {
            continue;
        }
        if u32_at(&bytes, local) != Some(LOCAL) {
            return Err(bad());
        }
        let start = local
            + 30
            + u16_at(&bytes, local + 26).ok_or_else(bad)? as usize
            + u16_at(&bytes, local + 28).ok_or_else(bad)? as usize;
        let data = bytes.get(start..start + compressed).ok_or_else(bad)?;
        let out = match method {
            0 => data.to_vec(),
            8 => {
                let mut out = Vec::with_capacity(size);
                flate2::read::DeflateDecoder::new(data)
                    .read_to_end(&mut out)
                    .map_err(|e| err(format!("{name}: {e}")))?;
                out
            }
            m => return Err(err(format!("{name}: unsupported compression method {m}"))),
        };
        let mut hasher = flate2::Crc::new();
        hasher.update(&out);
        if out.len() != size || hasher.sum() != crc {
            return Err(err(format!("{name}: size or CRC mismatch")));
        }
        return Ok(out);
    }
    Err(err(format!("no entry {name:?}")))
}
