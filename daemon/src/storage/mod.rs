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
//!   [`STATE_PAGES`] hash pages, so that a commit writes a few hundred keys, not one per result
//!   and per (window, sensor): sled keeps every node version a batch creates until the batch
//!   ends, so thousands of keys per batch cost tens of megabytes of transient memory. So results, the window state
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
//! - **Dead letters** (tree `dead`): records a sink rejected permanently, with the reason;
//!   at most [`DEAD_LETTER_MAX`], the oldest deleted (and counted) first.
//! - Size: bounded by sled's cache for memory (`storage.cache_capacity`); on disk, by the
//!   budget (`storage.max_bytes`, see [`budget`](crate::storage::budget) for what is counted,
//!   the full-store policies and the free-space guard).

mod budget;
mod dead_letter;
mod stored;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eddy_sensors::Reading;

use crate::storage::budget::{entry_bytes, free_space_of, Budget};
pub use crate::storage::budget::{Appended, BudgetConfig, DropStats, Policy, SinkDrops};
pub use crate::storage::dead_letter::{DeadLetterEntry, DEAD_LETTER_MAX};
use crate::storage::stored::{LogChunkV2Ref, OutboxEntryV1Ref, ReadingsRef};

const OUTBOX: u8 = b'o';
/// The raw-readings lane of the outbox (`forward_raw`): same page format, own seq space.
const RAW: u8 = b'r';
const STATE: u8 = b's';
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

/// Raw readings committed with an engine commit (the raw lane of [`Commit`]).
#[derive(Debug, Default)]
pub struct RawCommit {
    /// Raw records; they get seqs `next_raw_seq - entries.len() .. next_raw_seq`.
    pub entries: Vec<OutboxEntry>,
    /// Next raw seq after this commit.
    pub next_raw_seq: u64,
}

/// Most results stored under one outbox key.
pub const OUTBOX_PAGE_ENTRIES: usize = 256;

/// Number of pages the engine state is spread over (by a stable hash of the entry's key).
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

/// A chunk of readings in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogChunk {
    /// Its key: strictly increasing in arrival order.
    pub key: u64,
    /// Gateway time when the chunk was ingested (ms since the epoch, never decreasing).
    pub ingest_ms: i64,
    /// Micro-batch number (`ingest_ms / batch interval`).
    pub batch: u64,
    /// The readings.
    pub readings: Vec<Reading>,
    /// The sources' marks stored with these readings (see `eddy_sensors::Mark`).
    pub marks: Vec<MarkChange>,
}

/// A source mark as the store keeps it: its key (source name, 0, kind, id) and its value, or
/// `None` to forget it. The daemon's `marks` module gives keys and values their meaning.
pub type MarkChange = (Vec<u8>, Option<u64>);

/// The changes a commit makes to one page of marks: the page key (a mark key without its last
/// byte) and, per slot (the key's last byte), the new value or `None` to forget the mark.
pub type MarkPageChange = (Vec<u8>, Vec<(u8, Option<u64>)>);

/// Groups mark changes by page, in order (a later change of a slot wins).
pub fn mark_changes_by_page(changes: &[MarkChange]) -> Vec<MarkPageChange> {
    let mut pages: std::collections::BTreeMap<&[u8], Vec<(u8, Option<u64>)>> =
        std::collections::BTreeMap::new();
    for (key, value) in changes {
        if let Some((slot, page)) = key.split_last() {
            pages.entry(page).or_default().push((*slot, *value));
        }
    }
    pages.into_iter().map(|(page, slots)| (page.to_vec(), slots)).collect()
}

/// A result waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// `window`, `batch` or `late`.
    pub kind: String,
    /// Display heading for the console.
    pub group: String,
    /// The JSON record.
    pub payload: Vec<u8>,
}

/// The engine's committed state.
#[derive(Debug, Default)]
pub struct EngineSnapshot {
    /// Opaque engine state entries.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Last log key processed (0: none).
    pub log_pos: u64,
    /// Next outbox sequence number.
    pub next_seq: u64,
    /// Next raw-lane sequence number.
    pub next_raw_seq: u64,
    /// The processing clock at the commit (ms since the epoch): the floor for the next run's
    /// clock, so an NTP step backwards across a restart cannot reopen closed batches.
    pub clock_ms: i64,
}

/// A change to one engine state entry: its key and the new value, or `None` to delete it.
pub type StateChange = (Vec<u8>, Option<Vec<u8>>);

/// A full page of outbox entries, encoded (compressed) ahead of its commit by
/// [`Store::seal_outbox_page`], so that a burst of results waits for its commit at a fifth of
/// its JSON size.
#[derive(Debug)]
pub struct SealedPage {
    compressed: Vec<u8>,
    len: usize,
}

impl SealedPage {
    /// Entries in the page.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the page has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One atomic engine commit.
#[derive(Debug, Default)]
pub struct Commit {
    /// New results sealed into pages, in seq order, before those of `outbox`.
    pub sealed: Vec<SealedPage>,
    /// New results; with `sealed` they get sequence numbers `next_seq - n .. next_seq`.
    pub outbox: Vec<OutboxEntry>,
    /// Engine state changes (`None` deletes).
    pub state: Vec<StateChange>,
    /// Last log key processed.
    pub log_pos: u64,
    /// Next outbox sequence number after this commit.
    pub next_seq: u64,
    /// The processing clock.
    pub clock_ms: i64,
    /// The marks of the log chunks this commit covers, by page, so that they outlive the log's
    /// trim.
    pub marks: Vec<MarkPageChange>,
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
            // The log is flushed explicitly (group commit); sled's own timer flush only adds
            // fsyncs on top, so it is slowed down.
            .flush_every_ms(Some(1000))
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
        Ok(Store {
            db,
            log,
            main,
            stats: Arc::new(StoreStats::default()),
            field_names: Arc::new(field_names),
            tag_names: Arc::new(tag_names),
            budget: Arc::new(Budget::new(BudgetConfig::default(), free_space_of(dir.to_path_buf()))),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    /// Writes chunks to the log (not yet durable: call [`Store::flush`]) if the disk budget
    /// admits them; otherwise nothing is written and the answer says why.
    pub fn append_log(&self, chunks: &[LogChunk]) -> Result<Appended, StoreError> {
        let mut batch = sled::Batch::default();
        let mut bytes = 0;
        let mut n_readings = 0;
        for chunk in chunks {
            let value = stored::encode_log_chunk(&LogChunkV2Ref {
                ingest_ms: chunk.ingest_ms,
                batch: chunk.batch,
                field_names: &self.field_names,
                tag_names: &self.tag_names,
                readings: ReadingsRef(&chunk.readings),
                marks: &chunk.marks,
            })
            .map_err(|source| StoreError::Encode { what: "log chunk", source })?;
            let key = chunk.key.to_be_bytes();
            bytes += entry_bytes(&key, &value);
            n_readings += u64::try_from(chunk.readings.len()).unwrap_or(u64::MAX);
            batch.insert(&key, value);
        }
        if let Appended::Refused(reason) = self.admit(bytes, n_readings)? {
            return Ok(Appended::Refused(reason));
        }
        if self.budget.take_injected_failure() {
            return Err(StoreError::Io {
                operation: "log append",
                source: sled::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "injected: no space left on device",
                )),
            });
        }
        self.log.apply_batch(batch).map_err(io("log append"))?;
        self.budget.add(bytes);
        Ok(Appended::Stored)
    }

    /// Makes everything written so far durable (one fsync for all writers: group commit).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map_err(io("flush"))?;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The largest key in the log, if any.
    pub fn last_log_key(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.log.last().map_err(io("log read"))?.map(|(key, _)| decode_key(&key)))
    }

    /// Up to `max` chunks with keys greater than `after`, in key order. Undecodable chunks are
    /// skipped and counted; the second value is how many were skipped here.
    pub fn read_log_after(&self, after: u64, max: usize) -> Result<(Vec<LogChunk>, u64), StoreError> {
        let mut chunks = Vec::new();
        let mut skipped = 0;
        let start = after.saturating_add(1).to_be_bytes();
        for item in self.log.range(start..).take(max) {
            let (key, value) = item.map_err(io("log read"))?;
            let key = decode_key(&key);
            match self.decode_chunk(key, &value) {
                Some(chunk) => chunks.push(chunk),
                None => {
                    skipped += 1;
                    self.stats.corrupt_log_chunks.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(key, "Skipped an undecodable log chunk (torn write or unknown format).");
                    // Return it as an empty chunk so the caller's position moves past it.
                    chunks.push(LogChunk {
                        key,
                        ingest_ms: i64::MIN,
                        batch: 0,
                        readings: Vec::new(),
                        marks: Vec::new(),
                    });
                }
            }
        }
        Ok((chunks, skipped))
    }

    fn decode_chunk(&self, key: u64, value: &[u8]) -> Option<LogChunk> {
        let chunk = stored::decode_log_chunk(value).ok()?;
        let field_map = remap(&chunk.field_names, &self.field_names);
        let tag_map = remap(&chunk.tag_names, &self.tag_names);
        let readings = chunk
            .readings
            .into_iter()
            .map(|stored| Reading {
                sensor: Arc::from(stored.sensor),
                ts_ms: stored.ts_ms,
                values: field_map
                    .iter()
                    .map(|from| from.and_then(|idx| stored.values.get(idx).copied().flatten()))
                    .collect(),
                tags: tag_map
                    .iter()
                    .map(|from| from.and_then(|idx| stored.tags.get(idx).cloned().flatten()).map(Arc::from))
                    .collect(),
            })
            .collect();
        Some(LogChunk { key, ingest_ms: chunk.ingest_ms, batch: chunk.batch, readings, marks: chunk.marks })
    }

    /// Deletes every log chunk with a key up to and including `key`.
    pub fn trim_log_through(&self, key: u64) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let mut bytes = 0;
        for item in self.log.range(..=key.to_be_bytes()) {
            let (key, value) = item.map_err(io("log read"))?;
            bytes += entry_bytes(&key, &value);
            batch.remove(key);
            n += 1;
        }
        self.log.apply_batch(batch).map_err(io("log trim"))?;
        self.budget.sub(bytes);
        Ok(n)
    }

    /// Loads the engine's last commit.
    pub fn load_engine(&self) -> Result<EngineSnapshot, StoreError> {
        // The next seqs never fall below what the outbox holds, even if their meta value was
        // unreadable: a new page must never overwrite one a sink has not delivered. An
        // unreadable log position replays the whole log still held (at most the chunks of the
        // last commit, whose trim may not have been flushed, are then counted twice).
        let mut snapshot = EngineSnapshot {
            log_pos: self.meta_u64(META_LOG_POS)?.unwrap_or(0),
            next_seq: self.meta_u64(META_NEXT_SEQ)?.unwrap_or(1).max(self.lane_end(Lane::Results)?),
            next_raw_seq: self.meta_u64(META_NEXT_RAW_SEQ)?.unwrap_or(1).max(self.lane_end(Lane::Raw)?),
            clock_ms: self.meta_u64(META_CLOCK)?.map_or(0, |ms| i64::try_from(ms).unwrap_or(0)),
            entries: Vec::new(),
        };
        for item in self.main.scan_prefix([STATE]) {
            let (key, value) = item.map_err(io("state read"))?;
            match stored::decode_state_page(&value) {
                Ok(entries) => snapshot.entries.extend(entries),
                Err(error) => {
                    self.stats.corrupt_state_pages.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(page = ?&key[1..], %error, "Skipped an undecodable engine state page.");
                }
            }
        }
        Ok(snapshot)
    }

    /// Encodes a page of at most [`OUTBOX_PAGE_ENTRIES`] outbox entries for a later commit.
    pub fn seal_outbox_page(entries: &[OutboxEntry]) -> Result<SealedPage, StoreError> {
        debug_assert!(entries.len() <= OUTBOX_PAGE_ENTRIES);
        let entries: Vec<OutboxEntryV1Ref<'_>> = entries
            .iter()
            .map(|entry| OutboxEntryV1Ref { kind: &entry.kind, group: &entry.group, payload: &entry.payload })
            .collect();
        let compressed = stored::compress_outbox_entries(&entries)
            .map_err(|source| StoreError::Encode { what: "outbox page", source })?;
        Ok(SealedPage { compressed, len: entries.len() })
    }

    /// Applies one engine commit atomically (not yet durable: call [`Store::flush`]).
    pub fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        self.commit_with_raw(commit, None)
    }

    /// Like [`Store::commit`], with raw readings for the raw lane in the same sled batch.
    pub fn commit_with_raw(&self, commit: &Commit, raw: Option<&RawCommit>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut outbox_bytes = encode_pages(
            &mut batch,
            OUTBOX,
            &commit.sealed,
            &commit.outbox,
            commit.next_seq,
            commit.clock_ms,
        )?;
        if let Some(raw) = raw {
            outbox_bytes +=
                encode_pages(&mut batch, RAW, &[], &raw.entries, raw.next_raw_seq, commit.clock_ms)?;
            batch.insert(META_NEXT_RAW_SEQ, &raw.next_raw_seq.to_be_bytes());
        }
        self.write_state_pages(&commit.state, &mut batch)?;
        self.write_mark_pages(&commit.marks, &mut batch)?;
        batch.insert(META_LOG_POS, &commit.log_pos.to_be_bytes());
        batch.insert(META_NEXT_SEQ, &commit.next_seq.to_be_bytes());
        batch.insert(META_CLOCK, &u64::try_from(commit.clock_ms).unwrap_or(0).to_be_bytes());
        self.main.apply_batch(batch).map_err(io("commit"))?;
        self.budget.add(outbox_bytes);
        Ok(())
    }

    /// Merges mark changes into their pages (a mark key's page is the key without its last
    /// byte): each touched page is read, changed and written back whole, or removed when empty.
    fn write_mark_pages(
        &self,
        changes: &[MarkPageChange],
        batch: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        for (page, page_changes) in changes {
            let key = prefixed(MARKS, page);
            let mut entries = match self.main.get(&key).map_err(io("marks read"))? {
                Some(bytes) => stored::decode_mark_page(&bytes).unwrap_or_else(|error| {
                    // Already counted at load; rebuilt from what this commit knows.
                    tracing::error!(%error, "Replacing an undecodable page of source marks.");
                    Vec::new()
                }),
                None => Vec::new(),
            };
            for &(slot, value) in page_changes {
                match (entries.binary_search_by_key(&slot, |(existing, _)| *existing), value) {
                    (Ok(idx), Some(value)) => entries[idx].1 = value,
                    (Ok(idx), None) => {
                        entries.remove(idx);
                    }
                    (Err(idx), Some(value)) => entries.insert(idx, (slot, value)),
                    (Err(_), None) => {}
                }
            }
            if entries.is_empty() {
                batch.remove(key);
            } else {
                let bytes = stored::encode_mark_page(&entries)
                    .map_err(|source| StoreError::Encode { what: "marks page", source })?;
                batch.insert(key, bytes);
            }
        }
        Ok(())
    }

    /// Merges state changes into their pages: each touched page is read, changed and written
    /// back whole (or removed when it becomes empty).
    fn write_state_pages(&self, changes: &[StateChange], batch: &mut sled::Batch) -> Result<(), StoreError> {
        let mut by_page: std::collections::BTreeMap<u16, Vec<&StateChange>> =
            std::collections::BTreeMap::new();
        for change in changes {
            by_page.entry(state_page_of(&change.0)).or_default().push(change);
        }
        for (page, page_changes) in by_page {
            let key = prefixed(STATE, &page.to_be_bytes());
            let mut entries = match self.main.get(&key).map_err(io("state read"))? {
                Some(bytes) => match stored::decode_state_page(&bytes) {
                    Ok(entries) => entries,
                    Err(error) => {
                        // Already reported at load; the page is rebuilt from what the engine has.
                        tracing::error!(page, %error, "Replacing an undecodable engine state page.");
                        Vec::new()
                    }
                },
                None => Vec::new(),
            };
            for (entry_key, value) in page_changes {
                match (entries.binary_search_by(|(existing, _)| existing.as_slice().cmp(entry_key)), value) {
                    (Ok(idx), Some(value)) => entries[idx].1.clone_from(value),
                    (Ok(idx), None) => {
                        entries.remove(idx);
                    }
                    (Err(idx), Some(value)) => entries.insert(idx, (entry_key.clone(), value.clone())),
                    (Err(_), None) => {}
                }
            }
            if entries.is_empty() {
                batch.remove(key);
            } else {
                let bytes = stored::encode_state_page(&entries)
                    .map_err(|source| StoreError::Encode { what: "state page", source })?;
                batch.insert(key, bytes);
            }
        }
        Ok(())
    }

    /// Up to `max` outbox entries with seq greater than `after`, in seq order. Undecodable
    /// pages are skipped and counted.
    pub fn read_outbox_after(&self, after: u64, max: usize) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        self.read_lane_after(Lane::Results, after, max)
    }

    /// [`Store::read_outbox_after`] for either lane.
    pub fn read_lane_after(
        &self,
        lane: Lane,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        let prefix = lane.prefix();
        let wanted = after.saturating_add(1);
        // The page holding `wanted` starts at or before it: begin with the last such page.
        let first_page = self
            .main
            .range(prefixed(prefix, &0u64.to_be_bytes())..=prefixed(prefix, &wanted.to_be_bytes()))
            .next_back()
            .transpose()
            .map_err(io("outbox read"))?
            .map_or(wanted, |(key, _)| decode_key(&key[1..]));
        let mut entries = Vec::new();
        for item in self.main.range(prefixed(prefix, &first_page.to_be_bytes())..vec![prefix + 1]) {
            if entries.len() >= max {
                break;
            }
            let (key, value) = item.map_err(io("outbox read"))?;
            let page_seq = decode_key(&key[1..]);
            match stored::decode_outbox_page(&value) {
                Ok((_, page)) => {
                    for (seq, entry) in (page_seq..).zip(page) {
                        if seq >= wanted {
                            entries.push((
                                seq,
                                OutboxEntry { kind: entry.kind, group: entry.group, payload: entry.payload },
                            ));
                        }
                    }
                }
                Err(error) => {
                    self.stats.corrupt_outbox_entries.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(seq = page_seq, %error, "Skipped an undecodable outbox page.");
                }
            }
        }
        entries.truncate(max);
        Ok(entries)
    }

    /// Deletes outbox pages whose entries all have seq up to and including `seq`.
    pub fn trim_outbox_through(&self, seq: u64) -> Result<usize, StoreError> {
        self.trim_lane_through(Lane::Results, seq)
    }

    /// [`Store::trim_outbox_through`] for either lane.
    pub fn trim_lane_through(&self, lane: Lane, seq: u64) -> Result<usize, StoreError> {
        let prefix = lane.prefix();
        // Drops (budget, ttl) remove pages too: one at a time, so no page is counted out twice.
        let _serialised =
            self.budget.outbox_removal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        let mut bytes = 0;
        let pages: Vec<u64> = self
            .main
            .range(
                prefixed(prefix, &0u64.to_be_bytes())
                    ..=prefixed(prefix, &seq.saturating_add(1).to_be_bytes()),
            )
            .keys()
            .map(|key| key.map(|key| decode_key(&key[1..])))
            .collect::<Result<_, _>>()
            .map_err(io("outbox read"))?;
        // A page ends where the next one starts; for the last page in range, its length decides.
        for (idx, page_seq) in pages.iter().enumerate() {
            let fully_delivered = match pages.get(idx + 1) {
                Some(next_page_seq) => *next_page_seq <= seq.saturating_add(1),
                None => self
                    .outbox_page_len(prefix, *page_seq)?
                    .is_some_and(|len| page_seq + len <= seq.saturating_add(1)),
            };
            if fully_delivered && *page_seq <= seq {
                let key = prefixed(prefix, &page_seq.to_be_bytes());
                if let Some(value) = self.main.get(&key).map_err(io("outbox read"))? {
                    bytes += entry_bytes(&key, &value);
                }
                batch.remove(key);
                n += 1;
            }
        }
        self.main.apply_batch(batch).map_err(io("outbox trim"))?;
        self.budget.sub(bytes);
        Ok(n)
    }

    /// The commit time of the outbox page holding the first entry after `after` (`None`: no
    /// such entry, or a V1 page without a time).
    pub fn commit_time_after(&self, lane: Lane, after: u64) -> Result<Option<i64>, StoreError> {
        let prefix = lane.prefix();
        let wanted = after.saturating_add(1);
        let page = self
            .main
            .range(prefixed(prefix, &0u64.to_be_bytes())..=prefixed(prefix, &wanted.to_be_bytes()))
            .next_back()
            .transpose()
            .map_err(io("outbox read"))?;
        let page = match page {
            Some(page) => Some(page),
            None => self
                .main
                .range(prefixed(prefix, &wanted.to_be_bytes())..vec![prefix + 1])
                .next()
                .transpose()
                .map_err(io("outbox read"))?,
        };
        let Some((_, value)) = page else { return Ok(None) };
        Ok(stored::outbox_page_header(&value).ok().and_then(|(committed_ms, _)| committed_ms))
    }

    fn outbox_page_len(&self, prefix: u8, page_seq: u64) -> Result<Option<u64>, StoreError> {
        let Some(bytes) =
            self.main.get(prefixed(prefix, &page_seq.to_be_bytes())).map_err(io("outbox read"))?
        else {
            return Ok(None);
        };
        Ok(match stored::outbox_page_header(&bytes) {
            Ok((_, n_entries)) => Some(u64::try_from(n_entries).unwrap_or(u64::MAX)),
            // An undecodable page is never delivered; trimming it is safe once it is passed.
            Err(_) => Some(0),
        })
    }

    /// Every source mark as of the last commit: (key, value), in key order. An undecodable page
    /// is skipped, counted (`corrupt_meta`) and reported: the source then treats those marks as
    /// unknown, so a resend they covered is stored again, never lost. The marks of log chunks
    /// after the commit's position come back with those chunks (the replay adds them).
    pub fn load_marks(&self) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let mut marks = Vec::new();
        for item in self.main.scan_prefix([MARKS]) {
            let (key, value) = item.map_err(io("marks read"))?;
            match stored::decode_mark_page(&value) {
                Ok(entries) => {
                    for (slot, value) in entries {
                        let mut mark_key = key[1..].to_vec();
                        mark_key.push(slot);
                        marks.push((mark_key, value));
                    }
                }
                Err(error) => {
                    self.stats.corrupt_meta.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        page = %String::from_utf8_lossy(&key[1..]),
                        %error,
                        "Skipped an undecodable page of source marks; a resend it covered is stored again."
                    );
                }
            }
        }
        Ok(marks)
    }

    /// The last seq sink `name` delivered (0: none).
    pub fn cursor(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.meta_u64(&cursor_key(name))?.unwrap_or(0))
    }

    /// Records that sink `name` delivered everything up to `seq`.
    pub fn set_cursor(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        self.main.insert(cursor_key(name), &seq.to_be_bytes()).map_err(io("cursor write"))?;
        Ok(())
    }

    /// The last raw-lane seq sink `name` delivered (0: none).
    pub fn raw_cursor(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.meta_u64(&[META_RAW_CURSOR, name.as_bytes()].concat())?.unwrap_or(0))
    }

    /// Records that sink `name` delivered the raw lane up to `seq`.
    pub fn set_raw_cursor(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        self.main
            .insert([META_RAW_CURSOR, name.as_bytes()].concat(), &seq.to_be_bytes())
            .map_err(io("cursor write"))?;
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

    /// One past the last seq held by `lane`'s pages (1 when it is empty). An undecodable last
    /// page is assumed full, so that no new page can ever overwrite it.
    fn lane_end(&self, lane: Lane) -> Result<u64, StoreError> {
        let prefix = lane.prefix();
        let last = self
            .main
            .range(prefixed(prefix, &0u64.to_be_bytes())..vec![prefix + 1])
            .next_back()
            .transpose()
            .map_err(io("outbox read"))?;
        let Some((key, value)) = last else { return Ok(1) };
        let page_seq = decode_key(&key[1..]);
        let len = stored::outbox_page_header(&value).map_or(OUTBOX_PAGE_ENTRIES, |(_, len)| len);
        Ok(page_seq.saturating_add(u64::try_from(len).unwrap_or(u64::MAX)).max(1))
    }
}

/// Adds `sealed` pages, then `entries` in pages, as outbox pages under `prefix` to `batch`,
/// the last entry getting seq `next_seq - 1`; returns the accounted bytes.
fn encode_pages(
    batch: &mut sled::Batch,
    prefix: u8,
    sealed: &[SealedPage],
    entries: &[OutboxEntry],
    next_seq: u64,
    committed_ms: i64,
) -> Result<u64, StoreError> {
    let n_new = sealed.iter().map(SealedPage::len).sum::<usize>() + entries.len();
    let mut page_seq = next_seq - u64::try_from(n_new).unwrap_or(0);
    let mut bytes_total = 0;
    let tail: Vec<SealedPage> =
        entries.chunks(OUTBOX_PAGE_ENTRIES).map(Store::seal_outbox_page).collect::<Result<_, _>>()?;
    for page in sealed.iter().chain(&tail) {
        let bytes = stored::encode_outbox_page(committed_ms, page.len, &page.compressed)
            .map_err(|source| StoreError::Encode { what: "outbox page", source })?;
        let key = prefixed(prefix, &page_seq.to_be_bytes());
        bytes_total += entry_bytes(&key, &bytes);
        batch.insert(key, bytes);
        page_seq += u64::try_from(page.len).unwrap_or(0);
    }
    Ok(bytes_total)
}

fn is_lock_conflict(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

/// The state page of an engine key: FNV-1a, which is stable across builds and platforms
/// (std's hasher is not guaranteed to be).
fn state_page_of(key: &[u8]) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u16::try_from(hash % u64::from(STATE_PAGES)).expect("STATE_PAGES fits in u16")
}

fn cursor_key(name: &str) -> Vec<u8> {
    [META_CURSOR, name.as_bytes()].concat()
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

/// For each current name, the index it had in the stored names.
fn remap(stored: &[String], current: &[String]) -> Vec<Option<usize>> {
    if stored == current {
        return (0..current.len()).map(Some).collect();
    }
    current.iter().map(|name| stored.iter().position(|old| old == name)).collect()
}

const _: () = assert!(META == b'm');

#[cfg(test)]
mod corruption_tests;
#[cfg(test)]
mod power_loss_tests;
#[cfg(test)]
mod tests;
