//! The store's disk: the free-space reserve below which writes are refused, and the space the
//! store's files really take.
//!
//! Why a reserve: an LSM engine that meets ENOSPC half-way through a journal write refuses every
//! later write (fjall "poisons" itself) until it is reopened, and compaction needs free space to
//! give any back. Refusing inserts while the filesystem still has some room keeps the engine
//! healthy, lets retention's deletes and compactions run, and makes writes resume by themselves
//! when space returns — as Elasticsearch's flood-stage watermark does.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Largest reserve chosen automatically.
const AUTO_RESERVE_MAX: u64 = 1 << 30;
/// Share of the filesystem reserved automatically (1 / 20 = 5 %).
const AUTO_RESERVE_DIVISOR: u64 = 20;

/// Free space the store keeps on its filesystem.
#[derive(Clone, Debug)]
pub(crate) struct DiskReserve {
    dir: PathBuf,
    bytes: u64,
}

impl DiskReserve {
    /// The reserve for the store in `dir`: `configured` bytes, or, when `None`, 5 % of the
    /// filesystem and at most 1 GiB. A filesystem that cannot be asked keeps no reserve.
    pub fn new(dir: &Path, configured: Option<u64>) -> Self {
        let bytes = configured
            .unwrap_or_else(|| space(dir).map_or(0, |s| (s.total / AUTO_RESERVE_DIVISOR).min(AUTO_RESERVE_MAX)));
        tracing::info!(
            reserve_bytes = bytes,
            "inserts pause while less is free on the data directory's filesystem (--min-free-disk-bytes)"
        );
        DiskReserve { dir: dir.to_owned(), bytes }
    }

    /// `Err(DiskFull)` when less than the reserve is free. An error asking the filesystem lets
    /// the write go ahead: the engine reports a real failure itself.
    pub fn check(&self) -> Result<()> {
        match space(&self.dir) {
            Some(s) if s.available < self.bytes => Err(Error::DiskFull { free: s.available, reserve: self.bytes }),
            _ => Ok(()),
        }
    }
}

/// A filesystem's size and the bytes an unprivileged writer may still use.
#[derive(Clone, Copy, Debug)]
struct Space {
    total: u64,
    available: u64,
}

fn space(dir: &Path) -> Option<Space> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(Space { total: s.f_blocks.saturating_mul(s.f_frsize), available: s.f_bavail.saturating_mul(s.f_frsize) })
}

/// Bytes the files under `path` occupy on disk (allocated blocks, not apparent lengths: engines
/// preallocate and punch holes, so lengths can add up to more than the filesystem holds).
pub(crate) fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.blocks().saturating_mul(512);
    }
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries.flatten().map(|e| allocated_bytes(&e.path())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_free_space_refuses_and_says_how_much_is_free() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DiskReserve::new(dir.path(), Some(0)).check().is_ok());
        match DiskReserve::new(dir.path(), Some(u64::MAX)).check() {
            Err(Error::DiskFull { free, reserve }) => {
                assert_eq!(reserve, u64::MAX);
                assert!(free < u64::MAX);
            }
            other => panic!("expected DiskFull, got {other:?}"),
        }
    }

    #[test]
    fn the_automatic_reserve_is_a_share_of_the_filesystem_capped() {
        let dir = tempfile::tempdir().unwrap();
        let total = space(dir.path()).unwrap().total;
        let auto = DiskReserve::new(dir.path(), None).bytes;
        assert_eq!(auto, (total / 20).min(1 << 30));
    }

    #[test]
    fn allocated_bytes_count_blocks_not_lengths() {
        let dir = tempfile::tempdir().unwrap();
        // A sparse file: 64 MiB long, nothing written.
        let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        std::fs::write(dir.path().join("data"), vec![1u8; 8192]).unwrap();
        let bytes = allocated_bytes(dir.path());
        assert!((8192..1 << 20).contains(&bytes), "{bytes}");
    }
}
