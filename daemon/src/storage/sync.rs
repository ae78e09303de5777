//! What makes a sled flush durable: `fdatasync` of sled's data file, `fsync` of the blob files
//! sled writes without syncing, and `fsync` of the directories whose entries changed.
//!
//! sled 0.34 flushes with `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on Linux
//! (`pagecache/iobuf.rs`): it starts and waits for the write-out of the data pages, but writes
//! no metadata (the size of a file that grew, new extents) and does not flush the device's
//! write cache, so its man page promises nothing across a power cut. Its blob files (values
//! over a quarter of a segment) are written without any sync at all, and the snapshot it
//! renames into place, like the files it creates, needs its directory synced to exist after a
//! power cut. [`Durability::sync`] does what `Store::flush` promises after sled's flush
//! returned: blobs first (the log may point at them), then the data file, then any file new
//! in the store directory (sled's `conf`), then the directories.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// sled's data file in the store directory (sled 0.34: one file, `db`).
const DATA_FILE: &str = "db";
/// sled's directory of blob files (values too large for a log segment).
const BLOBS_DIR: &str = "blobs";

/// The store directory's durable view: which of its files and blob files were synced.
#[derive(Debug)]
pub(crate) struct Durability {
    dir: PathBuf,
    data_file: File,
    /// Names in the store directory and in `blobs/` as of the last sync of each directory.
    synced: Mutex<Synced>,
}

#[derive(Debug, Default)]
struct Synced {
    dir_entries: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

impl Durability {
    /// Opens sled's data file in `dir` (after sled opened the store) and makes what sled
    /// created there durable: the files, the directory entries, the blob directory.
    pub(crate) fn open(dir: &Path) -> io::Result<Durability> {
        let data_file = File::open(dir.join(DATA_FILE))?;
        let durability =
            Durability { dir: dir.to_path_buf(), data_file, synced: Mutex::new(Synced::default()) };
        durability.sync()?;
        Ok(durability)
    }

    /// Makes everything sled wrote before this call durable. Blocking: an `fsync` of each blob
    /// file new since the last call (several at a time, [`SYNC_THREADS`]), one `fdatasync`,
    /// two directory reads and an `fsync` of each directory whose entries changed.
    pub(crate) fn sync(&self) -> io::Result<()> {
        // One sync at a time: two would each see the other's new names as synced.
        let mut synced = self.synced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let blobs_dir = self.dir.join(BLOBS_DIR);
        match names_in(&blobs_dir) {
            Ok(blobs) => {
                let new: Vec<&String> = blobs.difference(&synced.blobs).collect();
                sync_files(&blobs_dir, &new)?;
                if blobs != synced.blobs {
                    sync_dir(&blobs_dir)?;
                    synced.blobs = blobs;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        self.data_file.sync_data()?;
        let entries = names_in(&self.dir)?;
        if entries != synced.dir_entries {
            // A new file's contents first (sled's `conf` at creation; its snapshots are
            // synced by sled before their rename), then the names.
            for name in entries.difference(&synced.dir_entries) {
                let path = self.dir.join(name);
                if name == DATA_FILE || !path.is_file() {
                    continue;
                }
                sync_if_present(&path)?;
            }
            sync_dir(&self.dir)?;
            synced.dir_entries = entries;
        }
        Ok(())
    }
}

/// Blob files synced at a time, each on a thread of its own.
///
/// A commit after a window-close burst rewrites most state pages, each a blob file, and synced
/// them one after another, each `fsync` waiting for its own write-out and device flush. In
/// flight together they overlap: the burst's commit came 10–15 % sooner (BENCHMARKS.md,
/// #18 session 6); the 69 blobs of a just-copied 1,000,000-key store synced in 42 ms instead
/// of 69 under strace. A clean store's restart gains nothing measurable.
const SYNC_THREADS: usize = 8;

/// `fsync` of each of `names` in `dir` that still exists (sled's blob GC may have removed one
/// since the listing: nothing to keep), several at a time; the first error if any failed.
fn sync_files(dir: &Path, names: &[&String]) -> io::Result<()> {
    let sync_some = |names: &[&String]| names.iter().try_for_each(|name| sync_if_present(&dir.join(name)));
    if names.len() <= 1 {
        return sync_some(names);
    }
    let per_thread = names.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let mut outcomes = Vec::new();
        let mut threads = Vec::new();
        for part in names.chunks(per_thread) {
            let spawned = std::thread::Builder::new()
                .name("eddy-fsync".to_owned())
                .stack_size(64 * 1024)
                .spawn_scoped(scope, move || sync_some(part));
            match spawned {
                Ok(thread) => threads.push(thread),
                // No thread to be had (a process or memory limit): sync these here.
                Err(_) => outcomes.push(sync_some(part)),
            }
        }
        for thread in threads {
            // panic = "abort" in release; in tests a panic is the test's failure.
            outcomes.push(thread.join().unwrap_or_else(|_| Err(io::Error::other("a sync thread panicked"))));
        }
        outcomes.into_iter().collect()
    })
}

fn sync_if_present(path: &Path) -> io::Result<()> {
    match File::open(path) {
        Ok(file) => file.sync_all(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

fn names_in(dir: &Path) -> io::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        names.insert(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// `fsync` of a directory: makes the creation, renaming and removal of its entries durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use crate::storage::sync::{sync_files, Durability};

    #[test]
    fn sync_files_syncs_many_at_once_skips_the_gone_and_reports_a_failure() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut names: Vec<String> = (0..37).map(|n| n.to_string()).collect();
        for name in &names {
            std::fs::write(dir.path().join(name), name.as_bytes()).expect("write");
        }
        // Removed by sled's blob GC after the listing: nothing to sync.
        names.push("gone".to_owned());
        let refs: Vec<&String> = names.iter().collect();
        sync_files(dir.path(), &refs).expect("every file synced");
        sync_files(dir.path(), &refs[..1]).expect("one file, inline");
        sync_files(dir.path(), &[]).expect("nothing to do");
        // A name that cannot be opened (its parent is a file): the error, whichever thread.
        names.push("0/not-a-dir".to_owned());
        let refs: Vec<&String> = names.iter().collect();
        let error = sync_files(dir.path(), &refs).expect_err("the failure is reported");
        assert_eq!(error.kind(), std::io::ErrorKind::NotADirectory, "{error}");
    }

    #[test]
    fn sync_needs_the_data_file_and_tolerates_a_store_without_blobs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = Durability::open(dir.path()).expect_err("no data file yet");
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
        std::fs::write(dir.path().join("db"), b"x").expect("write");
        let durability = Durability::open(dir.path()).expect("open");
        std::fs::create_dir(dir.path().join("blobs")).expect("blobs dir");
        std::fs::write(dir.path().join("blobs").join("1"), b"blob").expect("blob");
        durability.sync().expect("sync");
        let synced = durability.synced.lock().expect("lock");
        assert!(synced.blobs.contains("1") && synced.dir_entries.contains("blobs"), "{synced:?}");
    }
}
