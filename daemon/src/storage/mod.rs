//! The durable store: the only module that touches sled.
//!
//! # Contract
//! - **Log** (tree `log`): chunks of accepted readings under big-endian `u64` keys in arrival
//!   order, each chunk a postcard `LogEnvelope`. A reading is acknowledged to its sender only
//!   after [`Store::flush`] returned for the chunk holding it: from then on it survives
//!   `kill -9` and power loss. Chunks are deleted ([`Store::trim_log_through`]) only once the
//!   engine's commit that covers them is flushed.
//! - **Main** (tree `main`): the outbox (`o` + seq of a page's first entry), the engine's state
//!   (`s` + page number) and the engine's position (`m` keys), always written together by
//!   [`Store::commit`] in one sled batch, which sled applies all-or-nothing, also after a crash.
//!   Results are stored in pages of up to [`OUTBOX_PAGE_ENTRIES`] and state entries in
//!   [`STATE_PAGES`] hash pages (`s` + page), each with the deltas of the commits that changed
//!   it since it was last written beside it (`d` + page + number; see `state_pages.rs`), so
//!   that a commit writes a few hundred keys, not one per result and per (window, sensor): sled
//!   keeps every node version a batch creates until the batch ends, so thousands of keys per
//!   batch cost tens of megabytes of transient memory. So results, the window state
//!   that produced them and the log position they cover never disagree: after a crash the
//!   engine restarts from the last commit and replays the log after its position, producing
//!   the same results again under the same sequence numbers and ids.
//! - **Source marks** (keys: source name, 0, kind, id): what each source's batches settled (a
//!   TCP session's last line, an MQTT packet id's fingerprint). A log chunk carries the marks
//!   of its batches in the same value as their readings; a commit writes the marks of the
//!   chunks it covers, in the same batch as the log position, so they outlive the trim
//!   ([`Store::load_marks`] plus the replayed chunks give back exactly what was durable).
//!   Committed marks are paged (`k` + the key without its last byte, up to 256 marks a page)
//!   so a commit writes a few hundred keys at most, however many messages it covers.
//! - **Sink cursors** (`m` + `cursor/` + name): the last outbox seq a sink delivered. Written
//!   after delivery, so a crash between the two re-delivers at most one batch of records
//!   (at-least-once, with deterministic ids). An outbox entry is deleted only once every
//!   sink's cursor has passed it.
//! - A record that cannot be decoded (torn by a power cut, or written by a future version) is
//!   skipped and counted in [`StoreStats`], never a crash: a log chunk is replayed as empty, an
//!   outbox page is not delivered, a state page is rebuilt from what the engine has, a meta
//!   value takes its default (a cursor 0: that sink gets the outbox again; the next seqs never
//!   fall below what the outbox holds).
//! - **Dead letters** (tree `dead`): records a sink can never deliver, with the reason; at
//!   most `storage.dead_letter_max_bytes` of them, the oldest deleted (counted and logged)
//!   first. Tree `dead_resend` marks those an operator put back on their uplink.
//! - Size: bounded by sled's cache for memory (`storage.cache_capacity`); on disk, by the
//!   budget (`storage.max_bytes`, see [`budget`](crate::storage::budget) for what is counted,
//!   the full-store policies and the free-space guard). Under `downsample`, undelivered outbox
//!   pages are replaced by pages of merged records keyed at their first seq (the seqs after
//!   them stay empty; see `storage/downsample.rs` for which pages and why no sink gets both).

mod budget;
mod columns;
mod commit;
mod dead_letter;
mod delivered;
mod downsample;
mod log;
mod meters;
mod outbox;
mod state_pages;
mod stored;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::storage::budget::{free_space_of, Budget};
pub use crate::storage::budget::{
    Appended, BudgetConfig, DropStats, Policy, SinkDrops, DEFAULT_DOWNSAMPLE_LEVELS,
};
pub use crate::storage::commit::{
    mark_changes_by_page, state_page_of, state_page_of_sensor, Commit, EngineSnapshot, MarkChange,
    MarkPageChange, RawCommit, SealedPage, StateChange, StateEntry, StateIndex,
};
pub use crate::storage::dead_letter::{DeadLetterEntry, DEAD_LETTER_MAX_BYTES};
pub use crate::storage::delivered::Delivered;
pub use crate::storage::log::LogChunk;
pub use crate::storage::meters::{size_on_disk_of, StoreMeters};
pub use crate::storage::outbox::OutboxEntry;
use crate::storage::state_pages::PageBook;
use crate::storage::sync::Durability;

const OUTBOX: u8 = b'o';
/// The raw-readings lane of the outbox (`forward_raw`): same page format, own seq space.
const RAW: u8 = b'r';
const STATE: u8 = b's';
/// Deltas of the state pages (`storage/state_pages.rs`): `d` + page + delta number.
const STATE_DELTA: u8 = b'd';
/// Source marks, as of the last commit (see [`Store::load_marks`]): pages under `k` + a mark
/// key without its last byte.
const MARKS: u8 = b'k';
const META: u8 = b'm';
const META_LOG_POS: &[u8] = b"mlog_pos";
const META_NEXT_SEQ: &[u8] = b"mnext_seq";
const META_CLOCK: &[u8] = b"mclock_ms";
const META_CURSOR: &[u8] = b"mcursor/";
const META_NEXT_RAW_SEQ: &[u8] = b"mnext_raw_seq";
const META_RAW_CURSOR: &[u8] = b"mrcursor/";
/// The engine state index (`stored::StateIndexV1`), written with each commit.
const META_STATE_INDEX: &[u8] = b"mstate_index";
/// The store's format ([`STORE_FORMAT`]), written when the store is opened.
const META_FORMAT: &[u8] = b"mformat";

/// The store format this build writes. 2: engine state deltas (`d` keys), which a build of
/// format 1 (before the marker existed) would not read, starting from stale state. 3: a
/// sensor's state entries in one page ([`state_page_of`]), which a build of format 2 would
/// look for in other pages after a lazy restart. An older store is moved to this format when
/// it is opened ([`Store::upgrade_format`]); a store of a higher format than this is refused at
/// open, never read wrong.
pub const STORE_FORMAT: u64 = 3;

/// The two lanes of the outbox. Results (windows, batches, late readings) and raw readings
/// have separate sequence numbers and cursors, so a sink can drain results first (`priority`)
/// and the budget can drop raw readings first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Window, batch and late records (keys `o` + seq).
    Results,
    /// Raw readings forwarded as they came (keys `r` + seq).
    Raw,
}

impl Lane {
    fn prefix(self) -> u8 {
        match self {
            Lane::Results => OUTBOX,
            Lane::Raw => RAW,
        }
    }
}

/// Most results stored under one outbox key.
pub const OUTBOX_PAGE_ENTRIES: usize = 256;

/// Number of pages the engine state is spread over (by a stable hash of the sensor an entry
/// belongs to, see [`state_page_of`]).
pub const STATE_PAGES: u16 = 128;

/// Most readings stored under one log key. Keeps each value far below sled's blob threshold
/// (a quarter of its 512 KiB segment) so that chunks stay inline in sled's log.
pub const MAX_CHUNK_READINGS: usize = 512;

/// A storage failure. Opening errors say what to do; the others are fatal for the daemon.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error(
        "cannot open the store at {path}: {source}. If it is damaged, stop eddy, move the \
         directory aside (mv {path} {path}.broken) and start again: eddy then begins with an \
         empty store, and what the old one held is not processed"
    )]
    Open {
        /// The data directory.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// The store was written by a newer eddy, in a format this build cannot read right.
    #[error(
        "the store at {path} is in format {found}, written by a newer eddy; this build reads up \
         to format {known}. Run the newer eddy again, or stop eddy, move the directory aside \
         (mv {path} {path}.newer) and start again with an empty store"
    )]
    Newer {
        /// The data directory.
        path: PathBuf,
        /// The store's format.
        found: u64,
        /// The highest format this build reads.
        known: u64,
    },
    /// Another process (another eddy) holds the store's lock.
    #[error(
        "the store at {path} is in use by another process (is another eddy running with the \
         same data_dir?)"
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// A read, write or flush failed.
    #[error("store {operation} failed: {source}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// sled's error.
        source: sled::Error,
    },
    /// Encoding a record failed (a bug, not bad input).
    #[error("cannot encode a {what}: {source}")]
    Encode {
        /// What was encoded.
        what: &'static str,
        /// postcard's error.
        source: postcard::Error,
    },
}

fn io(operation: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |source| StoreError::Io { operation, source }
}

/// Counters of the store.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Log chunks that could not be decoded and were skipped.
    pub corrupt_log_chunks: AtomicU64,
    /// Outbox pages that could not be decoded and were skipped.
    pub corrupt_outbox_entries: AtomicU64,
    /// Engine state pages that could not be decoded and were skipped.
    pub corrupt_state_pages: AtomicU64,
    /// Meta values (log position, sequence numbers, cursors, clock) that could not be decoded;
    /// their defaults applied.
    pub corrupt_meta: AtomicU64,
    /// Flushes (fsyncs) done.
    pub flushes: AtomicU64,
}

/// The store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    log: sled::Tree,
    main: sled::Tree,
    stats: Arc<StoreStats>,
    field_names: Arc<Vec<String>>,
    tag_names: Arc<Vec<String>>,
    budget: Arc<Budget>,
    durability: Arc<Durability>,
    /// What is known of each state page (its size, its deltas, its micro-batch keys).
    pages: Arc<PageBook>,
}

impl Store {
    /// Opens (or creates) the store in `dir`. `field_names`/`tag_names` describe the current
    /// schema: readings are stored with them and re-mapped on replay if they changed.
    pub fn open(
        dir: &Path,
        cache_capacity: u64,
        field_names: Vec<String>,
        tag_names: Vec<String>,
    ) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(|error| open_err(sled::Error::Io(error)))?;
        let sled_config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity)
            // Every promise is made by an explicit flush (group commit, commits, cursors), and
            // sled's timer thread would write and fsync every second on an idle gateway, for
            // nothing but flash wear. sled still cleans segments as pages are rewritten.
            .flush_every_ms(None)
            .mode(sled::Mode::LowSpace);
        // sled's file lock can outlive a closed handle for a moment (its flusher thread lets go
        // last), so a lock conflict is retried briefly before it is reported as another owner.
        let mut attempts = 0;
        let db = loop {
            match sled_config.open() {
                Ok(db) => break db,
                Err(error) if is_lock_conflict(&error) => {
                    attempts += 1;
                    if attempts >= 60 {
                        return Err(StoreError::Locked { path: dir.to_path_buf() });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(error) => return Err(open_err(error)),
            }
        };
        let log = db.open_tree("log").map_err(open_err)?;
        let main = db.open_tree("main").map_err(open_err)?;
        let format = main.get(META_FORMAT).map_err(open_err)?;
        let upgrade = match format.as_deref().map(<[u8; 8]>::try_from) {
            Some(Ok(found)) if u64::from_be_bytes(found) > STORE_FORMAT => {
                return Err(StoreError::Newer {
                    path: dir.to_path_buf(),
                    found: u64::from_be_bytes(found),
                    known: STORE_FORMAT,
                });
            }
            Some(Ok(found)) if u64::from_be_bytes(found) == STORE_FORMAT => false,
            // None (a new store, or one from before the marker), older, or torn: upgraded
            // (moving entries is idempotent, so a torn marker of this format costs a rewrite).
            _ => true,
        };
        let durability = Durability::open(dir).map_err(|error| open_err(sled::Error::Io(error)))?;
        let store = Store {
            db,
            log,
            main,
            stats: Arc::new(StoreStats::default()),
            field_names: Arc::new(field_names),
            tag_names: Arc::new(tag_names),
            budget: Arc::new(Budget::new(BudgetConfig::default(), free_space_of(dir.to_path_buf()))),
            durability: Arc::new(durability),
            pages: Arc::new(PageBook::default()),
        };
        if upgrade {
            store.upgrade_format()?;
        } else {
            store.db.flush().map_err(open_err)?;
        }
        Ok(store)
    }

    /// Brings a store of an older format (or none: new, or from before the marker) to
    /// [`STORE_FORMAT`] in one sled batch, which sled applies all-or-nothing, made durable
    /// before the store is used: every engine state entry moved to the page of its sensor, the
    /// state index's micro-batch pages with them, and the marker. A crash before the fsync
    /// leaves the older format, upgraded again at the next start.
    fn upgrade_format(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut batch = sled::Batch::default();
        let (moved, batch_pages) = self.replace_state_entries(&mut batch)?;
        self.reindex_batch_pages(&batch_pages, &mut batch)?;
        batch.insert(META_FORMAT, &STORE_FORMAT.to_be_bytes());
        self.main.apply_batch(batch).map_err(io("format upgrade"))?;
        self.db.flush().map_err(io("flush"))?;
        self.durability
            .sync()
            .map_err(|error| StoreError::Io { operation: "fsync", source: sled::Error::Io(error) })?;
        if moved > 0 {
            tracing::info!(
                entries = moved,
                format = STORE_FORMAT,
                elapsed_ms = started.elapsed().as_millis(),
                "Store upgraded: each sensor's engine state now lies in one page."
            );
        }
        Ok(())
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    /// Makes everything written so far durable (one fsync for all writers: group commit):
    /// sled's flush writes its buffers, then [`Durability::sync`] `fdatasync`s the data file
    /// (and syncs blob files and directories), which sled's own flush does not do.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map_err(io("flush"))?;
        let durability = Arc::clone(&self.durability);
        tokio::task::spawn_blocking(move || durability.sync())
            .await
            .map_err(|error| StoreError::Io {
                operation: "flush",
                source: sled::Error::Io(std::io::Error::other(error)),
            })?
            .map_err(|error| StoreError::Io { operation: "fsync", source: sled::Error::Io(error) })?;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes used on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(io("size"))
    }

    /// A meta value; one that is not 8 bytes (an unknown format) is skipped, counted and
    /// reported, and reads as missing, so that its default applies.
    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        let Some(value) = self.main.get(key).map_err(io("meta read"))? else { return Ok(None) };
        match <[u8; 8]>::try_from(&*value) {
            Ok(bytes) => Ok(Some(u64::from_be_bytes(bytes))),
            Err(_) => {
                self.stats.corrupt_meta.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    key = %String::from_utf8_lossy(key),
                    bytes = value.len(),
                    "Skipped an undecodable store meta value; its default applies."
                );
                Ok(None)
            }
        }
    }
}

fn is_lock_conflict(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(rest.len() + 1);
    key.push(prefix);
    key.extend_from_slice(rest);
    key
}

/// A big-endian u64 key; a key of another length (never written by us) reads as 0.
fn decode_key(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes)
}

const _: () = assert!(META == b'm');

#[cfg(test)]
mod corruption_tests;
#[cfg(test)]
pub(crate) mod power_loss_tests;
#[cfg(test)]
mod state_pages_tests;
#[cfg(test)]
mod tests;
