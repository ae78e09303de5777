//! The engine's commit: results (sealed into outbox pages), engine state pages, the log
//! position and the sources' marks, written in one sled batch; and loading them back.

use std::sync::atomic::Ordering;

use crate::storage::budget::entry_bytes;
use crate::storage::stored::{self, OutboxEntryV1Ref};
use crate::storage::{
    io, prefixed, Lane, OutboxEntry, Store, StoreError, MARKS, META_CLOCK, META_LOG_POS, META_NEXT_RAW_SEQ,
    META_NEXT_SEQ, META_STATE_INDEX, OUTBOX, OUTBOX_PAGE_ENTRIES, RAW, STATE_PAGES,
};

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

/// What the store knows of the state's pages as of the last commit ([`Store::load_engine_meta`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateIndex {
    /// Pages that may hold micro-batch entries (keys starting with `b`), ascending.
    pub batch_pages: Vec<u16>,
    /// A lower bound of the processing time at which the engine may close, release or forget
    /// anything of its state beyond the micro-batch (`i64::MAX`: nothing pending), as the
    /// committing aggregator gave it in [`Commit::state_due_ms`].
    pub due_ms: i64,
}

/// One stored engine state entry: its key and value.
pub type StateEntry = (Vec<u8>, Vec<u8>);

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
    /// A lower bound of the processing time at which the engine state after this commit may
    /// close, release or forget anything beyond the micro-batch (`i64::MAX`: nothing pending).
    /// With it the commit writes the state index that lets a restart load state lazily; `None`
    /// removes the index (the next start loads every page).
    pub state_due_ms: Option<i64>,
}

/// Raw readings committed with an engine commit (the raw lane of [`Commit`]).
#[derive(Debug, Default)]
pub struct RawCommit {
    /// Raw records; they get seqs `next_raw_seq - entries.len() .. next_raw_seq`.
    pub entries: Vec<OutboxEntry>,
    /// Next raw seq after this commit.
    pub next_raw_seq: u64,
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

/// The state page of an engine key: FNV-1a (stable across builds and platforms, as std's hasher
/// is not guaranteed to be) of the sensor the key names, or of the whole key if it names none.
///
/// Every entry of one sensor (its micro-batch, clock, tombstone and one per window) lies in one
/// page, so that a restart loads one page for a sensor's first reading, not one per key (store
/// format 3; format 2 hashed whole keys, and [`Store::open`] moves such a store's entries).
pub fn state_page_of(key: &[u8]) -> u16 {
    page_of_bytes(placement_part(key))
}

/// The state page of every entry of `sensor` ([`state_page_of`] of any of its keys).
pub fn state_page_of_sensor(sensor: &str) -> u16 {
    page_of_bytes(sensor.as_bytes())
}

/// The part of an engine key that chooses its page: the sensor id of the keys the engine
/// writes per sensor (`engine/state.rs`: `b`, `c` or `t` + id; `w` + the window name's length
/// in one byte + name + id); the whole key otherwise (the engine-wide `e`, anything unknown).
fn placement_part(key: &[u8]) -> &[u8] {
    match key.split_first() {
        Some((b'b' | b'c' | b't', sensor)) if !sensor.is_empty() => sensor,
        Some((b'w', [name_len, rest @ ..])) if *name_len > 0 && rest.len() > usize::from(*name_len) => {
            &rest[usize::from(*name_len)..]
        }
        _ => key,
    }
}

/// FNV-1a of `bytes`, modulo [`STATE_PAGES`].
pub(crate) fn page_of_bytes(bytes: &[u8]) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u16::try_from(hash % u64::from(STATE_PAGES)).expect("STATE_PAGES fits in u16")
}

impl Store {
    /// Loads the engine's last commit: every state page ([`Store::load_engine_meta`] and
    /// [`Store::load_state_pages`] of all pages).
    pub fn load_engine(&self) -> Result<EngineSnapshot, StoreError> {
        let (mut snapshot, _) = self.load_engine_meta()?;
        snapshot.entries = self.load_state_pages(&(0..STATE_PAGES).collect::<Vec<_>>())?;
        Ok(snapshot)
    }

    /// Loads the engine's last commit without its state entries, and the state index if the
    /// last commit wrote one: which pages to load first (micro-batch entries) and until when
    /// the others may wait.
    pub fn load_engine_meta(&self) -> Result<(EngineSnapshot, Option<StateIndex>), StoreError> {
        // The next seqs never fall below what the outbox holds, even if their meta value was
        // unreadable: a new page must never overwrite one a sink has not delivered. An
        // unreadable log position replays the whole log still held (at most the chunks of the
        // last commit, whose trim may not have been flushed, are then counted twice).
        let log_pos = self.meta_u64(META_LOG_POS)?;
        let next_seq = self.meta_u64(META_NEXT_SEQ)?;
        let clock_ms = self.meta_u64(META_CLOCK)?;
        let snapshot = EngineSnapshot {
            log_pos: log_pos.unwrap_or(0),
            next_seq: next_seq.unwrap_or(1).max(self.lane_end(Lane::Results)?),
            next_raw_seq: self.meta_u64(META_NEXT_RAW_SEQ)?.unwrap_or(1).max(self.lane_end(Lane::Raw)?),
            clock_ms: clock_ms.map_or(0, |ms| i64::try_from(ms).unwrap_or(0)),
            entries: Vec::new(),
        };
        let index = match (log_pos, next_seq, clock_ms) {
            (Some(log_pos), Some(next_seq), Some(clock_ms)) => {
                self.current_state_index(log_pos, next_seq, clock_ms)?.map(|index| StateIndex {
                    batch_pages: (0..STATE_PAGES)
                        .filter(|page| has_page(&index.batch_pages, *page))
                        .collect(),
                    due_ms: index.due_ms,
                })
            }
            _ => None,
        };
        Ok((snapshot, index))
    }

    /// The stored state index, if it was written by the commit whose position, next seq and
    /// clock are given (the last one): an index left by an earlier commit is stale.
    fn current_state_index(
        &self,
        log_pos: u64,
        next_seq: u64,
        clock_ms: u64,
    ) -> Result<Option<stored::StateIndexV1>, StoreError> {
        let Some(bytes) = self.main.get(META_STATE_INDEX).map_err(io("state index read"))? else {
            return Ok(None);
        };
        match stored::decode_state_index(&bytes) {
            Ok(index)
                if (index.log_pos, index.next_seq, index.clock_ms) == (log_pos, next_seq, clock_ms)
                    && index.batch_pages.len() == BATCH_PAGE_BYTES =>
            {
                Ok(Some(index))
            }
            Ok(_) => Ok(None),
            Err(error) => {
                self.stats.corrupt_meta.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "Skipped an undecodable engine state index; every page loads at start.");
                Ok(None)
            }
        }
    }

    /// Replaces the micro-batch pages of the stored state index by `batch_pages`, after the
    /// entries moved to other pages ([`Store::upgrade_format`]); its commit fields are kept, so
    /// a current index stays current and a stale one stale. An index that cannot be decoded is
    /// left as it is: the load reports it and loads every page, as before.
    pub(crate) fn reindex_batch_pages(
        &self,
        batch_pages: &[u16],
        batch: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        let Some(bytes) = self.main.get(META_STATE_INDEX).map_err(io("state index read"))? else {
            return Ok(());
        };
        let Ok(mut index) = stored::decode_state_index(&bytes) else { return Ok(()) };
        let mut bitmap = vec![0; BATCH_PAGE_BYTES];
        for page in batch_pages {
            set_page(&mut bitmap, *page, true);
        }
        index.batch_pages = bitmap;
        let bytes = stored::encode_state_index(&index)
            .map_err(|source| StoreError::Encode { what: "state index", source })?;
        batch.insert(META_STATE_INDEX, bytes);
        Ok(())
    }

    /// The pages holding micro-batch entries, read from every page: for a commit when the last
    /// one left no current index (the first commit after an upgrade or a restore of every
    /// page). An undecodable page or delta counts as holding none: it was reported at load, and
    /// the engine started without its entries.
    fn scan_batch_pages(&self) -> Result<Vec<u8>, StoreError> {
        let mut batch_pages = vec![0; BATCH_PAGE_BYTES];
        for page in 0..STATE_PAGES {
            set_page(&mut batch_pages, page, self.page_holds_batch(page)?);
        }
        Ok(batch_pages)
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
        // Before the state pages are written: the index is checked against the last commit.
        let prior_index = match commit.state_due_ms {
            Some(_) => self.prior_batch_pages()?,
            None => None,
        };
        let written = self.write_state_pages(&commit.state, &mut batch)?;
        match commit.state_due_ms {
            Some(due_ms) => {
                let mut batch_pages = match prior_index {
                    Some(batch_pages) => batch_pages,
                    None => self.scan_batch_pages()?,
                };
                for &(page, holds_batch) in &written.touched {
                    set_page(&mut batch_pages, page, holds_batch);
                }
                let index = stored::StateIndexV1 {
                    log_pos: commit.log_pos,
                    next_seq: commit.next_seq,
                    clock_ms: u64::try_from(commit.clock_ms).unwrap_or(0),
                    batch_pages,
                    due_ms,
                };
                let bytes = stored::encode_state_index(&index)
                    .map_err(|source| StoreError::Encode { what: "state index", source })?;
                batch.insert(META_STATE_INDEX, bytes);
            }
            None => batch.remove(META_STATE_INDEX),
        }
        self.write_mark_pages(&commit.marks, &mut batch)?;
        batch.insert(META_LOG_POS, &commit.log_pos.to_be_bytes());
        batch.insert(META_NEXT_SEQ, &commit.next_seq.to_be_bytes());
        batch.insert(META_CLOCK, &u64::try_from(commit.clock_ms).unwrap_or(0).to_be_bytes());
        self.main.apply_batch(batch).map_err(io("commit"))?;
        self.pages_committed(written);
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

    /// The batch pages of the current state index, if the last commit wrote one.
    fn prior_batch_pages(&self) -> Result<Option<Vec<u8>>, StoreError> {
        // Read without counting: an undecodable value was counted at load already.
        let meta = |key: &[u8]| -> Result<Option<u64>, StoreError> {
            let value = self.main.get(key).map_err(io("meta read"))?;
            Ok(value.and_then(|bytes| <[u8; 8]>::try_from(&*bytes).ok()).map(u64::from_be_bytes))
        };
        let (Some(log_pos), Some(next_seq), Some(clock_ms)) =
            (meta(META_LOG_POS)?, meta(META_NEXT_SEQ)?, meta(META_CLOCK)?)
        else {
            return Ok(None);
        };
        Ok(self.current_state_index(log_pos, next_seq, clock_ms)?.map(|index| index.batch_pages))
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
}

/// Bytes of the state index's page bitmap.
const BATCH_PAGE_BYTES: usize = STATE_PAGES.div_ceil(8) as usize;

fn has_page(bitmap: &[u8], page: u16) -> bool {
    bitmap.get(usize::from(page / 8)).is_some_and(|byte| byte & (1 << (page % 8)) != 0)
}

fn set_page(bitmap: &mut [u8], page: u16, on: bool) {
    if let Some(byte) = bitmap.get_mut(usize::from(page / 8)) {
        if on {
            *byte |= 1 << (page % 8);
        } else {
            *byte &= !(1 << (page % 8));
        }
    }
}
