//! The `downsample` policy's mechanics: which outbox pages may be merged into coarser records
//! (`engine::downsample` does the merging), and their replacement, exact in bytes and safe
//! against crashes and against the sinks reading and delivering meanwhile.
//!
//! # Which pages
//! The oldest pages first, never the lane's newest page (the engine's latest commit). A merge
//! group is a run of consecutive pages that, for every sink (every name with a stored cursor or
//! delivered ranges, and every registered sink), is either wholly delivered or wholly
//! undelivered, and that lies outside each registered sink's in-flight zone: the
//! `batch_max_records` entries after each end of its delivered segments
//! ([`Delivered::segment_ends`]), where its next batch (or the one a crash left delivered but
//! unrecorded) starts. So a sink that delivered the group skips the merged records (their seqs
//! are inside its delivered set), and a sink that had not gets them instead of the originals:
//! never both, never neither. A group takes what the budget needs (a quarter more, at least
//! [`MIN_GROUP_PAGES`]), at most [`MAX_GROUP_PAGES`] pages, so that one merge decodes a bounded
//! amount and the newest records keep their resolution as long as the budget allows; partial hours left at a group's edge merge again later (their ids
//! differ by the span they cover). Once the budget is full, merging goes on until a sixteenth
//! of it is free again, so that merges are rare and large rather than one per commit.
//!
//! # The replacement
//! In one sled batch the group's pages are removed and the merged entries written as new pages
//! keyed at the group's first seq (the seqs after them up to the group's end stay empty; a page
//! keeps the commit time of the group's first page). The batch is flushed before the
//! outbox-removal lock is released, and the sinks read the outbox under that lock too, so no
//! sink reads a merged page that a power cut could still revert to the originals. The budget's
//! `used` moves by exactly the bytes removed and added.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use crate::engine::downsample::{merge, Merged, Part};
use crate::storage::budget::entry_bytes;
use crate::storage::stored::{self, OutboxEntryV1Ref};
use crate::storage::{
    decode_key, io, prefixed, Delivered, Lane, OutboxEntry, Store, StoreError, OUTBOX_PAGE_ENTRIES,
};

/// Most pages one merge decodes (64 × 256 = 16,384 records: a few MB of JSON at most).
pub(crate) const MAX_GROUP_PAGES: usize = 64;

/// What earlier merges learnt, so that a full budget does not decode the same pages again on
/// every append and commit.
#[derive(Debug, Default)]
pub(crate) struct DownsampleMemo {
    /// Pages a merge at a level found nothing to reduce in: (lane prefix, resolution, page
    /// seq) → the page's value length. They are not decoded again at that level until they
    /// change.
    done: HashMap<(u8, i64, u64), usize>,
    /// (lane prefix, resolution) → the seq below which every page is done at that level: the
    /// walk starts there. Merges at a level only change pages at or past its frontier (and a
    /// coarser level's records are never merged at a finer one), trims and drops only remove
    /// pages, new pages come last: what is below stays done.
    frontier: HashMap<(u8, i64), u64>,
}

/// Fewest pages a merge takes (when there are so many), so that a merge is worth its decoding
/// and partial hours at its edges stay few: with 4, 1000 sensor-fields (an hour is 240 pages)
/// kept 475 bytes per sensor-field-hour instead of 35 (`benches/downsample_capacity.rs`).
pub(crate) const MIN_GROUP_PAGES: usize = 16;

/// Once the budget is full, merging goes on until this fraction of it is free again.
const HEADROOM_DIVISOR: u64 = 16;

/// Past this many entries the memo is cleared (it only saves work).
const MAX_MEMO_ENTRIES: usize = 100_000;

/// What one sink has delivered of the lane, and how many records it reads at once (`None`: not
/// registered, so nothing in flight).
struct SinkView {
    delivered: Delivered,
    batch_max_records: Option<u64>,
}

/// One outbox page as the walk sees it.
struct PageInfo {
    seq: u64,
    value_len: usize,
}

impl Store {
    /// Under `downsample`: merges the oldest pages, raw readings first, level by level, until
    /// `used` is [`HEADROOM_DIVISOR`]th of the budget below `target`, or nothing more merges.
    /// Counts what it merged. The headroom makes merges rare and large: merging just enough
    /// for each commit would merge a minute's records at a time, each time merging again the
    /// partial hours before them (a page written again at every commit).
    pub(crate) fn downsample_until(&self, target: u64) -> Result<(), StoreError> {
        let headroom = self.budget.config.max_bytes.unwrap_or(0) / HEADROOM_DIVISOR;
        let goal = target.saturating_sub(headroom);
        let merged_before = self.budget.stats.downsample_merged_records.load(Ordering::Relaxed);
        let used_before = self.used_bytes();
        let levels = self.budget.config.downsample_levels.clone();
        'levels: for level in levels {
            let resolution_ms = i64::try_from(level.as_millis()).unwrap_or(i64::MAX);
            for lane in [Lane::Raw, Lane::Results] {
                while self.used_bytes() > goal {
                    let need = self.used_bytes() - goal;
                    if !self.downsample_step(lane, resolution_ms, need)? {
                        break;
                    }
                }
                if self.used_bytes() <= goal {
                    break 'levels;
                }
            }
        }
        let merged = self.budget.stats.downsample_merged_records.load(Ordering::Relaxed) - merged_before;
        if merged > 0 {
            // At every commit while the hub is away: the counters tell the story (/metrics).
            tracing::debug!(
                records = merged,
                freed_bytes = used_before.saturating_sub(self.used_bytes()),
                used_bytes = self.used_bytes(),
                "Disk budget full: merged the oldest undelivered records into coarser ones."
            );
        }
        Ok(())
    }

    /// Merges the oldest group of `lane` that reduces at `resolution_ms`; whether one did. A
    /// group takes pages until it holds a quarter more than the `need`ed bytes (merging frees
    /// most of what it takes), at least [`MIN_GROUP_PAGES`] and at most [`MAX_GROUP_PAGES`]:
    /// so a budget just full merges the oldest hours only, and the newest keep their
    /// resolution.
    fn downsample_step(&self, lane: Lane, resolution_ms: i64, need: u64) -> Result<bool, StoreError> {
        let want = need.saturating_add(need / 4);
        let _serialised = self.budget.outbox_removal.lock().unwrap_or_else(PoisonError::into_inner);
        let prefix = lane.prefix();
        let sinks = self.sink_views(lane)?;
        let zones = self.in_flight_zones(prefix, &sinks)?;
        let Some((newest, _)) = self
            .main
            .range(prefixed(prefix, &0u64.to_be_bytes())..vec![prefix + 1])
            .next_back()
            .transpose()
            .map_err(io("outbox read"))?
        else {
            return Ok(false);
        };
        let newest = decode_key(&newest[1..]);
        let mut group: Vec<PageInfo> = Vec::new();
        let mut group_status: Vec<bool> = Vec::new();
        let mut group_bytes: u64 = 0;
        let start = self
            .budget
            .downsample_memo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .frontier
            .get(&(prefix, resolution_ms))
            .copied()
            .unwrap_or(0);
        // Every page so far was done: the frontier may move past it.
        let mut all_done = true;
        let pages =
            self.main.range(prefixed(prefix, &start.to_be_bytes())..prefixed(prefix, &newest.to_be_bytes()));
        for item in pages {
            let (key, value) = item.map_err(io("outbox read"))?;
            let seq = decode_key(&key[1..]);
            let done = self.memo_says_done(prefix, resolution_ms, seq, value.len());
            if all_done && !done {
                all_done = false;
                self.set_frontier(prefix, resolution_ms, seq);
            }
            // A page that may join a group, with each sink's status; `None` ends a group.
            let candidate = if done {
                None
            } else {
                let n_entries =
                    stored::outbox_page_header(&value).map_or(0, |(_, n)| u64::try_from(n).unwrap_or(0));
                let last = (seq + n_entries).saturating_sub(1);
                let in_flight = zones.iter().any(|&(lo, hi)| seq <= hi && lo <= last);
                (n_entries > 0 && !in_flight)
                    .then(|| uniform_status(&sinks, seq, last))
                    .flatten()
                    .map(|status| (PageInfo { seq, value_len: value.len() }, status))
            };
            match candidate {
                Some((page, status))
                    if group.is_empty()
                        || (status == group_status
                            && group.len() < MAX_GROUP_PAGES
                            && (group.len() < MIN_GROUP_PAGES || group_bytes < want)) =>
                {
                    group_status = status;
                    group_bytes += u64::try_from(page.value_len).unwrap_or(u64::MAX);
                    group.push(page);
                }
                Some((page, status)) => {
                    if self.merge_group(lane, &group, resolution_ms)? {
                        return Ok(true);
                    }
                    group.clear();
                    group_status = status;
                    group_bytes = u64::try_from(page.value_len).unwrap_or(u64::MAX);
                    group.push(page);
                }
                None => {
                    if !group.is_empty() && self.merge_group(lane, &group, resolution_ms)? {
                        return Ok(true);
                    }
                    group.clear();
                    group_bytes = 0;
                }
            }
        }
        if all_done {
            self.set_frontier(prefix, resolution_ms, newest);
        }
        Ok(!group.is_empty() && self.merge_group(lane, &group, resolution_ms)?)
    }

    fn set_frontier(&self, prefix: u8, resolution_ms: i64, seq: u64) {
        let mut memo = self.budget.downsample_memo.lock().unwrap_or_else(PoisonError::into_inner);
        memo.frontier.insert((prefix, resolution_ms), seq);
    }

    fn memo_says_done(&self, prefix: u8, resolution_ms: i64, seq: u64, value_len: usize) -> bool {
        let memo = self.budget.downsample_memo.lock().unwrap_or_else(PoisonError::into_inner);
        memo.done.get(&(prefix, resolution_ms, seq)) == Some(&value_len)
    }

    /// Merges `group`'s pages; whether it reduced them (and replaced them).
    fn merge_group(&self, lane: Lane, group: &[PageInfo], resolution_ms: i64) -> Result<bool, StoreError> {
        let prefix = lane.prefix();
        let mut entries: Vec<OutboxEntry> = Vec::new();
        let mut old_bytes = 0;
        let mut committed_ms = None;
        let mut keys = Vec::with_capacity(group.len());
        for page in group {
            let key = prefixed(prefix, &page.seq.to_be_bytes());
            let Some(value) = self.main.get(&key).map_err(io("outbox read"))? else { continue };
            match stored::decode_outbox_page(&value) {
                Ok((page_committed_ms, page_entries)) => {
                    committed_ms = committed_ms.or(page_committed_ms);
                    entries.extend(page_entries.into_iter().map(|entry| OutboxEntry {
                        kind: entry.kind,
                        group: entry.group,
                        payload: entry.payload,
                    }));
                }
                // An undecodable page is left where it is (and the group merges without it
                // only if it is not in the middle: simplest is not to merge this group).
                Err(_) => return Ok(false),
            }
            old_bytes += entry_bytes(&key, &value);
            keys.push(key);
        }
        let parts: Vec<Part<'_>> =
            entries.iter().map(|entry| Part { kind: &entry.kind, payload: &entry.payload }).collect();
        let outcome = merge(&parts, &self.budget.config.shapes, resolution_ms);
        if outcome.entries.len() >= entries.len() {
            let mut memo = self.budget.downsample_memo.lock().unwrap_or_else(PoisonError::into_inner);
            if memo.done.len() > MAX_MEMO_ENTRIES {
                // The frontiers stay: below them everything is done.
                memo.done.clear();
            }
            for page in group {
                memo.done.insert((prefix, resolution_ms, page.seq), page.value_len);
            }
            return Ok(false);
        }
        let merged: Vec<OutboxEntry> = outcome
            .entries
            .iter()
            .map(|entry| match entry {
                Merged::Kept(idx) => entries[*idx].clone(),
                Merged::New { kind, group, payload, .. } => {
                    OutboxEntry { kind: kind.clone(), group: group.clone(), payload: payload.clone() }
                }
            })
            .collect();
        // Whether each merged entry belongs to a bucket before the latest one: such records
        // take nothing more in (their bucket's later records were in this group already), so a
        // page of them only is done at this level and not merged again at every commit.
        let latest_bucket = outcome
            .entries
            .iter()
            .filter_map(|entry| match entry {
                Merged::New { bucket_start, .. } => Some(*bucket_start),
                Merged::Kept(_) => None,
            })
            .max();
        let settled: Vec<bool> = outcome
            .entries
            .iter()
            .map(|entry| match entry {
                Merged::New { bucket_start, .. } => {
                    latest_bucket.is_some_and(|latest| *bucket_start < latest)
                }
                Merged::Kept(_) => false,
            })
            .collect();
        let mut settled_pages = Vec::new();
        let first_seq = group[0].seq;
        let committed_ms = committed_ms.unwrap_or(0);
        let mut batch = sled::Batch::default();
        for key in &keys {
            batch.remove(key.as_slice());
        }
        let mut new_bytes = 0;
        for (chunk_idx, chunk) in merged.chunks(OUTBOX_PAGE_ENTRIES).enumerate() {
            let refs: Vec<OutboxEntryV1Ref<'_>> = chunk
                .iter()
                .map(|entry| OutboxEntryV1Ref {
                    kind: &entry.kind,
                    group: &entry.group,
                    payload: &entry.payload,
                })
                .collect();
            let compressed = stored::compress_outbox_entries(&refs)
                .map_err(|source| StoreError::Encode { what: "outbox page", source })?;
            let value = stored::encode_outbox_page(committed_ms, chunk.len(), &compressed)
                .map_err(|source| StoreError::Encode { what: "outbox page", source })?;
            let offset = u64::try_from(chunk_idx * OUTBOX_PAGE_ENTRIES).unwrap_or(u64::MAX);
            let key = prefixed(prefix, &(first_seq + offset).to_be_bytes());
            new_bytes += entry_bytes(&key, &value);
            let chunk_start = chunk_idx * OUTBOX_PAGE_ENTRIES;
            if settled[chunk_start..chunk_start + chunk.len()].iter().all(|&settled| settled) {
                settled_pages.push((first_seq + offset, value.len()));
            }
            batch.insert(key, value);
        }
        self.main.apply_batch(batch).map_err(io("outbox downsample"))?;
        self.budget.sub(old_bytes);
        self.budget.add(new_bytes);
        // Durable before any sink may read it (they read under the lock this holds).
        self.flush_blocking()?;
        {
            let mut memo = self.budget.downsample_memo.lock().unwrap_or_else(PoisonError::into_inner);
            for (seq, value_len) in settled_pages {
                memo.done.insert((prefix, resolution_ms, seq), value_len);
            }
        }
        let stats = &self.budget.stats;
        stats.downsample_merged_records.fetch_add(outcome.n_merged, Ordering::Relaxed);
        stats.downsample_written_records.fetch_add(outcome.n_written, Ordering::Relaxed);
        stats.downsample_redundant_records.fetch_add(outcome.n_redundant, Ordering::Relaxed);
        tracing::debug!(
            lane = ?lane,
            resolution_ms,
            first_seq,
            merged = outcome.n_merged,
            written = outcome.n_written,
            redundant = outcome.n_redundant,
            freed_bytes = old_bytes.saturating_sub(new_bytes),
            "Disk budget full: downsampled the oldest undelivered records."
        );
        Ok(true)
    }

    /// What each sink delivered of `lane`: every stored name and every registered sink (for
    /// the raw lane, those that take raw readings).
    fn sink_views(&self, lane: Lane) -> Result<Vec<SinkView>, StoreError> {
        let registered: Vec<(String, bool, u64)> = self
            .budget
            .sinks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, takes_raw, _, batch_max_records)| (name.clone(), *takes_raw, *batch_max_records))
            .collect();
        let mut views: Vec<(String, SinkView)> = self
            .all_delivered(lane)?
            .into_iter()
            .map(|(name, delivered)| (name, SinkView { delivered, batch_max_records: None }))
            .collect();
        for (name, takes_raw, batch_max_records) in registered {
            if lane == Lane::Raw && !takes_raw {
                views.retain(|(stored, _)| *stored != name);
                continue;
            }
            match views.iter_mut().find(|(stored, _)| *stored == name) {
                Some((_, view)) => view.batch_max_records = Some(batch_max_records),
                None => views.push((
                    name,
                    SinkView { delivered: Delivered::prefix(0), batch_max_records: Some(batch_max_records) },
                )),
            }
        }
        Ok(views.into_iter().map(|(_, view)| view).collect())
    }

    /// The seqs (inclusive ranges) registered sinks may be delivering or may have delivered
    /// unrecorded: after each end of their delivered segments, `batch_max_records` entries
    /// (counted over the pages, which may have gaps between them).
    fn in_flight_zones(&self, prefix: u8, sinks: &[SinkView]) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut zones = Vec::new();
        for sink in sinks {
            let Some(batch_max_records) = sink.batch_max_records else { continue };
            for end in sink.delivered.segment_ends() {
                zones.push((end.saturating_add(1), self.seq_after_entries(prefix, end, batch_max_records)?));
            }
        }
        Ok(zones)
    }

    /// The seq of the `n`-th entry after seq `after` (`u64::MAX` if the lane has fewer).
    fn seq_after_entries(&self, prefix: u8, after: u64, n: u64) -> Result<u64, StoreError> {
        let wanted = after.saturating_add(1);
        let first_page = self.page_holding(prefix, wanted)?;
        let mut left = n;
        for item in self.main.range(prefixed(prefix, &first_page.to_be_bytes())..vec![prefix + 1]) {
            let (key, value) = item.map_err(io("outbox read"))?;
            let page_seq = decode_key(&key[1..]);
            let len =
                stored::outbox_page_header(&value).map_or(0, |(_, len)| u64::try_from(len).unwrap_or(0));
            let from = page_seq.max(wanted);
            let here = (page_seq + len).saturating_sub(from);
            if here >= left {
                return Ok(from + left - 1);
            }
            left -= here;
        }
        Ok(u64::MAX)
    }

    /// Flushes and syncs from a blocking context (the budget runs inside the aggregator's and
    /// the ingest's blocking writes).
    fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(io("flush"))?;
        self.durability
            .sync()
            .map_err(|error| StoreError::Io { operation: "fsync", source: sled::Error::Io(error) })?;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// For each sink, whether it delivered all of `first..=last` (`true`) or none (`false`);
/// `None` if some sink delivered part of it.
fn uniform_status(sinks: &[SinkView], first: u64, last: u64) -> Option<Vec<bool>> {
    sinks
        .iter()
        .map(|sink| {
            let delivered = delivered_within(&sink.delivered, first, last);
            if delivered == 0 {
                Some(false)
            } else if delivered == last - first + 1 {
                Some(true)
            } else {
                None
            }
        })
        .collect()
}

/// How many of `first..=last` `delivered` contains.
fn delivered_within(delivered: &Delivered, first: u64, last: u64) -> u64 {
    let overlap = |lo: u64, hi: u64| (hi.min(last) + 1).saturating_sub(lo.max(first));
    let prefix = if delivered.cursor >= first { overlap(first, delivered.cursor) } else { 0 };
    prefix
        + delivered.above.iter().filter(|&&(lo, hi)| hi >= lo).map(|&(lo, hi)| overlap(lo, hi)).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use serde_json::Value;

    use crate::engine::downsample::{Shapes, WindowShape};
    use crate::storage::{
        BudgetConfig, Commit, Delivered, Lane, OutboxEntry, Policy, Store, OUTBOX_PAGE_ENTRIES,
    };

    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const T0: i64 = 1_699_920_000_000;
    const SENSORS: i64 = 4;
    const PAGE: u64 = OUTBOX_PAGE_ENTRIES as u64;

    fn config(max_bytes: Option<u64>) -> BudgetConfig {
        BudgetConfig {
            max_bytes,
            policy: Policy::Downsample,
            shapes: Shapes {
                windows: vec![WindowShape { name: "w1m".into(), length_ms: MINUTE, slide_ms: MINUTE }],
            },
            ..BudgetConfig::default()
        }
    }

    fn open(dir: &std::path::Path, max_bytes: Option<u64>) -> Store {
        let mut store = Store::open(dir, 1 << 20, vec!["temp_c".into()], vec![]).expect("open");
        store.with_budget_and_free_space(config(max_bytes), Arc::new(|| None)).expect("budget");
        store
    }

    /// The 1-minute window of `sensor` at `minute`: 3 readings.
    fn window(minute: i64, sensor: i64) -> OutboxEntry {
        let start = T0 + minute * MINUTE;
        let values = [20.0 + (minute % 7) as f64 * 0.3, 21.0 + sensor as f64, 19.5 + (minute % 3) as f64];
        let sum: f64 = values.iter().sum();
        let payload = format!(
            r#"{{"type":"window","window":"w1m","device":"gw","sensor":"s{sensor}","field":"temp_c","start":{start},"end":{},"count":3,"sum":{sum},"min":{},"max":{},"mean":{},"id":"gw/w1m/s{sensor}/temp_c/{start}"}}"#,
            start + MINUTE,
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            sum / 3.0
        );
        OutboxEntry { kind: "window".into(), group: "g".into(), payload: payload.into_bytes() }
    }

    /// Commits `n_pages` pages of windows (one page a commit, a second apart), from minute
    /// `first_minute`; returns the next seq and the next minute.
    fn fill(store: &Store, next_seq: u64, first_minute: i64, n_pages: u64) -> (u64, i64) {
        let minutes_per_page = i64::try_from(PAGE).unwrap() / SENSORS;
        let (mut seq, mut minute) = (next_seq, first_minute);
        for _ in 0..n_pages {
            let outbox: Vec<OutboxEntry> = (minute..minute + minutes_per_page)
                .flat_map(|minute| (0..SENSORS).map(move |sensor| window(minute, sensor)))
                .collect();
            seq += PAGE;
            minute += minutes_per_page;
            store
                .commit(&Commit { outbox, log_pos: 0, next_seq: seq, clock_ms: minute, ..Commit::default() })
                .unwrap();
        }
        (seq, minute)
    }

    /// Per (sensor, hour): readings and their sum, over every record (merged or not) of the
    /// outbox whose seq `keep` says.
    fn per_hour(
        entries: &[(u64, OutboxEntry)],
        keep: impl Fn(u64) -> bool,
    ) -> BTreeMap<(String, i64), (u64, f64)> {
        let mut hours = BTreeMap::new();
        for (_, entry) in entries.iter().filter(|(seq, _)| keep(*seq)) {
            let record: serde_json::Map<String, Value> = serde_json::from_slice(&entry.payload).unwrap();
            let hour = record["start"].as_i64().unwrap().div_euclid(HOUR) * HOUR;
            let slot = hours.entry((record["sensor"].as_str().unwrap().to_owned(), hour)).or_insert((0, 0.0));
            slot.0 += record["count"].as_u64().unwrap();
            slot.1 += record["sum"].as_f64().unwrap();
        }
        hours
    }

    fn assert_same_hours(a: &BTreeMap<(String, i64), (u64, f64)>, b: &BTreeMap<(String, i64), (u64, f64)>) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (key, (count, sum)) in a {
            assert_eq!(b[key].0, *count, "{key:?}");
            assert!((b[key].1 - sum).abs() <= 1e-9 * sum.abs(), "{key:?}: {} vs {sum}", b[key].1);
        }
    }

    fn all(store: &Store) -> Vec<(u64, OutboxEntry)> {
        store.read_outbox_after(0, usize::MAX).unwrap()
    }

    fn counter(value: &AtomicU64) -> u64 {
        value.load(Ordering::Relaxed)
    }

    fn is_downsampled(entry: &OutboxEntry) -> bool {
        let record: serde_json::Map<String, Value> = serde_json::from_slice(&entry.payload).unwrap();
        record.get("downsampled") == Some(&Value::Bool(true))
    }

    #[test]
    fn the_full_budget_merges_the_oldest_hours_exactly_and_accounts_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), None);
        let (next_seq, _) = fill(&store, 1, 0, 12);
        let before = all(&store);
        let full = store.used_bytes();
        drop(store);
        let store = open(dir.path(), Some(full / 2));
        let hub = store.register_sink("hub", false, 512);
        store.enforce_budget(0).unwrap();
        assert!(store.used_bytes() <= full / 2, "{} > {}", store.used_bytes(), full / 2);
        let stats = store.drop_stats();
        assert!(counter(&stats.downsample_merged_records) > 0);
        assert!(counter(&stats.downsample_written_records) > 0);
        assert_eq!(counter(&stats.dropped_budget_records), 0, "merging was enough");
        assert_eq!(counter(&hub.budget), 0);
        let after = all(&store);
        assert_same_hours(&per_hour(&before, |_| true), &per_hour(&after, |_| true));
        // The in-flight zone of the hub (nothing delivered: its first 512 records) and the
        // newest page are as they were.
        assert!(after[..512] == before[..512], "the in-flight zone is untouched");
        assert!(after[after.len() - 256..] == before[before.len() - 256..], "the newest page is untouched");
        assert!(after.iter().any(|(_, entry)| is_downsampled(entry)));
        // Exact accounting: the count kept equals a scan, and a reopen counts the same.
        let used = store.used_bytes();
        assert_eq!(store.count_used().unwrap(), used);
        drop(store);
        let store = open(dir.path(), Some(full / 2));
        assert_eq!(store.used_bytes(), used);
        assert!(all(&store) == after, "the merge was durable");
        // Delivered through the end: trimming removes merged pages too, whatever gaps follow.
        store.trim_outbox_through(next_seq - 1).unwrap();
        assert_eq!(store.used_bytes(), 0);
        assert!(all(&store).is_empty());
    }

    /// A budget passed by a little merges the oldest pages only (a merge takes what the
    /// budget needs, not [`MAX_GROUP_PAGES`]): the newer hours keep their minute records.
    #[test]
    fn a_budget_passed_by_a_little_merges_only_the_oldest_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), None);
        // 40 pages: 2,560 minute records of 4 sensors, about 10.7 hours.
        fill(&store, 1, 0, 40);
        let before = all(&store);
        let full = store.used_bytes();
        drop(store);
        // A budget two pages short, the headroom (a sixteenth) on top.
        let page_bytes = full / 40;
        let store = open(dir.path(), Some(full - 2 * page_bytes));
        store.register_sink("hub", false, 1);
        store.enforce_budget(0).unwrap();
        assert!(store.used_bytes() <= full - 2 * page_bytes);
        let merged = counter(&store.drop_stats().downsample_merged_records);
        assert!(merged > 0);
        // What was needed is under 5 pages (2 + a sixteenth of 38): one group of the least
        // size (MIN_GROUP_PAGES), and partial hours at its edge; not the 38 pages there are.
        let most = u64::try_from(super::MIN_GROUP_PAGES + 2).unwrap() * PAGE;
        assert!(merged <= most, "merged {merged} records for a budget {} bytes short", 2 * page_bytes);
        let after = all(&store);
        let minute_records = after.iter().filter(|(_, entry)| !is_downsampled(entry)).count();
        assert!(
            minute_records >= before.len() - usize::try_from(most).unwrap(),
            "{minute_records} minute records left"
        );
        assert_same_hours(&per_hour(&before, |_| true), &per_hour(&after, |_| true));
    }

    /// A sink's in-flight zone counts records, not seqs: after a merge, its next batch of
    /// `batch_max_records` may reach across the emptied seqs into later pages.
    #[test]
    fn the_in_flight_zone_counts_records_across_the_seqs_a_merge_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), None);
        let (next_seq, _) = fill(&store, 1, 0, 12);
        let full = store.used_bytes();
        drop(store);
        let store = open(dir.path(), Some(full / 3));
        store.enforce_budget(0).unwrap();
        let left = all(&store);
        let n_merged_page = left.iter().take_while(|(seq, _)| *seq < 11 * PAGE).count();
        assert!(
            n_merged_page > 0 && left[n_merged_page].0 == 11 * PAGE + 1,
            "one merged page, then the newest"
        );
        let prefix = Lane::Results.prefix();
        let n = u64::try_from(n_merged_page).unwrap();
        assert_eq!(store.seq_after_entries(prefix, 0, n).unwrap(), n);
        assert_eq!(store.seq_after_entries(prefix, 0, n + 1).unwrap(), 11 * PAGE + 1);
        assert_eq!(store.seq_after_entries(prefix, n - 1, 2).unwrap(), 11 * PAGE + 1);
        assert_eq!(store.seq_after_entries(prefix, 0, 10 * PAGE).unwrap(), u64::MAX, "fewer records");
        // Trimmed through the merged records, the page goes although the next starts later.
        store.trim_outbox_through(n).unwrap();
        assert_eq!(all(&store).first().map(|(seq, _)| *seq), Some(11 * PAGE + 1));
        store.trim_outbox_through(next_seq - 1).unwrap();
        assert_eq!(store.used_bytes(), 0);
    }

    #[test]
    fn raw_readings_are_aggregated_before_any_result_and_only_sinks_taking_them_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), None);
        let (next_seq, _) = fill(&store, 1, 0, 4);
        let results_before = all(&store);
        let results_bytes = store.used_bytes();
        // 4 pages of raw readings (a reading a second per sensor, two fields), one commit each.
        let mut raw_seq = 1;
        for page in 0..4u64 {
            let entries: Vec<OutboxEntry> = (0..PAGE)
                .map(|idx| {
                    let n = page * PAGE + idx;
                    let ts = T0 + i64::try_from(n).unwrap() * 1000;
                    let payload = format!(
                        r#"{{"type":"raw","device":"gw","sensor":"s{}","ts":{ts},"values":{{"temp_c":{},"rh":40}},"tags":{{}},"id":"gw/raw/s{}/{ts}/{n}-0"}}"#,
                        n % 2,
                        20.0 + (n % 5) as f64,
                        n % 2
                    );
                    OutboxEntry { kind: "raw".into(), group: "raw".into(), payload: payload.into_bytes() }
                })
                .collect();
            raw_seq += PAGE;
            let raw = crate::storage::RawCommit { entries, next_raw_seq: raw_seq };
            let commit = Commit { log_pos: 0, next_seq, clock_ms: 1, ..Commit::default() };
            store.commit_with_raw(&commit, Some(&raw)).unwrap();
        }
        let raw_before = store.read_lane_after(Lane::Raw, 0, usize::MAX).unwrap();
        let full = store.used_bytes();
        // A sink that does not take raw readings has a stale raw cursor in the middle of a
        // page: it does not count for the raw lane.
        store.set_raw_cursor("hub", 300).unwrap();
        drop(store);
        let store = open(dir.path(), Some(full - (full - results_bytes) / 2));
        store.register_sink("hub", false, 512);
        store.enforce_budget(0).unwrap();
        assert!(all(&store) == results_before, "the results are untouched while raw readings can merge");
        let raw_after = store.read_lane_after(Lane::Raw, 0, usize::MAX).unwrap();
        assert!(raw_after.len() < raw_before.len());
        let newest = |entries: &[(u64, OutboxEntry)]| entries[entries.len() - OUTBOX_PAGE_ENTRIES..].to_vec();
        assert!(newest(&raw_after) == newest(&raw_before), "the newest raw page is untouched");
        // Per sensor and field, readings and sums are kept.
        let totals = |entries: &[(u64, OutboxEntry)]| {
            let mut totals: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
            for (_, entry) in entries {
                let record: serde_json::Map<String, Value> = serde_json::from_slice(&entry.payload).unwrap();
                let sensor = record["sensor"].as_str().unwrap().to_owned();
                if let Some(values) = record.get("values") {
                    for (field, value) in values.as_object().unwrap() {
                        let slot = totals.entry((sensor.clone(), field.clone())).or_default();
                        slot.0 += 1;
                        slot.1 += value.as_f64().unwrap();
                    }
                } else {
                    assert_eq!(record["downsampled"], true);
                    let slot =
                        totals.entry((sensor, record["field"].as_str().unwrap().to_owned())).or_default();
                    slot.0 += record["count"].as_u64().unwrap();
                    slot.1 += record["sum"].as_f64().unwrap();
                }
            }
            totals
        };
        assert_eq!(totals(&raw_before), totals(&raw_after));
        assert!(counter(&store.drop_stats().downsample_merged_records) > 0);
    }

    #[test]
    fn a_group_is_merged_only_if_every_sink_delivered_all_or_none_of_it_and_not_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), None);
        let (_, _) = fill(&store, 1, 0, 12);
        let before = all(&store);
        // hub: delivered up to the middle of page 4, and (live first) the newest two pages;
        // file: delivered everything up to page 2's end.
        let mut hub = Delivered::prefix(3 * PAGE + 100);
        hub.mark(10 * PAGE + 1, 10 * PAGE);
        hub.mark(10 * PAGE + 1, 12 * PAGE);
        store.set_delivered(Lane::Results, "hub", &hub).unwrap();
        store.set_delivered(Lane::Results, "file", &Delivered::prefix(2 * PAGE)).unwrap();
        let full = store.used_bytes();
        drop(store);
        let store = open(dir.path(), Some(full / 2));
        store.register_sink("hub", false, 200);
        store.register_sink("file", false, 10);
        store.enforce_budget(0).unwrap();
        let after = all(&store);
        let unchanged = |lo: u64, hi: u64| {
            let pick = |entries: &[(u64, OutboxEntry)]| -> Vec<(u64, OutboxEntry)> {
                entries.iter().filter(|(seq, _)| (lo..=hi).contains(seq)).cloned().collect()
            };
            assert!(pick(&after) == pick(&before), "seqs {lo}..={hi} untouched");
        };
        // Page 4 straddles the hub's cursor; its 200 records after are in flight; so is the
        // file's first record after page 2 (page 3); the newest page is never touched.
        unchanged(2 * PAGE + 1, 4 * PAGE + 1);
        unchanged(3 * PAGE + 101, 4 * PAGE + 44);
        unchanged(11 * PAGE + 1, 12 * PAGE);
        // Pages 1-2 (delivered by both) merged apart from pages 5-10 (delivered by neither)
        // and from page 11 (delivered by the hub only): every merged record lies in one.
        let merged: Vec<u64> =
            after.iter().filter(|(_, entry)| is_downsampled(entry)).map(|(seq, _)| *seq).collect();
        assert!(merged.iter().any(|seq| *seq <= 2 * PAGE), "the delivered pages merged: {merged:?}");
        assert!(merged.iter().any(|seq| (4 * PAGE + 1..=10 * PAGE).contains(seq)), "{merged:?}");
        // Counts and sums per hour are kept on each side of each sink's boundaries, so each sink
        // gets exactly what it has not delivered.
        for delivered in [&hub, &Delivered::prefix(2 * PAGE)] {
            let undelivered = |seq: u64| !delivered.contains(seq);
            assert_same_hours(&per_hour(&before, undelivered), &per_hour(&after, undelivered));
        }
        assert_same_hours(&per_hour(&before, |_| true), &per_hour(&after, |_| true));
        assert_eq!(counter(&store.drop_stats().dropped_budget_records), 0);
    }
}
