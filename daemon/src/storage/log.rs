//! The log: chunks of accepted readings in arrival order, appended under the disk budget,
//! read back for the engine (re-mapped if the schema changed) and trimmed after a commit.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use eddy_sensors::Reading;

use crate::storage::budget::entry_bytes;
use crate::storage::columns::ReadingColumnsV1Ref;
use crate::storage::stored::{self, LogChunkV3Ref};
use crate::storage::{decode_key, io, Appended, MarkChange, Store, StoreError};

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

/// For each current name, the index it had in the stored names.
fn remap(stored: &[String], current: &[String]) -> Vec<Option<usize>> {
    if stored == current {
        return (0..current.len()).map(Some).collect();
    }
    current.iter().map(|name| stored.iter().position(|old| old == name)).collect()
}

impl Store {
    /// Writes chunks to the log (not yet durable: call [`Store::flush`]) if the disk budget
    /// admits them; otherwise nothing is written and the answer says why.
    pub fn append_log(&self, chunks: &[LogChunk]) -> Result<Appended, StoreError> {
        let mut batch = sled::Batch::default();
        let mut bytes = 0;
        let mut n_readings = 0;
        for chunk in chunks {
            let readings =
                ReadingColumnsV1Ref::encode(&chunk.readings, self.field_names.len(), self.tag_names.len());
            let value = stored::encode_log_chunk(&LogChunkV3Ref {
                ingest_ms: chunk.ingest_ms,
                batch: chunk.batch,
                field_names: &self.field_names,
                tag_names: &self.tag_names,
                readings: &readings,
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
}
