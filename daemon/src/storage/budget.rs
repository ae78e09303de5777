//! The store's disk budget: exact accounting of live log and outbox bytes, the full-store
//! policies (`drop_oldest`, `reject_new`), the outbox `ttl`, a free-space guard, and the counters
//! of everything dropped or refused.
//!
//! # What is counted, and how it relates to the disk
//! `used` is the sum of `key + value` bytes of every live log chunk and outbox page (the
//! postcard bytes eddy hands to sled). It is exact and deterministic: it is recomputed by a scan
//! when the store opens, raised by every append and commit, and lowered by every trim and drop,
//! all under one lock for outbox removals so that no page is counted out twice. It is *not*
//! sled's file size: sled is log-structured, so its files hold old versions until its segment
//! cleaner reclaims them, plus engine state and metadata (measured in BENCHMARKS.md: the
//! directory is a small multiple of `used`). `storage.max_bytes` bounds `used`; size the real
//! partition for a few times that, and keep `min_free_bytes` as the last guard.
//!
//! # The reserve (`min_free_bytes`)
//! Only new readings are checked against free space: a group is refused while the file system
//! has less than `min_free_bytes` + the group's bytes free. Everything else the store writes is
//! for data already taken (the engine's commits of results, state and raw lane, the log trims,
//! the sinks' cursors, dead letters) and goes into that reserve unchecked, so readings stop
//! coming in while those writes still have room. A commit covers at most 50,000 readings (a
//! few MB), far below the default reserve of 64 MiB. Should a write fail anyway (another
//! program took the reserve, a failing medium), sled refuses every later write of that handle;
//! the daemon then opens the store again once the reserve is free (`run/store.rs`,
//! `storage/meters.rs`).
//!
//! # When the budget is full
//! - `drop_oldest`: before a new log chunk is stored, and after each engine commit, the oldest
//!   outbox pages are deleted until the chunk fits (`dropped_budget_records` counts their
//!   records). If the outbox is empty and the log alone is full, the readings are refused.
//! - `reject_new`: new readings are refused (the TCP source answers `nack N disk budget full`,
//!   senders keep them) until the sinks have delivered enough; results of readings already
//!   stored are still committed, so the outbox may pass the budget by those.
//! - `ttl`: outbox pages committed longer ago than `ttl` (processing time) are deleted after a
//!   commit, `dropped_ttl_records` counts their records.
//!
//! Counters are since the process started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::engine::downsample::Shapes;
use crate::storage::downsample::DownsampleMemo;
use crate::storage::stored;
use crate::storage::{decode_key, io, Lane, Store, StoreError};

/// What happens when the budget is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Merge the oldest undelivered records into coarser ones (raw readings first, then
    /// results, level by level), then delete the oldest pages if that is not enough.
    Downsample,
    /// Delete the oldest undelivered outbox pages.
    DropOldest,
    /// Refuse new readings (backpressure to the sources).
    RejectNew,
}

/// The budget settings (`[storage]`).
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    /// Most accounted bytes of log + outbox; `None`: no limit.
    pub max_bytes: Option<u64>,
    /// What to do when full.
    pub policy: Policy,
    /// Outbox records older than this are dropped; `None`: kept until delivered.
    pub ttl: Option<Duration>,
    /// Refuse new readings when the file system has less free space than this (0: no check).
    pub min_free_bytes: u64,
    /// Most bytes the dead-letter tree keeps; past it the oldest dead letters are deleted.
    pub dead_letter_max_bytes: u64,
    /// The resolutions `downsample` merges into, finest first, each a multiple of the one
    /// before.
    pub downsample_levels: Vec<Duration>,
    /// The configured windows' shapes, for the merger (set from the engine's configuration).
    pub shapes: Shapes,
}

/// The default of [`BudgetConfig::downsample_levels`]: hours, then days.
pub const DEFAULT_DOWNSAMPLE_LEVELS: [Duration; 2] = [Duration::from_secs(3600), Duration::from_secs(86_400)];

impl Default for BudgetConfig {
    fn default() -> BudgetConfig {
        BudgetConfig {
            max_bytes: None,
            policy: Policy::Downsample,
            ttl: None,
            min_free_bytes: 0,
            dead_letter_max_bytes: crate::storage::DEAD_LETTER_MAX_BYTES,
            downsample_levels: DEFAULT_DOWNSAMPLE_LEVELS.to_vec(),
            shapes: Shapes::default(),
        }
    }
}

/// Counters of dropped and refused data, by reason.
#[derive(Debug, Default)]
pub struct DropStats {
    /// Outbox records deleted by `drop_oldest` before every sink delivered them.
    pub dropped_budget_records: AtomicU64,
    /// Outbox records deleted because they were older than `ttl`.
    pub dropped_ttl_records: AtomicU64,
    /// Readings refused because the budget was full (`reject_new`, or a full log).
    pub refused_budget_readings: AtomicU64,
    /// Readings refused because the disk was (almost) full or a write failed.
    pub refused_disk_readings: AtomicU64,
    /// Records a sink rejected permanently and moved to the dead-letter tree.
    pub dead_letter_records: AtomicU64,
    /// Dead letters deleted because the dead-letter tree was full.
    pub dropped_dead_letter_records: AtomicU64,
    /// Their bytes.
    pub dropped_dead_letter_bytes: AtomicU64,
    /// Dead letters in the tree now.
    pub dead_letters_kept: AtomicU64,
    /// Their bytes (key and value).
    pub dead_letter_bytes: AtomicU64,
    /// Undelivered records `downsample` merged into coarser ones (each counted once, at the
    /// first merge that takes it in; a merged record merged again counts again).
    pub downsample_merged_records: AtomicU64,
    /// Downsampled records `downsample` wrote.
    pub downsample_written_records: AtomicU64,
    /// Sliding-window records `downsample` deleted as redundant (their readings are all in
    /// the tiling windows it merged).
    pub downsample_redundant_records: AtomicU64,
}

/// Outbox records one sink lost to drops before delivering them, by reason. Counted for each
/// registered sink whose durable cursor had not passed the dropped records (of any kind).
#[derive(Debug, Default)]
pub struct SinkDrops {
    /// Dropped by `drop_oldest`.
    pub budget: AtomicU64,
    /// Dropped by `ttl`.
    pub ttl: AtomicU64,
}

/// Why outbox records were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    Budget,
    Ttl,
}

/// The outcome of asking to store new log chunks: an expected outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored (not yet durable: flush).
    Stored,
    /// Not stored; the reason is for the senders.
    Refused(String),
}

/// A registered sink: name, whether it takes raw readings, its drop counters, its
/// `batch_max_records`.
pub(crate) type RegisteredSink = (String, bool, Arc<SinkDrops>, u64);

/// Measures the free space of the store's file system; replaceable in tests.
pub(crate) type FreeSpace = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// The budget state shared by every clone of the store.
pub(crate) struct Budget {
    pub(crate) config: BudgetConfig,
    /// Accounted bytes of live log chunks and outbox pages.
    pub(crate) used: AtomicU64,
    pub(crate) stats: DropStats,
    /// Serialises outbox removals (trims by the aggregator, drops by ingest and aggregator).
    pub(crate) outbox_removal: Mutex<()>,
    pub(crate) free_space: FreeSpace,
    /// Registered sinks, for per-sink drop counters and downsampling: name, whether it takes
    /// raw readings, its drop counters, its `batch_max_records`.
    pub(crate) sinks: Mutex<Vec<RegisteredSink>>,
    /// Pages a downsampling level found nothing to merge in.
    pub(crate) downsample_memo: Mutex<DownsampleMemo>,
    /// Appends that fail with an injected ENOSPC before touching sled (tests of the error path).
    injected_failures: AtomicU64,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Budget")
            .field("config", &self.config)
            .field("used", &self.used)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Budget {
    pub(crate) fn new(config: BudgetConfig, free_space: FreeSpace) -> Budget {
        Budget {
            config,
            used: AtomicU64::new(0),
            stats: DropStats::default(),
            outbox_removal: Mutex::new(()),
            free_space,
            injected_failures: AtomicU64::new(0),
            sinks: Mutex::new(Vec::new()),
            downsample_memo: Mutex::new(DownsampleMemo::default()),
        }
    }

    /// Consumes one injected failure, if any.
    pub(crate) fn take_injected_failure(&self) -> bool {
        self.injected_failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(crate) fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, bytes: u64) {
        // Saturating: a store used without `with_budget` starts its count at 0.
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(bytes)));
    }
}

/// Bytes a key and value occupy in the accounting.
pub(crate) fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    u64::try_from(key.len() + value.len()).unwrap_or(u64::MAX)
}

/// Free space of the file system holding `dir`, for the guard.
pub(crate) fn free_space_of(dir: std::path::PathBuf) -> FreeSpace {
    Arc::new(move || rustix::fs::statvfs(&dir).ok().map(|stat| stat.f_bavail.saturating_mul(stat.f_frsize)))
}

impl Store {
    /// Sets the disk budget and counts the live log and outbox bytes (a scan of both).
    pub fn with_budget(mut self, config: BudgetConfig) -> Result<Store, StoreError> {
        let free_space = self.budget.free_space.clone();
        self.with_budget_and_free_space(config, free_space).map(|()| self)
    }

    /// Like [`Store::with_budget`], with an injected free-space probe (tests).
    pub(crate) fn with_budget_and_free_space(
        &mut self,
        config: BudgetConfig,
        free_space: FreeSpace,
    ) -> Result<(), StoreError> {
        let budget = Budget::new(config, free_space);
        budget.used.store(self.count_used()?, Ordering::Relaxed);
        self.budget = Arc::new(budget);
        self.count_dead_letters()
    }

    /// The key + value bytes of every live log chunk and outbox page (a scan of both).
    pub(crate) fn count_used(&self) -> Result<u64, StoreError> {
        let mut used = 0;
        for item in self.log.iter() {
            let (key, value) = item.map_err(io("log read"))?;
            used += entry_bytes(&key, &value);
        }
        for lane in [Lane::Results, Lane::Raw] {
            for item in self.main.scan_prefix([lane.prefix()]) {
                let (key, value) = item.map_err(io("outbox read"))?;
                used += entry_bytes(&key, &value);
            }
        }
        Ok(used)
    }

    /// Accounted bytes of live log chunks and outbox pages (see the module docs).
    pub fn used_bytes(&self) -> u64 {
        self.budget.used.load(Ordering::Relaxed)
    }

    /// The budget's counters.
    pub fn drop_stats(&self) -> &DropStats {
        &self.budget.stats
    }

    /// Registers sink `name` for per-sink drop counters (raw-lane drops count for it only when
    /// it `takes_raw`) and for downsampling (which leaves the `batch_max_records` records after
    /// each of its delivered segments alone).
    pub fn register_sink(&self, name: &str, takes_raw: bool, batch_max_records: u64) -> Arc<SinkDrops> {
        self.meters().register_sink(name, takes_raw, batch_max_records)
    }

    /// See [`StoreMeters::register_sink_drops`](crate::storage::StoreMeters::register_sink_drops).
    pub fn register_sink_drops(
        &self,
        name: &str,
        takes_raw: bool,
        batch_max_records: u64,
        drops: &Arc<SinkDrops>,
    ) {
        self.meters().register_sink_drops(name, takes_raw, batch_max_records, drops);
    }

    /// Stops counting drops for sink `name` (a reload removed it).
    pub fn unregister_sink(&self, name: &str) {
        self.meters().unregister_sink(name);
    }

    /// The budget settings.
    pub fn budget_config(&self) -> &BudgetConfig {
        &self.budget.config
    }

    /// Decides whether `incoming` more log bytes may be stored, dropping the oldest outbox
    /// pages first under `drop_oldest`. `n_readings` is counted if refused.
    pub(crate) fn admit(&self, incoming: u64, n_readings: u64) -> Result<Appended, StoreError> {
        let config = &self.budget.config;
        if config.min_free_bytes > 0 {
            if let Some(free) = (self.budget.free_space)() {
                if free < config.min_free_bytes.saturating_add(incoming) {
                    self.budget.stats.refused_disk_readings.fetch_add(n_readings, Ordering::Relaxed);
                    return Ok(Appended::Refused(format!(
                        "disk almost full ({free} bytes free, storage.min_free_bytes = {})",
                        config.min_free_bytes
                    )));
                }
            }
        }
        let Some(max_bytes) = config.max_bytes else { return Ok(Appended::Stored) };
        if self.used_bytes().saturating_add(incoming) <= max_bytes {
            return Ok(Appended::Stored);
        }
        if config.policy == Policy::Downsample {
            self.downsample_until(max_bytes.saturating_sub(incoming))?;
            if self.used_bytes().saturating_add(incoming) <= max_bytes {
                return Ok(Appended::Stored);
            }
        }
        if matches!(config.policy, Policy::DropOldest | Policy::Downsample) {
            self.drop_oldest_until(max_bytes.saturating_sub(incoming))?;
            if self.used_bytes().saturating_add(incoming) <= max_bytes {
                return Ok(Appended::Stored);
            }
        }
        self.budget.stats.refused_budget_readings.fetch_add(n_readings, Ordering::Relaxed);
        Ok(Appended::Refused("disk budget full".to_owned()))
    }

    /// After a commit: drops outbox pages past `ttl` (relative to `now_ms`, processing time)
    /// and, under `drop_oldest`, the oldest pages while over the budget.
    pub fn enforce_budget(&self, now_ms: i64) -> Result<(), StoreError> {
        if let Some(ttl) = self.budget.config.ttl {
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let cutoff = now_ms.saturating_sub(ttl_ms);
            let mut dropped = 0;
            for lane in [Lane::Raw, Lane::Results] {
                dropped += self.drop_outbox_pages(lane, DropReason::Ttl, |committed_ms, _| {
                    committed_ms.is_some_and(|ms| ms < cutoff)
                })?;
            }
            if dropped > 0 {
                self.budget.stats.dropped_ttl_records.fetch_add(dropped, Ordering::Relaxed);
                tracing::error!(records = dropped, ttl = ?ttl, "Dropped undelivered results older than storage.ttl.");
            }
        }
        if let Some(max_bytes) = self.budget.config.max_bytes {
            if self.budget.config.policy == Policy::Downsample && self.used_bytes() > max_bytes {
                self.downsample_until(max_bytes)?;
            }
            if self.budget.config.policy != Policy::RejectNew && self.used_bytes() > max_bytes {
                self.drop_oldest_until(max_bytes)?;
            }
        }
        Ok(())
    }

    /// Deletes the oldest outbox pages, raw readings first, until `used <= target` or the
    /// outbox is empty.
    fn drop_oldest_until(&self, target: u64) -> Result<(), StoreError> {
        let budget = Arc::clone(&self.budget);
        let mut dropped = 0;
        for lane in [Lane::Raw, Lane::Results] {
            dropped += self.drop_outbox_pages(lane, DropReason::Budget, |_, _| {
                budget.used.load(Ordering::Relaxed) > target
            })?;
        }
        if dropped > 0 {
            self.budget.stats.dropped_budget_records.fetch_add(dropped, Ordering::Relaxed);
            tracing::error!(
                records = dropped,
                used_bytes = self.used_bytes(),
                "Disk budget full: dropped the oldest undelivered results."
            );
        }
        Ok(())
    }

    /// Deletes outbox pages from the oldest while `drop(committed_ms, page_bytes)` says so;
    /// returns the number of records deleted. Each page is removed and accounted at once, so
    /// `drop` sees the updated `used`.
    fn drop_outbox_pages(
        &self,
        lane: Lane,
        reason: DropReason,
        mut drop: impl FnMut(Option<i64>, u64) -> bool,
    ) -> Result<u64, StoreError> {
        let _serialised = self.budget.outbox_removal.lock().unwrap_or_else(PoisonError::into_inner);
        let sinks: Vec<RegisteredSink> =
            self.budget.sinks.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut dropped = 0;
        for item in self.main.scan_prefix([lane.prefix()]) {
            let (key, value) = item.map_err(io("outbox read"))?;
            let (committed_ms, n_entries) = stored::outbox_page_header(&value).unwrap_or((None, 0));
            let bytes = entry_bytes(&key, &value);
            if !drop(committed_ms, bytes) {
                break;
            }
            self.main.remove(&key).map_err(io("outbox drop"))?;
            self.budget.sub(bytes);
            let n_entries_u64 = u64::try_from(n_entries).unwrap_or(u64::MAX);
            dropped += n_entries_u64;
            let page_seq = decode_key(&key[1..]);
            for (name, takes_raw, drops, _) in &sinks {
                if lane == Lane::Raw && !takes_raw {
                    continue;
                }
                // Records of the page the sink had not delivered: seq > its cursor.
                let cursor = match lane {
                    Lane::Results => self.cursor(name)?,
                    Lane::Raw => self.raw_cursor(name)?,
                };
                let passed = cursor.saturating_add(1).saturating_sub(page_seq).min(n_entries_u64);
                let counter = match reason {
                    DropReason::Budget => &drops.budget,
                    DropReason::Ttl => &drops.ttl,
                };
                counter.fetch_add(n_entries_u64 - passed, Ordering::Relaxed);
            }
            tracing::debug!(page = page_seq, n_entries, "Dropped an outbox page.");
        }
        Ok(dropped)
    }
}

#[cfg(test)]
impl Store {
    /// The next `n` log appends fail as if the disk were full (ENOSPC), without touching sled.
    pub(crate) fn inject_append_failures(&self, n: u64) {
        self.budget.injected_failures.store(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use eddy_sensors::Reading;

    use super::*;
    use crate::storage::{Commit, LogChunk, OutboxEntry, OUTBOX_PAGE_ENTRIES};

    fn open(dir: &std::path::Path, config: BudgetConfig) -> Store {
        let mut store = Store::open(dir, 1 << 20, vec!["temp_c".into()], vec![]).expect("open");
        store.with_budget_and_free_space(config, Arc::new(|| None)).expect("budget");
        store
    }

    fn budget(max_bytes: u64, policy: Policy) -> BudgetConfig {
        BudgetConfig { max_bytes: Some(max_bytes), policy, ..BudgetConfig::default() }
    }

    /// Commits `n_pages` full outbox pages after `next_seq` (exclusive), at `clock_ms`.
    fn commit_pages(store: &Store, first_seq: u64, n_pages: usize, clock_ms: i64) -> u64 {
        let n = n_pages * OUTBOX_PAGE_ENTRIES;
        let outbox = (0..n)
            .map(|idx| OutboxEntry {
                kind: "window".into(),
                group: "g".into(),
                // The same payloads in every page: pages are compressed, and equal pages have
                // equal sizes, which the tests' byte budgets count on.
                payload: format!("{{\"n\":{:08}}}", idx % OUTBOX_PAGE_ENTRIES).into_bytes(),
            })
            .collect();
        let next_seq = first_seq + u64::try_from(n).unwrap();
        store.commit(&Commit { outbox, log_pos: 0, next_seq, clock_ms, ..Commit::default() }).unwrap();
        next_seq
    }

    fn chunk(key: u64, n_readings: usize) -> LogChunk {
        let readings = (0..n_readings)
            .map(|idx| Reading {
                // Distinct sensors and values, so that a chunk's size grows with its readings
                // (the log's column format stores repeats in next to nothing).
                sensor: Arc::from(format!("sensor-{idx}")),
                ts_ms: i64::try_from(idx * 7919).unwrap(),
                values: smallvec::smallvec![Some(
                    20.0 + f64::from(u32::try_from(idx).unwrap()) * std::f64::consts::E
                )],
                tags: smallvec::smallvec![],
            })
            .collect();
        LogChunk { key, ingest_ms: 1, batch: 0, readings, marks: Vec::new() }
    }

    fn counter(value: &AtomicU64) -> u64 {
        value.load(Ordering::Relaxed)
    }

    #[test]
    fn accounting_is_exact_across_append_commit_trim_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let unlimited = BudgetConfig::default();
        let store = open(dir.path(), unlimited.clone());
        assert_eq!(store.used_bytes(), 0);
        assert_eq!(store.append_log(&[chunk(1, 10), chunk(2, 10)]).unwrap(), Appended::Stored);
        let after_log = store.used_bytes();
        assert!(after_log > 0);
        let next_seq = commit_pages(&store, 1, 2, 1000);
        let after_commit = store.used_bytes();
        drop(store);
        // A reopen counts the same bytes by scanning.
        let store = open(dir.path(), unlimited.clone());
        assert_eq!(store.used_bytes(), after_commit);
        store.trim_log_through(2).unwrap();
        assert_eq!(store.used_bytes(), after_commit - after_log);
        store.trim_outbox_through(next_seq - 1).unwrap();
        assert_eq!(store.used_bytes(), 0);
        drop(store);
        assert_eq!(open(dir.path(), unlimited).used_bytes(), 0);
    }

    #[test]
    fn drop_oldest_drops_the_oldest_pages_until_under_budget_and_counts_every_record() {
        let dir = tempfile::tempdir().unwrap();
        // Measure one page with an unlimited store, then reopen with a budget of 2 pages.
        let store = open(dir.path(), BudgetConfig::default());
        let next_seq = commit_pages(&store, 1, 4, 1000);
        let page_bytes = store.used_bytes() / 4;
        assert_eq!(store.used_bytes(), 4 * page_bytes, "equal pages");
        store.set_cursor("hub", 100).unwrap();
        drop(store);
        let store = open(dir.path(), budget(2 * page_bytes + 1, Policy::DropOldest));
        let hub = store.register_sink("hub", false, 512);
        let file = store.register_sink("file", false, 512);
        store.set_cursor("file", 300).unwrap();
        store.enforce_budget(1000).unwrap();
        let page = u64::try_from(OUTBOX_PAGE_ENTRIES).unwrap();
        assert_eq!(counter(&store.drop_stats().dropped_budget_records), 2 * page);
        assert_eq!(store.used_bytes(), 2 * page_bytes);
        // hub had delivered 100 of the 512 dropped records, file 300.
        assert_eq!(counter(&hub.budget), 2 * page - 100);
        assert_eq!(counter(&file.budget), 2 * page - 300);
        // What is left starts at the third page and ends where it did.
        let left = store.read_outbox_after(0, 10_000).unwrap();
        assert_eq!(left.first().map(|(seq, _)| *seq), Some(2 * page + 1));
        assert_eq!(left.last().map(|(seq, _)| *seq), Some(next_seq - 1));
        assert_eq!(counter(&store.drop_stats().refused_budget_readings), 0);
    }

    /// A sink removed by a reload is no longer counted; one added back or changed keeps its
    /// counters, registered once.
    #[test]
    fn a_sink_can_be_registered_again_or_unregistered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), BudgetConfig::default());
        commit_pages(&store, 1, 4, 1000);
        let page_bytes = store.used_bytes() / 4;
        drop(store);
        let store = open(dir.path(), budget(3 * page_bytes + 1, Policy::DropOldest));
        let hub = store.register_sink("hub", false, 512);
        let gone = store.register_sink("gone", false, 512);
        store.unregister_sink("gone");
        // Registered again with the counters it had: one entry, not two.
        store.register_sink_drops("hub", true, 512, &hub);
        store.enforce_budget(1000).unwrap();
        let page = u64::try_from(OUTBOX_PAGE_ENTRIES).unwrap();
        assert_eq!(counter(&hub.budget), page, "counted once for the one dropped page");
        assert_eq!(counter(&gone.budget), 0, "an unregistered sink is not counted");
    }

    #[test]
    fn drop_oldest_makes_room_for_new_readings_and_refuses_them_only_when_the_outbox_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), BudgetConfig::default());
        commit_pages(&store, 1, 1, 1000);
        let page_bytes = store.used_bytes();
        drop(store);
        let store = open(dir.path(), budget(page_bytes + 100, Policy::DropOldest));
        // A chunk bigger than the 100 bytes left: the page goes, the chunk is stored.
        assert_eq!(store.append_log(&[chunk(1, 20)]).unwrap(), Appended::Stored);
        let page = u64::try_from(OUTBOX_PAGE_ENTRIES).unwrap();
        assert_eq!(counter(&store.drop_stats().dropped_budget_records), page);
        // A chunk bigger than the whole budget cannot be made room for: refused, counted.
        let huge = chunk(2, 20_000);
        assert!(matches!(store.append_log(&[huge]).unwrap(), Appended::Refused(_)));
        assert_eq!(counter(&store.drop_stats().refused_budget_readings), 20_000);
        assert_eq!(store.last_log_key().unwrap(), Some(1));
    }

    #[test]
    fn reject_new_refuses_readings_until_the_outbox_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), BudgetConfig::default());
        let next_seq = commit_pages(&store, 1, 2, 1000);
        let used = store.used_bytes();
        drop(store);
        let store = open(dir.path(), budget(used + 50, Policy::RejectNew));
        assert!(
            matches!(store.append_log(&[chunk(1, 5)]).unwrap(), Appended::Refused(reason) if reason == "disk budget full")
        );
        assert!(matches!(store.append_log(&[chunk(2, 6)]).unwrap(), Appended::Refused(_)));
        assert_eq!(counter(&store.drop_stats().refused_budget_readings), 11);
        assert_eq!(counter(&store.drop_stats().dropped_budget_records), 0, "reject_new never drops");
        assert_eq!(store.used_bytes(), used);
        assert_eq!(store.last_log_key().unwrap(), None);
        // The sinks deliver everything: room again.
        store.trim_outbox_through(next_seq - 1).unwrap();
        assert_eq!(store.append_log(&[chunk(3, 3)]).unwrap(), Appended::Stored);
        assert_eq!(counter(&store.drop_stats().refused_budget_readings), 11);
    }

    #[test]
    fn ttl_drops_pages_committed_before_now_minus_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), 1 << 20, vec![], vec![]).unwrap();
        let config = BudgetConfig { ttl: Some(Duration::from_secs(60)), ..BudgetConfig::default() };
        store.with_budget_and_free_space(config, Arc::new(|| None)).unwrap();
        let hub = store.register_sink("hub", false, 512);
        let seq = commit_pages(&store, 1, 1, 1_000_000);
        let seq = commit_pages(&store, seq, 1, 1_030_000);
        commit_pages(&store, seq, 1, 1_060_000);
        store.enforce_budget(1_089_999).unwrap(); // only the first page is older than 60 s
        let page = u64::try_from(OUTBOX_PAGE_ENTRIES).unwrap();
        assert_eq!(counter(&store.drop_stats().dropped_ttl_records), page);
        assert_eq!(counter(&hub.ttl), page);
        store.enforce_budget(1_120_001).unwrap();
        assert_eq!(counter(&store.drop_stats().dropped_ttl_records), 3 * page);
        assert_eq!(store.used_bytes(), 0);
    }

    #[test]
    fn the_free_space_guard_refuses_readings_while_the_disk_is_almost_full() {
        let dir = tempfile::tempdir().unwrap();
        let free = Arc::new(AtomicU64::new(10 * 1024 * 1024));
        let mut store = Store::open(dir.path(), 1 << 20, vec!["temp_c".into()], vec![]).unwrap();
        let probe = free.clone();
        let config = BudgetConfig { min_free_bytes: 1024 * 1024, ..BudgetConfig::default() };
        store
            .with_budget_and_free_space(config, Arc::new(move || Some(probe.load(Ordering::Relaxed))))
            .unwrap();
        assert_eq!(store.append_log(&[chunk(1, 5)]).unwrap(), Appended::Stored);
        free.store(512 * 1024, Ordering::Relaxed);
        assert!(
            matches!(store.append_log(&[chunk(2, 5)]).unwrap(), Appended::Refused(reason) if reason.starts_with("disk almost full"))
        );
        assert_eq!(counter(&store.drop_stats().refused_disk_readings), 5);
        // Space comes back: accepted again, no restart needed.
        free.store(10 * 1024 * 1024, Ordering::Relaxed);
        assert_eq!(store.append_log(&[chunk(3, 5)]).unwrap(), Appended::Stored);
        assert_eq!(store.last_log_key().unwrap(), Some(3));
    }

    #[test]
    fn drop_oldest_drops_raw_readings_before_any_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), BudgetConfig::default());
        let next_seq = commit_pages(&store, 1, 2, 1000);
        let results_bytes = store.used_bytes();
        // Two raw pages, committed after the results (so they are newer).
        let raw_entries: Vec<OutboxEntry> = (0..2 * OUTBOX_PAGE_ENTRIES)
            .map(|idx| OutboxEntry {
                kind: "raw".into(),
                group: "r".into(),
                payload: format!("{{\"n\":{:08}}}", idx % OUTBOX_PAGE_ENTRIES).into_bytes(),
            })
            .collect();
        let raw = crate::storage::RawCommit {
            next_raw_seq: 1 + u64::try_from(raw_entries.len()).unwrap(),
            entries: raw_entries,
        };
        let commit = Commit { log_pos: 0, next_seq, clock_ms: 2000, ..Commit::default() };
        store.commit_with_raw(&commit, Some(&raw)).unwrap();
        let raw_page_bytes = (store.used_bytes() - results_bytes) / 2;
        drop(store);
        // Room for the results and half the raw readings: one raw page goes, no result.
        let store = open(dir.path(), budget(results_bytes + raw_page_bytes, Policy::DropOldest));
        store.enforce_budget(2000).unwrap();
        let page = u64::try_from(OUTBOX_PAGE_ENTRIES).unwrap();
        assert_eq!(counter(&store.drop_stats().dropped_budget_records), page);
        assert_eq!(store.read_outbox_after(0, 10_000).unwrap().len(), 2 * OUTBOX_PAGE_ENTRIES);
        let raw_left = store.read_lane_after(crate::storage::Lane::Raw, 0, 10_000).unwrap();
        assert_eq!(raw_left.first().map(|(seq, _)| *seq), Some(page + 1), "the oldest raw page went");
        // Tighter still: the other raw page, then the oldest result page.
        drop(store);
        let store = open(dir.path(), budget(results_bytes / 2, Policy::DropOldest));
        store.enforce_budget(2000).unwrap();
        assert_eq!(counter(&store.drop_stats().dropped_budget_records), 2 * page);
        assert!(store.read_lane_after(crate::storage::Lane::Raw, 0, 10).unwrap().is_empty());
        assert_eq!(store.read_outbox_after(0, 10_000).unwrap().first().map(|(seq, _)| *seq), Some(page + 1));
    }

    #[test]
    fn dead_letters_keep_the_record_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), BudgetConfig::default());
        let entry = |seq| crate::storage::DeadLetterEntry {
            sink: "hub".into(),
            seq,
            kind: "window".into(),
            reason: "HTTP 400 Bad Request: no".into(),
            rejected_ms: 5,
            payload: b"{}".to_vec(),
        };
        store.add_dead_letters(&[entry(1), entry(2)]).unwrap();
        store.add_dead_letters(&[entry(3)]).unwrap();
        let stored = store.dead_letters().unwrap();
        assert_eq!(stored, vec![entry(1), entry(2), entry(3)]);
        assert_eq!(counter(&store.drop_stats().dead_letter_records), 3);
    }
}
