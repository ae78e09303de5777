//! The dead-letter tree: records a sink can never deliver (an HTTP 4xx, a record larger than
//! the uplink takes), kept with the reason so an operator can inspect them (`eddy
//! dead-letters`) and put them back on their uplink (`eddy dead-letters --resend`), instead of
//! vanishing.
//!
//! The tree is bounded in bytes (`storage.dead_letter_max_bytes`, key and value of each
//! entry): past it the oldest dead letters are deleted, counted (records and bytes) and logged,
//! so a hub that rejects everything cannot fill the disk, and never silently (`/health` warns).
//! Marks for resend live in their own tree (`dead_resend`, key: the dead letter's key, value:
//! the sink's name), so the stored dead letter itself (`DeadLetter::V1`) is unchanged.

use std::sync::atomic::Ordering;

use crate::storage::stored::DeadLetter;
use crate::storage::{decode_key, io, Store, StoreError};

/// Default of `storage.dead_letter_max_bytes`: 16 MiB.
pub const DEAD_LETTER_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// One dead letter, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterEntry {
    /// The sink that rejected it.
    pub sink: String,
    /// Its outbox seq.
    pub seq: u64,
    /// Record kind.
    pub kind: String,
    /// Why the sink rejected it (e.g. `HTTP 400 Bad Request: …`).
    pub reason: String,
    /// When (processing time, ms since the epoch).
    pub rejected_ms: i64,
    /// The JSON record.
    pub payload: Vec<u8>,
}

/// Bytes a dead letter takes in the bound: its key and its value.
fn letter_bytes(value: &[u8]) -> u64 {
    8 + u64::try_from(value.len()).unwrap_or(u64::MAX)
}

fn decode(value: &[u8]) -> Option<DeadLetterEntry> {
    match postcard::from_bytes(value).ok()? {
        DeadLetter::V1 { sink, seq, kind, reason, rejected_ms, payload } => {
            Some(DeadLetterEntry { sink, seq, kind, reason, rejected_ms, payload })
        }
    }
}

impl Store {
    fn dead_tree(&self) -> Result<sled::Tree, StoreError> {
        self.db.open_tree("dead").map_err(io("dead-letter open"))
    }

    fn resend_tree(&self) -> Result<sled::Tree, StoreError> {
        self.db.open_tree("dead_resend").map_err(io("dead-letter open"))
    }

    /// Counts the dead letters kept and their bytes into the meters (at start-up, and when a
    /// new opening takes the meters over).
    pub(crate) fn count_dead_letters(&self) -> Result<(), StoreError> {
        let (mut count, mut bytes) = (0, 0);
        for item in self.dead_tree()?.iter() {
            let (_, value) = item.map_err(io("dead-letter read"))?;
            count += 1;
            bytes += letter_bytes(&value);
        }
        let stats = self.drop_stats();
        stats.dead_letters_kept.store(count, Ordering::Relaxed);
        stats.dead_letter_bytes.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Stores `entries` as dead letters (not yet durable: the caller flushes with its cursor),
    /// then deletes the oldest while the tree holds more than `storage.dead_letter_max_bytes`.
    pub fn add_dead_letters(&self, entries: &[DeadLetterEntry]) -> Result<(), StoreError> {
        let tree = self.dead_tree()?;
        let first = tree.last().map_err(io("dead-letter read"))?.map_or(1, |(key, _)| decode_key(&key) + 1);
        let mut batch = sled::Batch::default();
        let mut added = 0;
        for (key, entry) in (first..).zip(entries) {
            let value = postcard::to_allocvec(&DeadLetter::V1 {
                sink: entry.sink.clone(),
                seq: entry.seq,
                kind: entry.kind.clone(),
                reason: entry.reason.clone(),
                rejected_ms: entry.rejected_ms,
                payload: entry.payload.clone(),
            })
            .map_err(|source| StoreError::Encode { what: "dead letter", source })?;
            added += letter_bytes(&value);
            batch.insert(&key.to_be_bytes(), value);
        }
        tree.apply_batch(batch).map_err(io("dead-letter write"))?;
        let stats = self.drop_stats();
        let n_entries = u64::try_from(entries.len()).unwrap_or(u64::MAX);
        stats.dead_letter_records.fetch_add(n_entries, Ordering::Relaxed);
        stats.dead_letters_kept.fetch_add(n_entries, Ordering::Relaxed);
        stats.dead_letter_bytes.fetch_add(added, Ordering::Relaxed);
        self.trim_dead_letters(&tree)
    }

    /// Deletes the oldest dead letters while the tree is over its bound; counts and logs them.
    fn trim_dead_letters(&self, tree: &sled::Tree) -> Result<(), StoreError> {
        let max_bytes = self.budget_config().dead_letter_max_bytes;
        let stats = self.drop_stats();
        let resend = self.resend_tree()?;
        let (mut dropped, mut dropped_bytes) = (0_u64, 0_u64);
        while stats.dead_letter_bytes.load(Ordering::Relaxed) > max_bytes {
            let Some((key, value)) = tree.pop_min().map_err(io("dead-letter trim"))? else {
                stats.dead_letter_bytes.store(0, Ordering::Relaxed);
                break;
            };
            resend.remove(&key).map_err(io("dead-letter trim"))?;
            let bytes = letter_bytes(&value);
            let _ = stats
                .dead_letter_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| Some(now.saturating_sub(bytes)));
            let _ = stats
                .dead_letters_kept
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| Some(now.saturating_sub(1)));
            dropped += 1;
            dropped_bytes += bytes;
        }
        if dropped > 0 {
            stats.dropped_dead_letter_records.fetch_add(dropped, Ordering::Relaxed);
            stats.dropped_dead_letter_bytes.fetch_add(dropped_bytes, Ordering::Relaxed);
            tracing::error!(
                records = dropped,
                bytes = dropped_bytes,
                dead_letter_max_bytes = max_bytes,
                "The dead-letter tree is full; its oldest dead letters are deleted."
            );
        }
        Ok(())
    }

    /// Every dead letter, oldest first (undecodable ones are skipped).
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterEntry>, StoreError> {
        let mut entries = Vec::new();
        for item in self.dead_tree()?.iter() {
            let (_, value) = item.map_err(io("dead-letter read"))?;
            entries.extend(decode(&value));
        }
        Ok(entries)
    }

    /// Marks the dead letters of the sinks `accepts` takes for resend (by their sink's name)
    /// and flushes; returns how many were marked per sink, in the order first met. A dead
    /// letter already marked counts again (it is still waiting).
    pub async fn mark_dead_letters_for_resend(
        &self,
        accepts: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let resend = self.resend_tree()?;
        let mut counts: Vec<(String, u64)> = Vec::new();
        let mut batch = sled::Batch::default();
        for item in self.dead_tree()?.iter() {
            let (key, value) = item.map_err(io("dead-letter read"))?;
            let Some(letter) = decode(&value) else { continue };
            if !accepts(&letter.sink) {
                continue;
            }
            batch.insert(key, letter.sink.as_bytes());
            match counts.iter_mut().find(|(sink, _)| *sink == letter.sink) {
                Some((_, count)) => *count += 1,
                None => counts.push((letter.sink, 1)),
            }
        }
        resend.apply_batch(batch).map_err(io("dead-letter mark"))?;
        self.flush().await?;
        Ok(counts)
    }

    /// Up to `limit` dead letters of sink `sink` marked for resend, oldest first, with their
    /// keys. Marks whose dead letter is gone are removed.
    pub fn marked_dead_letters(
        &self,
        sink: &str,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetterEntry)>, StoreError> {
        let resend = self.resend_tree()?;
        let dead = self.dead_tree()?;
        let mut marked = Vec::new();
        for item in resend.iter() {
            if marked.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(io("dead-letter read"))?;
            if value.as_ref() != sink.as_bytes() {
                continue;
            }
            match dead.get(&key).map_err(io("dead-letter read"))?.as_deref().and_then(decode) {
                Some(letter) => marked.push((decode_key(&key), letter)),
                None => {
                    resend.remove(&key).map_err(io("dead-letter mark"))?;
                }
            }
        }
        Ok(marked)
    }

    /// Deletes the dead letters with `keys` and their marks (resent; not yet durable: flush).
    pub fn remove_dead_letters(&self, keys: &[u64]) -> Result<(), StoreError> {
        let resend = self.resend_tree()?;
        let dead = self.dead_tree()?;
        let stats = self.drop_stats();
        for key in keys {
            resend.remove(key.to_be_bytes()).map_err(io("dead-letter remove"))?;
            if let Some(value) = dead.remove(key.to_be_bytes()).map_err(io("dead-letter remove"))? {
                let bytes = letter_bytes(&value);
                let _ = stats.dead_letter_bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                    Some(now.saturating_sub(bytes))
                });
                let _ = stats
                    .dead_letters_kept
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| Some(now.saturating_sub(1)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::BudgetConfig;

    fn entry(sink: &str, seq: u64, payload_bytes: usize) -> DeadLetterEntry {
        DeadLetterEntry {
            sink: sink.into(),
            seq,
            kind: "window".into(),
            reason: "HTTP 400 Bad Request: no".into(),
            rejected_ms: 5,
            payload: vec![b'x'; payload_bytes],
        }
    }

    fn open(dir: &std::path::Path, dead_letter_max_bytes: u64) -> Store {
        Store::open(dir, 1 << 20, vec![], vec![])
            .unwrap()
            .with_budget(BudgetConfig { dead_letter_max_bytes, ..BudgetConfig::default() })
            .unwrap()
    }

    #[test]
    fn the_tree_stays_within_its_bytes_dropping_the_oldest_and_counting_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), 10_000);
        for seq in 1..=50 {
            store.add_dead_letters(&[entry("hub", seq, 1000)]).unwrap();
        }
        let stats = store.drop_stats();
        let kept = store.dead_letters().unwrap();
        let bytes = stats.dead_letter_bytes.load(Ordering::Relaxed);
        assert!(bytes <= 10_000, "{bytes} bytes kept");
        assert!(kept.len() >= 8, "only {} kept", kept.len());
        assert_eq!(kept.last().unwrap().seq, 50, "the newest is kept");
        assert_eq!(
            kept.first().unwrap().seq,
            51 - u64::try_from(kept.len()).unwrap(),
            "the oldest went first"
        );
        let dropped = stats.dropped_dead_letter_records.load(Ordering::Relaxed);
        assert_eq!(dropped + u64::try_from(kept.len()).unwrap(), 50);
        assert_eq!(stats.dead_letters_kept.load(Ordering::Relaxed), u64::try_from(kept.len()).unwrap());
        assert!(stats.dropped_dead_letter_bytes.load(Ordering::Relaxed) >= dropped * 1000);
        // A new opening counts the same.
        drop(store);
        let store = open(dir.path(), 10_000);
        assert_eq!(store.drop_stats().dead_letter_bytes.load(Ordering::Relaxed), bytes);
    }

    #[tokio::test]
    async fn marked_dead_letters_come_back_per_sink_in_order_and_go_once_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), DEAD_LETTER_MAX_BYTES);
        store.add_dead_letters(&[entry("hub", 3, 2), entry("other", 4, 2), entry("hub", 7, 2)]).unwrap();
        assert!(store.marked_dead_letters("hub", 10).unwrap().is_empty());
        let counts = store.mark_dead_letters_for_resend(|sink| sink == "hub").await.unwrap();
        assert_eq!(counts, vec![("hub".to_owned(), 2)]);
        let marked = store.marked_dead_letters("hub", 10).unwrap();
        assert_eq!(marked.iter().map(|(_, letter)| letter.seq).collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(store.marked_dead_letters("hub", 1).unwrap().len(), 1);
        assert!(store.marked_dead_letters("other", 10).unwrap().is_empty());
        store.remove_dead_letters(&[marked[0].0]).unwrap();
        assert_eq!(store.marked_dead_letters("hub", 10).unwrap().len(), 1);
        assert_eq!(
            store.dead_letters().unwrap().iter().map(|letter| letter.seq).collect::<Vec<_>>(),
            vec![4, 7]
        );
        assert_eq!(store.drop_stats().dead_letters_kept.load(Ordering::Relaxed), 2);
    }
}
