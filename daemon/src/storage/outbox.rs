//! The outbox read by the sinks: pages of results (and raw readings) by lane, trimmed once
//! every sink's cursor has passed them, and the sinks' durable cursors.

use std::sync::atomic::Ordering;

use crate::storage::budget::entry_bytes;
use crate::storage::stored;
use crate::storage::{
    decode_key, io, prefixed, Lane, Store, StoreError, META_CURSOR, META_RAW_CURSOR, OUTBOX_PAGE_ENTRIES,
};

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

pub(super) fn cursor_key(name: &str) -> Vec<u8> {
    [META_CURSOR, name.as_bytes()].concat()
}

impl Store {
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
        // Not while `downsample` replaces pages: a sink reads merged pages only once durable.
        let _serialised =
            self.budget.outbox_removal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The page holding `wanted` starts at or before it: begin with the last such page.
        let first_page = self.page_holding(prefix, wanted)?;
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
        // A page ends where the next one starts, or earlier: `downsample` leaves empty seqs
        // after a merged page. So its length decides, or the next page's start.
        for (idx, page_seq) in pages.iter().enumerate() {
            let fully_delivered = pages.get(idx + 1).is_some_and(|next| *next <= seq.saturating_add(1))
                || self
                    .outbox_page_len(prefix, *page_seq)?
                    .is_some_and(|len| page_seq + len <= seq.saturating_add(1));
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

    /// The first seq of the commit that wrote `through` (the pages up to it that carry the
    /// same commit time: each commit starts new pages); `None` when no page holds `through`, or
    /// its page has no time (V1). Live first splits a backlog there: the newest commit's
    /// records are current, everything before them is backlog.
    pub fn commit_start(&self, lane: Lane, through: u64) -> Result<Option<u64>, StoreError> {
        let prefix = lane.prefix();
        let mut pages = self
            .main
            .range(prefixed(prefix, &0u64.to_be_bytes())..=prefixed(prefix, &through.to_be_bytes()))
            .rev();
        let Some(page) = pages.next().transpose().map_err(io("outbox read"))? else { return Ok(None) };
        let (key, value) = page;
        let mut start = decode_key(&key[1..]);
        let Ok((Some(committed_ms), len)) = stored::outbox_page_header(&value) else { return Ok(None) };
        if start.saturating_add(u64::try_from(len).unwrap_or(u64::MAX)) <= through {
            return Ok(None);
        }
        for page in pages {
            let (key, value) = page.map_err(io("outbox read"))?;
            let page_seq = decode_key(&key[1..]);
            match stored::outbox_page_header(&value) {
                Ok((Some(ms), len))
                    if ms == committed_ms && page_seq + u64::try_from(len).unwrap_or(0) == start =>
                {
                    start = page_seq;
                }
                _ => break,
            }
        }
        Ok(Some(start))
    }

    /// The key seq of the page that may hold seq `wanted` (the last page starting at or before
    /// it), or `wanted` itself when no page starts that early: where a read from `wanted` begins.
    pub(super) fn page_holding(&self, prefix: u8, wanted: u64) -> Result<u64, StoreError> {
        Ok(self
            .main
            .range(prefixed(prefix, &0u64.to_be_bytes())..=prefixed(prefix, &wanted.to_be_bytes()))
            .next_back()
            .transpose()
            .map_err(io("outbox read"))?
            .map_or(wanted, |(key, _)| decode_key(&key[1..])))
    }

    pub(super) fn outbox_page_len(&self, prefix: u8, page_seq: u64) -> Result<Option<u64>, StoreError> {
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

    /// One past the last seq held by `lane`'s pages (1 when it is empty). An undecodable last
    /// page is assumed full, so that no new page can ever overwrite it.
    pub(super) fn lane_end(&self, lane: Lane) -> Result<u64, StoreError> {
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
}
