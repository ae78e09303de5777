//! The engine's state in the store: entries hashed into [`STATE_PAGES`] pages (`s` + page), and
//! beside each page the deltas of the commits since it was last written (`d` + page + number).
//!
//! A commit writes, for each page it changes, only its changes as a new delta, so its cost
//! follows the sensors that changed, not the state held. It folds a page's deltas into the page
//! (a compaction: the page rewritten, its deltas deleted, in the same batch) once they hold
//! half the page's bytes or number [`MAX_STATE_DELTAS`], and rewrites a page at once when a
//! commit changes an eighth of it or more ([`FOLD_FRACTION`]; steady traffic from many
//! sensors): a page loads from at most that many values. Reading a page applies its deltas in
//! order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use crate::storage::stored::{self, Bytes, StateChangeRef, StateEntryRef};
use crate::storage::{
    io, prefixed, StateChange, StateEntry, Store, StoreError, STATE, STATE_DELTA, STATE_PAGES,
};

/// The first byte of the engine's micro-batch keys (`engine/state.rs`): the state index
/// records which pages hold them. The store knows nothing else of the engine's keys.
const BATCH_KEY_PREFIX: u8 = b'b';

/// Most deltas kept beside one page before they are folded into it.
pub(crate) const MAX_STATE_DELTAS: usize = 32;

/// A commit's changes to a page that weigh at least this fraction of it rewrite the page.
pub(crate) const FOLD_FRACTION: usize = 8;

/// Bytes of changes (uncompressed) a page's deltas may gather before they are folded even when
/// the page itself is smaller (so that a small page changed a little is not rewritten by every
/// commit, as it was before deltas).
pub(crate) const STATE_DELTA_MIN_BYTES: usize = 16 * 1024;

/// What the store knows of one state page as of the last commit, kept in memory from the
/// page's first read on, so that a commit needs no read of the pages it changes.
#[derive(Debug, Clone, Default)]
pub(crate) struct PageInfo {
    /// Bytes of the page's entries, uncompressed ([`entry_bytes`]; 0: no page).
    base_bytes: usize,
    /// The page's deltas, in order: number and bytes of its changes, uncompressed.
    deltas: Vec<(u32, usize)>,
    /// The micro-batch keys the page holds, its deltas applied.
    batch_keys: BTreeSet<Vec<u8>>,
}

impl PageInfo {
    fn delta_bytes(&self) -> usize {
        self.deltas.iter().map(|(_, bytes)| bytes).sum()
    }

    fn holds_batch(&self) -> bool {
        !self.batch_keys.is_empty()
    }

    fn apply_batch_keys(&mut self, changes: &[StateChangeRef<'_>]) {
        for (key, value) in changes {
            if key.0.first() == Some(&BATCH_KEY_PREFIX) {
                match value {
                    Some(_) => self.batch_keys.insert(key.0.to_vec()),
                    None => self.batch_keys.remove(key.0),
                };
            }
        }
    }
}

/// Every page's [`PageInfo`], once read.
#[derive(Debug)]
pub(crate) struct PageBook(Mutex<Vec<Option<PageInfo>>>);

impl Default for PageBook {
    fn default() -> PageBook {
        PageBook(Mutex::new(vec![None; usize::from(STATE_PAGES)]))
    }
}

impl PageBook {
    fn get(&self, page: u16) -> Option<PageInfo> {
        self.0.lock().ok().and_then(|pages| pages.get(usize::from(page)).cloned().flatten())
    }

    fn set(&self, page: u16, info: PageInfo) {
        if let Ok(mut pages) = self.0.lock() {
            if let Some(slot) = pages.get_mut(usize::from(page)) {
                *slot = Some(info);
            }
        }
    }
}

/// The new stored form of the pages one commit changes, to be applied to the book once the
/// commit's batch is applied.
pub(crate) struct PagesWritten {
    /// Each changed page and whether it now holds micro-batch entries.
    pub(crate) touched: Vec<(u16, bool)>,
    infos: Vec<(u16, PageInfo)>,
}

fn delta_prefix(page: u16) -> Vec<u8> {
    prefixed(STATE_DELTA, &page.to_be_bytes())
}

fn delta_key(page: u16, number: u32) -> Vec<u8> {
    let mut key = delta_prefix(page);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

/// `entries` (sorted by key) with `changes` (sorted by key, one per key) applied.
fn apply_changes(entries: Vec<StateEntry>, changes: &[StateChangeRef<'_>]) -> Vec<StateEntry> {
    let mut merged = Vec::with_capacity(entries.len() + changes.len());
    let mut old = entries.into_iter().peekable();
    for (key, value) in changes {
        while let Some(entry) = old.next_if(|(old_key, _)| old_key.as_slice() < key.0) {
            merged.push(entry);
        }
        old.next_if(|(old_key, _)| old_key.as_slice() == key.0);
        if let Some(value) = value {
            merged.push((key.0.to_vec(), value.0.to_vec()));
        }
    }
    merged.extend(old);
    merged
}

/// A page merged by [`merge_and_encode`].
struct Folded {
    /// The encoded page (`None`: no entry left).
    bytes: Option<Vec<u8>>,
    /// Its micro-batch keys.
    batch_keys: BTreeSet<Vec<u8>>,
    /// Bytes of its entries, uncompressed ([`entry_bytes`]).
    entries_bytes: usize,
}

/// What an entry or change weighs in a page or delta before compression, about: its key, its
/// value and their lengths.
fn entry_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    key.len() + value.map_or(0, <[u8]>::len) + 4
}

fn entries_bytes(entries: &[StateEntry]) -> usize {
    entries.iter().map(|(key, value)| entry_bytes(key, Some(value))).sum()
}

fn changes_bytes(changes: &[StateChangeRef<'_>]) -> usize {
    changes.iter().map(|(key, value)| entry_bytes(key.0, value.map(|value| value.0))).sum()
}

/// A page's entries (sorted by key) with `changes` (sorted by key, one per key) applied, encoded.
fn merge_and_encode(
    entries: &[StateEntryRef<'_>],
    changes: &[StateChangeRef<'_>],
) -> Result<Folded, postcard::Error> {
    let mut merged: Vec<StateEntryRef<'_>> = Vec::with_capacity(entries.len() + changes.len());
    let mut old = entries.iter().peekable();
    for (key, value) in changes {
        while let Some(entry) = old.next_if(|(old_key, _)| old_key.0 < key.0) {
            merged.push(*entry);
        }
        old.next_if(|(old_key, _)| old_key.0 == key.0);
        if let Some(value) = value {
            merged.push((*key, *value));
        }
    }
    merged.extend(old);
    let batch_keys = merged
        .iter()
        .map(|(key, _)| key.0)
        .take_while(|key| key.first() == Some(&BATCH_KEY_PREFIX))
        .map(<[u8]>::to_vec)
        .collect();
    let entries_bytes = merged.iter().map(|(key, value)| entry_bytes(key.0, Some(value.0))).sum();
    let bytes = if merged.is_empty() { None } else { Some(stored::encode_state_page(&merged)?) };
    Ok(Folded { bytes, batch_keys, entries_bytes })
}

impl Store {
    /// The engine state entries of `pages`, page by page, each with its deltas applied. An
    /// undecodable page or delta is skipped, counted and reported (the engine then starts
    /// without what it held; the next commit that touches the page rebuilds it from what the
    /// engine has).
    pub fn load_state_pages(&self, pages: &[u16]) -> Result<Vec<StateEntry>, StoreError> {
        let mut entries = Vec::new();
        for page in pages {
            let (page_entries, info) = self.read_page(*page, true)?;
            self.pages.set(*page, info);
            entries.extend(page_entries);
        }
        Ok(entries)
    }

    /// One page's entries, its deltas applied, and what the book keeps of it; undecodable
    /// values are counted and reported if `report`.
    pub(crate) fn read_page(
        &self,
        page: u16,
        report: bool,
    ) -> Result<(Vec<StateEntry>, PageInfo), StoreError> {
        let mut info = PageInfo::default();
        let key = prefixed(STATE, &page.to_be_bytes());
        let mut entries = match self.main.get(&key).map_err(io("state read"))? {
            Some(value) => {
                let read = stored::read_state_page(&value, |page_entries| {
                    page_entries
                        .iter()
                        .map(|(key, value)| (key.0.to_vec(), value.0.to_vec()))
                        .collect::<Vec<_>>()
                });
                if let Ok(entries) = &read {
                    info.base_bytes = entries_bytes(entries);
                }
                read.unwrap_or_else(|error| {
                    if report {
                        self.stats.corrupt_state_pages.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(page, %error, "Skipped an undecodable engine state page.");
                    }
                    Vec::new()
                })
            }
            None => Vec::new(),
        };
        for item in self.main.scan_prefix(delta_prefix(page)) {
            let (key, value) = item.map_err(io("state read"))?;
            let Some(number) = key.get(3..).and_then(|number| <[u8; 4]>::try_from(number).ok()) else {
                continue;
            };
            let read = stored::read_state_delta(&value, |changes| {
                entries = apply_changes(std::mem::take(&mut entries), changes);
                changes_bytes(changes)
            });
            info.deltas.push((u32::from_be_bytes(number), *read.as_ref().unwrap_or(&0)));
            if let Err(error) = read {
                if report {
                    self.stats.corrupt_state_pages.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(page, %error, "Skipped an undecodable engine state delta.");
                }
            }
        }
        info.batch_keys = entries
            .iter()
            .map(|(key, _)| key)
            .take_while(|key| key.first() == Some(&BATCH_KEY_PREFIX))
            .cloned()
            .collect();
        Ok((entries, info))
    }

    /// What the book knows of `page`, read first if it does not know it yet.
    fn page_info(&self, page: u16) -> Result<PageInfo, StoreError> {
        match self.pages.get(page) {
            Some(info) => Ok(info),
            None => {
                let (_, info) = self.read_page(page, false)?;
                self.pages.set(page, info.clone());
                Ok(info)
            }
        }
    }

    /// Whether `page` holds micro-batch entries as of the last commit.
    pub(crate) fn page_holds_batch(&self, page: u16) -> Result<bool, StoreError> {
        Ok(self.page_info(page)?.holds_batch())
    }

    /// Adds state changes to `batch`: per changed page, a delta with its changes, or the page
    /// rewritten with its deltas folded in (see the module's doc). Entries of a page that no
    /// change names are kept as stored, so a commit of an engine that has not loaded every page
    /// loses none. Apply the result with [`Store::pages_committed`] once the batch is applied.
    pub(crate) fn write_state_pages(
        &self,
        changes: &[StateChange],
        batch: &mut sled::Batch,
    ) -> Result<PagesWritten, StoreError> {
        let mut written = PagesWritten { touched: Vec::new(), infos: Vec::new() };
        let mut by_page: BTreeMap<u16, Vec<&StateChange>> = BTreeMap::new();
        for change in changes {
            by_page.entry(crate::storage::state_page_of(&change.0)).or_default().push(change);
        }
        for (page, mut page_changes) in by_page {
            // Stable: of two changes to one key, the later stays last, and is the one kept.
            page_changes.sort_by(|a, b| a.0.cmp(&b.0));
            let mut changes: Vec<StateChangeRef<'_>> = Vec::with_capacity(page_changes.len());
            for (key, value) in page_changes {
                let change = (Bytes(key.as_slice()), value.as_deref().map(Bytes));
                match changes.last_mut() {
                    Some(last) if last.0 == change.0 => *last = change,
                    _ => changes.push(change),
                }
            }
            let info = self.page_info(page)?;
            let bytes = changes_bytes(&changes);
            // Deltas pay for changes small beside their page (a few of its sensors). A change of
            // an eighth of the page or more (steady traffic from many sensors) rewrites the page
            // at once, and no delta is encoded: measured at 100,000 sensors, half-page deltas
            // folded a commit later wrote twice the bytes of rewriting the page each time.
            let fold = bytes * FOLD_FRACTION >= info.base_bytes
                || info.deltas.len() >= MAX_STATE_DELTAS
                || info.delta_bytes() + bytes > (info.base_bytes / 2).max(STATE_DELTA_MIN_BYTES);
            let info = if fold {
                self.fold_page(page, &changes, batch)?
            } else {
                let delta = stored::encode_state_delta(&changes)
                    .map_err(|source| StoreError::Encode { what: "state delta", source })?;
                let mut info = info;
                let number = info.deltas.last().map_or(0, |(number, _)| number.saturating_add(1));
                info.deltas.push((number, bytes));
                info.apply_batch_keys(&changes);
                batch.insert(delta_key(page, number), delta);
                info
            };
            written.touched.push((page, info.holds_batch()));
            written.infos.push((page, info));
        }
        Ok(written)
    }

    /// Rewrites `page` with its deltas and `changes` applied, and deletes its deltas.
    fn fold_page(
        &self,
        page: u16,
        changes: &[StateChangeRef<'_>],
        batch: &mut sled::Batch,
    ) -> Result<PageInfo, StoreError> {
        // Undecodable values were reported at load; the page is rebuilt from what is readable
        // and what the engine changed.
        let key = prefixed(STATE, &page.to_be_bytes());
        let has_deltas = self.main.scan_prefix(delta_prefix(page)).next().is_some();
        let folded = if has_deltas {
            let (entries, stored_info) = self.read_page(page, false)?;
            for (number, _) in &stored_info.deltas {
                batch.remove(delta_key(page, *number));
            }
            let entries: Vec<StateEntryRef<'_>> =
                entries.iter().map(|(key, value)| (Bytes(key), Bytes(value))).collect();
            merge_and_encode(&entries, changes)
        } else {
            // A page without deltas (most of it changed at once, as under steady traffic from
            // every sensor): merged as it is read, borrowed.
            match self.main.get(&key).map_err(io("state read"))? {
                Some(value) => stored::read_state_page(&value, |entries| merge_and_encode(entries, changes))
                    .unwrap_or_else(|_| merge_and_encode(&[], changes)),
                None => merge_and_encode(&[], changes),
            }
        }
        .map_err(|source| StoreError::Encode { what: "state page", source })?;
        let info =
            PageInfo { base_bytes: folded.entries_bytes, batch_keys: folded.batch_keys, deltas: Vec::new() };
        match folded.bytes {
            Some(bytes) => batch.insert(key, bytes),
            None => batch.remove(key),
        }
        Ok(info)
    }

    /// Moves every state entry to the page [`state_page_of`](crate::storage::state_page_of)
    /// gives it now, in `batch`: every page and delta is read, removed, and the entries written
    /// anew as whole pages (the upgrade to store format 3, which places a sensor's entries in
    /// one page; see [`Store::upgrade_format`]). Returns how many entries it wrote and the
    /// pages now holding micro-batch entries. An undecodable page or delta is reported and
    /// counted as at load; what it held is lost either way, as when the engine starts without it.
    pub(crate) fn replace_state_entries(
        &self,
        batch: &mut sled::Batch,
    ) -> Result<(usize, Vec<u16>), StoreError> {
        let mut by_page: BTreeMap<u16, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        for page in 0..STATE_PAGES {
            let (entries, _) = self.read_page(page, true)?;
            batch.remove(prefixed(STATE, &page.to_be_bytes()));
            for key in self.main.scan_prefix(delta_prefix(page)).keys() {
                batch.remove(key.map_err(io("state read"))?);
            }
            for (key, value) in entries {
                by_page.entry(crate::storage::state_page_of(&key)).or_default().insert(key, value);
            }
        }
        let mut n_entries = 0;
        let mut batch_pages = Vec::new();
        for (page, entries) in &by_page {
            n_entries += entries.len();
            if entries.keys().any(|key| key.first() == Some(&BATCH_KEY_PREFIX)) {
                batch_pages.push(*page);
            }
            let refs: Vec<StateEntryRef<'_>> =
                entries.iter().map(|(key, value)| (Bytes(key), Bytes(value))).collect();
            let bytes = stored::encode_state_page(&refs)
                .map_err(|source| StoreError::Encode { what: "state page", source })?;
            batch.insert(prefixed(STATE, &page.to_be_bytes()), bytes);
        }
        Ok((n_entries, batch_pages))
    }

    /// Records what a commit's applied batch made of the pages it changed.
    pub(crate) fn pages_committed(&self, written: PagesWritten) {
        for (page, info) in written.infos {
            self.pages.set(page, info);
        }
    }
}
