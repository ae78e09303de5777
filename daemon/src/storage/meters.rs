//! What outlives one opening of the store: its budget and counters ([`StoreMeters`]), read by
//! `/status` without a database handle, and the classification of a store failure.
//!
//! # Why a store is opened again rather than written to again
//! sled 0.34 keeps the first I/O error of a log write (`pwrite`, `sync_file_range`) as a global
//! error of the database (`Config::set_global_error`, `pagecache/iobuf.rs`): from then on every
//! insert, batch and flush of that handle returns the same error, also after space came back;
//! reads still work. Only a new `sled::Config::open` clears it (`PageCache::start` resets it)
//! and recovers the last durable state from the files. Measured on a 24 MiB ext4 image: after
//! one ENOSPC, inserts and flushes kept failing with ENOSPC once 20 MB were free again; after
//! every handle was dropped, an open in the same process recovered every flushed key and took
//! writes again. So after a failed write the daemon drops every handle and opens the store
//! again (`run/store.rs`), and the new opening takes these meters over
//! ([`Store::with_meters_of`]).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use crate::storage::budget::{Budget, BudgetConfig, DropStats, SinkDrops};
use crate::storage::{Store, StoreError, StoreStats};

/// The store's budget and counters, without the database. Cheap to clone; every opening of the
/// store made [`Store::with_meters_of`] these shares them, so counters are since the process
/// started.
#[derive(Debug, Clone)]
pub struct StoreMeters {
    budget: Arc<Budget>,
    stats: Arc<StoreStats>,
}

impl StoreMeters {
    /// Accounted bytes of live log chunks and outbox pages.
    pub fn used_bytes(&self) -> u64 {
        self.budget.used.load(Ordering::Relaxed)
    }

    /// The budget's counters (drops and refusals).
    pub fn drop_stats(&self) -> &DropStats {
        &self.budget.stats
    }

    /// The store's own counters (corrupt records, flushes).
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The budget settings.
    pub fn budget_config(&self) -> &BudgetConfig {
        &self.budget.config
    }

    /// Free bytes on the store's file system (`None`: unknown).
    pub fn free_bytes(&self) -> Option<u64> {
        (self.budget.free_space)()
    }

    /// Why the file system is short of space (less free than `storage.min_free_bytes`), in
    /// words for `/health`; `None` when it is not, or when the guard is off.
    pub fn short_of_space(&self) -> Option<String> {
        let min_free_bytes = self.budget.config.min_free_bytes;
        let free = self.free_bytes()?;
        (min_free_bytes > 0 && free < min_free_bytes).then(|| {
            format!(
                "disk almost full: {free} bytes free on the store's file system, below \
                 storage.min_free_bytes = {min_free_bytes}; new readings are refused"
            )
        })
    }

    /// Registers sink `name` for per-sink drop counters (raw-lane drops count for it only when
    /// it `takes_raw`) and for downsampling (see `storage/downsample.rs`: it leaves the
    /// `batch_max_records` records after each of the sink's delivered segments alone).
    pub fn register_sink(&self, name: &str, takes_raw: bool, batch_max_records: u64) -> Arc<SinkDrops> {
        let drops = Arc::new(SinkDrops::default());
        self.register_sink_drops(name, takes_raw, batch_max_records, &drops);
        drops
    }

    /// Registers (or, for a name already registered, replaces) sink `name` with counters it
    /// already has: a sink that a reload changed, or added back, keeps counting where it was,
    /// and a change of `takes_raw` takes effect.
    pub fn register_sink_drops(
        &self,
        name: &str,
        takes_raw: bool,
        batch_max_records: u64,
        drops: &Arc<SinkDrops>,
    ) {
        let mut sinks = self.budget.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        sinks.retain(|(registered, _, _, _)| registered != name);
        sinks.push((name.to_owned(), takes_raw, drops.clone(), batch_max_records));
    }

    /// Stops counting drops for sink `name` (a reload removed it).
    pub fn unregister_sink(&self, name: &str) {
        self.budget
            .sinks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(registered, _, _, _)| registered != name);
    }
}

impl Store {
    /// The budget and counters of this opening, for readers that must not hold the database.
    pub fn meters(&self) -> StoreMeters {
        StoreMeters { budget: self.budget.clone(), stats: self.stats.clone() }
    }

    /// Takes over the budget and counters of an earlier opening of the same store (after a
    /// failure, see the module docs) and counts the live log and outbox bytes again, as
    /// [`Store::with_budget`] does at start-up.
    pub fn with_meters_of(mut self, meters: &StoreMeters) -> Result<Store, StoreError> {
        let used = self.count_used()?;
        meters.budget.used.store(used, Ordering::Relaxed);
        self.budget = meters.budget.clone();
        self.stats = meters.stats.clone();
        self.count_dead_letters()?;
        Ok(self)
    }
}

impl StoreError {
    /// Whether the store failed at run time (a read, write or flush: sled's I/O error, a full
    /// disk, a dying medium), which a new opening of the store may get past; not a bug.
    pub fn is_runtime_failure(&self) -> bool {
        matches!(self, StoreError::Io { .. })
    }

    /// Whether the store could not be opened because its file system is full or failing
    /// (ENOSPC, EDQUOT, EIO), a condition to wait out rather than a damaged or locked store.
    pub fn is_waitable_open_failure(&self) -> bool {
        let StoreError::Open { source: sled::Error::Io(error), .. } = self else { return false };
        is_waitable_io(error)
    }
}

/// ENOSPC, EDQUOT or EIO, also inside sled's wrapping of an OS error.
fn is_waitable_io(error: &std::io::Error) -> bool {
    const EIO: i32 = 5;
    if matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        || error.raw_os_error() == Some(EIO)
    {
        return true;
    }
    // sled re-wraps OS errors as `io::Error::new(kind, error)`.
    error.get_ref().and_then(|inner| inner.downcast_ref::<std::io::Error>()).is_some_and(is_waitable_io)
}

/// Bytes of sled's files in `dir` (its log file `db`, `conf`, snapshots `snap.*` and blobs),
/// measured without opening the store; other files there (a file sink's output) are not counted.
pub fn size_on_disk_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut size = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(metadata) = entry.metadata() else { continue };
        if metadata.is_file() && (name == "db" || name == "conf" || name.starts_with("snap.")) {
            size += metadata.len();
        } else if metadata.is_dir() && name == "blobs" {
            let blobs = std::fs::read_dir(entry.path()).into_iter().flatten().flatten();
            size += blobs.filter_map(|blob| blob.metadata().ok()).map(|metadata| metadata.len()).sum::<u64>();
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Commit, OutboxEntry};

    #[test]
    fn a_new_opening_takes_over_the_counters_and_recounts_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, vec![], vec![]).unwrap();
        let outbox = vec![OutboxEntry { kind: "window".into(), group: "g".into(), payload: b"{}".to_vec() }];
        store.commit(&Commit { outbox, log_pos: 0, next_seq: 2, ..Commit::default() }).unwrap();
        let meters = store.meters();
        let hub = meters.register_sink("hub", false, 512);
        meters.drop_stats().refused_disk_readings.fetch_add(7, Ordering::Relaxed);
        let used = meters.used_bytes();
        assert!(used > 0);
        drop(store);
        meters.budget.used.store(0, Ordering::Relaxed);
        let store =
            Store::open(dir.path(), 1 << 20, vec![], vec![]).unwrap().with_meters_of(&meters).unwrap();
        assert_eq!(store.used_bytes(), used, "counted again by a scan");
        assert_eq!(store.drop_stats().refused_disk_readings.load(Ordering::Relaxed), 7);
        assert!(Arc::ptr_eq(&store.meters().budget, &meters.budget));
        // The sink registered with the earlier opening still counts drops.
        assert_eq!(store.budget.sinks.lock().unwrap().len(), 1);
        drop(hub);
        assert!(size_on_disk_of(dir.path()) > 0);
        std::fs::write(dir.path().join("results.jsonl"), vec![b'x'; 1 << 20]).unwrap();
        assert!(size_on_disk_of(dir.path()) < 1 << 20, "a file sink's output is not the store's");
    }

    #[test]
    fn the_guard_says_why_readings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), 1 << 20, vec![], vec![]).unwrap();
        let config = BudgetConfig { min_free_bytes: 1000, ..BudgetConfig::default() };
        store.with_budget_and_free_space(config, Arc::new(|| Some(999))).unwrap();
        let reason = store.meters().short_of_space().expect("short of space");
        assert!(reason.contains("999 bytes free") && reason.contains("min_free_bytes = 1000"), "{reason}");
        store.with_budget_and_free_space(BudgetConfig::default(), Arc::new(|| Some(0))).unwrap();
        assert_eq!(store.meters().short_of_space(), None, "the guard is off");
    }

    #[test]
    fn a_full_or_failing_disk_is_waited_out_at_open_and_other_failures_are_not() {
        let open =
            |error: std::io::Error| StoreError::Open { path: "/x".into(), source: sled::Error::Io(error) };
        let enospc = std::io::Error::from_raw_os_error(28);
        // sled's own wrapping of an OS error.
        let wrapped = std::io::Error::new(enospc.kind(), std::io::Error::from_raw_os_error(28));
        assert!(open(enospc).is_waitable_open_failure());
        assert!(open(wrapped).is_waitable_open_failure());
        assert!(open(std::io::Error::from_raw_os_error(5)).is_waitable_open_failure());
        assert!(!open(std::io::Error::from_raw_os_error(13)).is_waitable_open_failure(), "EACCES");
        assert!(!StoreError::Locked { path: "/x".into() }.is_waitable_open_failure());
    }
}
