//! The dead-letter tree: records a sink rejected permanently (an HTTP 4xx), kept with the
//! reason so an operator can inspect them (`eddy dead-letters`), instead of vanishing.

use std::sync::atomic::Ordering;

use crate::storage::stored::DeadLetter;
use crate::storage::{decode_key, io, Store, StoreError};

/// Most dead letters kept; past this the oldest are deleted and counted
/// (`dropped_dead_letter_records`), so a hub that rejects everything cannot fill the disk.
pub const DEAD_LETTER_MAX: usize = 10_000;

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

impl Store {
    fn dead_tree(&self) -> Result<sled::Tree, StoreError> {
        self.db.open_tree("dead").map_err(io("dead-letter open"))
    }

    /// Stores `entries` as dead letters (not yet durable: the caller flushes with its cursor).
    pub fn add_dead_letters(&self, entries: &[DeadLetterEntry]) -> Result<(), StoreError> {
        let tree = self.dead_tree()?;
        let first = tree.last().map_err(io("dead-letter read"))?.map_or(1, |(key, _)| decode_key(&key) + 1);
        let mut batch = sled::Batch::default();
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
            batch.insert(&key.to_be_bytes(), value);
        }
        tree.apply_batch(batch).map_err(io("dead-letter write"))?;
        let stats = self.drop_stats();
        stats
            .dead_letter_records
            .fetch_add(u64::try_from(entries.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let mut excess = tree.len().saturating_sub(DEAD_LETTER_MAX);
        while excess > 0 {
            if tree.pop_min().map_err(io("dead-letter trim"))?.is_none() {
                break;
            }
            stats.dropped_dead_letter_records.fetch_add(1, Ordering::Relaxed);
            excess -= 1;
        }
        Ok(())
    }

    /// Every dead letter, oldest first (undecodable ones are skipped).
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterEntry>, StoreError> {
        let mut entries = Vec::new();
        for item in self.dead_tree()?.iter() {
            let (_, value) = item.map_err(io("dead-letter read"))?;
            if let Ok(DeadLetter::V1 { sink, seq, kind, reason, rejected_ms, payload }) =
                postcard::from_bytes(&value)
            {
                entries.push(DeadLetterEntry { sink, seq, kind, reason, rejected_ms, payload });
            }
        }
        Ok(entries)
    }
}
