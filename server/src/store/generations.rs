//! The local data of a server with `--object-store`, in generations: one **head** takes every
//! insert; at a cut it is **sealed** (a new head takes over) and becomes one block. Each
//! generation is an embedded store in its own directory, named by the block it becomes, so once
//! that block is in the bucket the directory goes whole: cutting a block reads the data once and
//! deletes nothing row by row (ingest wrote those rows; moving or deleting them one by one cost
//! more CPU than the ingest itself).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::ProfileStore;
use super::embedded::{DIR_NAME, EmbeddedOptions, EmbeddedStore};
use crate::error::{Error, Result};

/// The directory under the data directory that holds one subdirectory per generation.
pub const GENERATIONS_DIR: &str = "generations";

/// One generation: an embedded store that becomes block `block_id`.
pub struct Generation {
    pub block_id: String,
    pub store: EmbeddedStore,
    created: Instant,
    /// Declared after `store`, so it is dropped after the store is.
    dir: DirOnDrop,
}

/// A generation's directory, deleted when the generation is dropped if marked so: the last
/// query reading a retired generation deletes it, and no one waits for that.
struct DirOnDrop {
    path: PathBuf,
    delete: AtomicBool,
}

impl Drop for DirOnDrop {
    fn drop(&mut self) {
        if !self.delete.load(Ordering::Acquire) {
            return;
        }
        // Renamed first (atomic), so a crash halfway through the delete never leaves a
        // generation that is partly gone: the next start deletes what is left of it.
        let trash = trash_path(&self.path);
        let gone = std::fs::rename(&self.path, &trash).and_then(|()| std::fs::remove_dir_all(&trash));
        if let Err(e) = gone {
            tracing::warn!(dir = %self.path.display(), error = %e, "a local generation's directory could not be deleted; it is deleted at the next start");
        }
    }
}

/// Where a generation's directory goes to be deleted: beside it, under a name [`Generations::open`]
/// deletes.
fn trash_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!("{TRASH_PREFIX}{name}"))
}

const TRASH_PREFIX: &str = ".deleting-";

impl Generation {
    fn open(dir: PathBuf, block_id: String, options: EmbeddedOptions) -> Result<Self> {
        let store = super::open_embedded(&dir, options)?;
        Ok(Generation {
            block_id,
            store,
            created: Instant::now(),
            dir: DirOnDrop { path: dir, delete: AtomicBool::new(false) },
        })
    }

    /// Closes the store and deletes the directory once the last reader lets go.
    fn discard(&self) {
        self.store.close();
        self.dir.delete.store(true, Ordering::Release);
    }

    /// Whether nothing was ever stored in it.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.store.fill()? == (0, 0))
    }
}

struct State {
    head: Arc<Generation>,
    /// Oldest first.
    sealed: Vec<Arc<Generation>>,
}

/// The head and the sealed generations.
pub struct Generations {
    root: PathBuf,
    options: EmbeddedOptions,
    replica: String,
    /// Inserts hold it shared while they write to the head; sealing takes it exclusively, so no
    /// insert lands in a generation after it is sealed.
    state: RwLock<State>,
}

/// When the head is sealed although its interval has not passed: blocks stay a size one
/// server builds in memory and one query reads quickly.
pub const MAX_HEAD_SPAN_PROFILES: u64 = 500_000;
pub const MAX_HEAD_RECORD_BYTES: u64 = 256 << 20;

fn poisoned() -> Error {
    Error::Storage("the local generations' lock is poisoned".into())
}

impl Generations {
    /// Opens the generations under `data_dir`: every one left by an earlier run is sealed (its
    /// block is built and uploaded next), and a new head is created. A store of the embedded
    /// layout (`data_dir/spanprof.fjall`, from running without `--object-store`) is taken over
    /// as the oldest sealed generation, so its data moves to the bucket.
    pub fn open(data_dir: &Path, mut options: EmbeddedOptions, replica: &str, now_ms: u64) -> Result<Self> {
        // The head and the generation being uploaded share the block cache: half each (every
        // further generation waiting through a bucket outage takes up to half as well).
        options.cache_bytes = (options.cache_bytes / 2).max(8 << 20);
        let root = data_dir.join(GENERATIONS_DIR);
        std::fs::create_dir_all(&root)?;
        // The redb check and the embedded layout: what the data directory itself holds.
        if data_dir.join(DIR_NAME).exists() {
            let id = super::layered::new_block_id(now_ms.saturating_sub(1), replica);
            std::fs::create_dir_all(root.join(&id))?;
            std::fs::rename(data_dir.join(DIR_NAME), root.join(&id).join(DIR_NAME))?;
            tracing::info!(generation = %id, "the embedded store of this data directory is sealed: its data goes to the bucket");
        } else {
            super::check_not_redb(data_dir)?;
        }
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if name.starts_with(TRASH_PREFIX) || !entry.path().join(DIR_NAME).exists() {
                // Being deleted when the process ended; or created, and the process died before
                // its store was: nothing in it.
                std::fs::remove_dir_all(entry.path())?;
                continue;
            }
            names.push(name);
        }
        names.sort();
        let mut sealed = Vec::with_capacity(names.len());
        for name in names {
            let g = Generation::open(root.join(&name), name, options.clone())?;
            if g.is_empty()? {
                g.discard();
            } else {
                sealed.push(Arc::new(g));
            }
        }
        let head = Arc::new(new_generation(&root, &options, replica, now_ms)?);
        Ok(Generations { root, options, replica: replica.to_owned(), state: RwLock::new(State { head, sealed }) })
    }

    /// Stores `batches` in the head.
    pub fn insert(&self, batches: Vec<crate::model::SeriesBatch>) -> Result<super::InsertStats> {
        let state = self.state.read().map_err(|_| poisoned())?;
        state.head.store.insert(batches)
    }

    /// Every generation, head first: what a query reads, fixed for the whole query.
    pub fn all(&self) -> Result<Vec<Arc<Generation>>> {
        let state = self.state.read().map_err(|_| poisoned())?;
        let mut out = Vec::with_capacity(1 + state.sealed.len());
        out.push(state.head.clone());
        out.extend(state.sealed.iter().cloned());
        Ok(out)
    }

    pub fn head(&self) -> Result<Arc<Generation>> {
        Ok(self.state.read().map_err(|_| poisoned())?.head.clone())
    }

    /// The oldest sealed generation: the next block to upload.
    pub fn oldest_sealed(&self) -> Result<Option<Arc<Generation>>> {
        Ok(self.state.read().map_err(|_| poisoned())?.sealed.first().cloned())
    }

    pub fn sealed_count(&self) -> Result<usize> {
        Ok(self.state.read().map_err(|_| poisoned())?.sealed.len())
    }

    /// Whether the head is due to be sealed: older than `interval` and not empty, or as large
    /// as a block should be.
    pub fn head_due(&self, interval: Duration) -> Result<bool> {
        let head = self.head()?;
        let (spans, bytes) = head.store.fill()?;
        Ok(((spans, bytes) != (0, 0) && head.created.elapsed() >= interval)
            || spans >= MAX_HEAD_SPAN_PROFILES
            || bytes >= MAX_HEAD_RECORD_BYTES)
    }

    /// Seals the head unless it is empty: a new head takes the inserts from now on. Returns
    /// whether it sealed.
    pub fn seal(&self, now_ms: u64) -> Result<bool> {
        if self.head()?.is_empty()? {
            return Ok(false);
        }
        // Opened before the lock is taken, so inserts wait only for the swap.
        let fresh = Arc::new(new_generation(&self.root, &self.options, &self.replica, now_ms)?);
        let mut state = self.state.write().map_err(|_| poisoned())?;
        let old = std::mem::replace(&mut state.head, fresh);
        tracing::debug!(generation = %old.block_id, "local generation sealed");
        state.sealed.push(old);
        Ok(true)
    }

    /// Removes sealed generation `block_id` (its block is in the bucket, or it was empty): out of
    /// the list at once, so new queries read the block instead; its directory is deleted when
    /// the last query still reading it is done (or, if the process ends first, at the next
    /// start, which finds the block uploaded).
    pub fn retire(&self, block_id: &str) -> Result<()> {
        let retired = {
            let mut state = self.state.write().map_err(|_| poisoned())?;
            let i = state.sealed.iter().position(|g| g.block_id == block_id);
            i.map(|i| state.sealed.remove(i))
        };
        // Outside the lock: closing and deleting take a while, and inserts wait for the lock.
        if let Some(g) = retired {
            g.discard();
        }
        Ok(())
    }

    /// Commits and closes every generation; an empty head is deleted (so a data directory
    /// whose data is all uploaded holds no generation).
    pub fn close(&self) {
        let Ok(all) = self.all() else { return };
        for g in &all {
            g.store.close();
        }
        if let Some(head) = all.first()
            && head.is_empty().unwrap_or(false)
        {
            head.discard();
        }
    }
}

/// A new, empty generation under `root`, named by the block it becomes.
fn new_generation(root: &Path, options: &EmbeddedOptions, replica: &str, now_ms: u64) -> Result<Generation> {
    let id = super::layered::new_block_id(now_ms, replica);
    Generation::open(root.join(&id), id, options.clone())
}
