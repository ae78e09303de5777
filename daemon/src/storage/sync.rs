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

    /// Makes everything sled wrote before this call durable. Blocking: a few `fsync` calls,
    /// one `fdatasync` and two directory reads.
    pub(crate) fn sync(&self) -> io::Result<()> {
        // One sync at a time: two would each see the other's new names as synced.
        let mut synced = self.synced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let blobs_dir = self.dir.join(BLOBS_DIR);
        match names_in(&blobs_dir) {
            Ok(blobs) => {
                for name in blobs.difference(&synced.blobs) {
                    match File::open(blobs_dir.join(name)) {
                        Ok(file) => file.sync_all()?,
                        // Removed by sled's blob GC since the listing: nothing to keep.
                        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                        Err(error) => return Err(error),
                    }
                }
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
                match File::open(&path) {
                    Ok(file) => file.sync_all()?,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error),
                }
            }
            sync_dir(&self.dir)?;
            synced.dir_entries = entries;
        }
        Ok(())
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
    use crate::storage::sync::Durability;

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
