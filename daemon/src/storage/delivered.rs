//! What one sink has delivered of one outbox lane: a prefix (the cursor) and, while it drains
//! a backlog beside current results (live first), ranges above it; stored beside the cursor.
//!
//! The cursor key (`mcursor/NAME`, `mrcursor/NAME`) keeps its meaning and layout: everything up
//! to it is delivered, so a store written by an earlier eddy reads the same, and trimming and
//! the per-sink drop counters keep reading it. The ranges live under their own key
//! (`mdelivered/` + lane prefix + name), a versioned envelope; a missing or undecodable value
//! means no range (the sink then re-sends them: at-least-once, same ids).

use serde::{Deserialize, Serialize};

use crate::storage::{io, Lane, Store, StoreError, META_CURSOR, META_RAW_CURSOR};

const META_DELIVERED: &[u8] = b"mdelivered/";

/// The seqs of one lane a sink has delivered: `1..=cursor` and each range of `above`.
///
/// `above` is sorted, its ranges disjoint, not touching each other or the prefix, and each
/// starts past `cursor + 1`. A range may be empty (`hi == lo - 1`): it then only marks where a
/// delivery began (the split point of a live-first drain), so that what is in flight right
/// after it is known after a crash too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Everything up to and including this seq is delivered (0: nothing).
    pub cursor: u64,
    /// Delivered ranges above the cursor, inclusive: `(lo, hi)`.
    pub above: Vec<(u64, u64)>,
}

impl Delivered {
    /// Only a prefix: what an eddy without live-first stored.
    pub fn prefix(cursor: u64) -> Delivered {
        Delivered { cursor, above: Vec::new() }
    }

    /// Whether `seq` was delivered.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.cursor || self.above.iter().any(|&(lo, hi)| (lo..=hi).contains(&seq))
    }

    /// The highest delivered seq, or the start marker above it (0: nothing).
    pub fn head(&self) -> u64 {
        self.above.last().map_or(self.cursor, |&(_, hi)| hi.max(self.cursor))
    }

    /// The first undelivered seqs below the head, inclusive (`None`: no gap, the sink is
    /// delivering in order).
    pub fn first_gap(&self) -> Option<(u64, u64)> {
        self.above.first().map(|&(lo, _)| (self.cursor + 1, lo - 1))
    }

    /// The ends of the delivered segments: the cursor and each range's `hi` (for an empty
    /// range, the seq before its start). A sink's next delivery in order starts right after one
    /// of them, so what a crash may have left delivered but unrecorded lies just above them.
    pub fn segment_ends(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.cursor).chain(self.above.iter().map(|&(_, hi)| hi))
    }

    /// Undelivered seqs up to `target`.
    pub fn undelivered_through(&self, target: u64) -> u64 {
        let delivered_above: u64 = self
            .above
            .iter()
            .filter(|&&(lo, _)| lo <= target)
            .map(|&(lo, hi)| (hi.min(target) + 1).saturating_sub(lo))
            .sum();
        target.saturating_sub(self.cursor).saturating_sub(delivered_above)
    }

    /// Records `lo..=hi` as delivered (`hi == lo - 1`: only the start marker at `lo`).
    pub fn mark(&mut self, lo: u64, hi: u64) {
        debug_assert!(hi + 1 >= lo, "range {lo}..={hi}");
        if hi <= self.cursor {
            return;
        }
        let lo = lo.max(self.cursor + 1);
        self.above.push((lo, hi));
        self.normalise();
    }

    /// Sorts and merges the ranges and folds those touching the prefix into it.
    fn normalise(&mut self) {
        self.above.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.above.len());
        for &(lo, hi) in &self.above {
            if hi <= self.cursor {
                continue;
            }
            let lo = lo.max(self.cursor + 1);
            match merged.last_mut() {
                // Overlapping or adjacent (an empty marker right above a range is absorbed).
                Some(last) if lo <= last.1 + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        // A range starting right after the prefix extends it; an empty marker there is gone.
        while let Some(&(lo, hi)) = merged.first() {
            if lo > self.cursor + 1 {
                break;
            }
            self.cursor = self.cursor.max(hi);
            merged.remove(0);
        }
        self.above = merged;
    }
}

/// The ranges as stored.
#[derive(Debug, Serialize, Deserialize)]
enum DeliveredEnvelope {
    V1(Vec<(u64, u64)>),
}

fn ranges_key(lane: Lane, name: &str) -> Vec<u8> {
    [META_DELIVERED, &[lane.prefix()], name.as_bytes()].concat()
}

fn cursor_key(lane: Lane, name: &str) -> Vec<u8> {
    let prefix = match lane {
        Lane::Results => META_CURSOR,
        Lane::Raw => META_RAW_CURSOR,
    };
    [prefix, name.as_bytes()].concat()
}

impl Store {
    /// What sink `name` has delivered of `lane` (nothing, for a sink never seen).
    pub fn delivered(&self, lane: Lane, name: &str) -> Result<Delivered, StoreError> {
        let cursor = self.meta_u64(&cursor_key(lane, name))?.unwrap_or(0);
        let mut delivered = Delivered::prefix(cursor);
        if let Some(value) = self.main.get(ranges_key(lane, name)).map_err(io("cursor read"))? {
            match postcard::from_bytes::<DeliveredEnvelope>(&value) {
                Ok(DeliveredEnvelope::V1(ranges)) => {
                    delivered.above = ranges.into_iter().filter(|&(lo, hi)| hi + 1 >= lo).collect();
                    delivered.normalise();
                }
                Err(error) => {
                    tracing::warn!(sink = %name, %error, "Could not read which records above its cursor a sink delivered; it sends them again.");
                }
            }
        }
        Ok(delivered)
    }

    /// Records what sink `name` has delivered of `lane` (one sled batch: the cursor and the
    /// ranges together; durable with the next flush).
    pub fn set_delivered(&self, lane: Lane, name: &str, delivered: &Delivered) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(cursor_key(lane, name), &delivered.cursor.to_be_bytes());
        if delivered.above.is_empty() {
            batch.remove(ranges_key(lane, name));
        } else {
            let value = postcard::to_allocvec(&DeliveredEnvelope::V1(delivered.above.clone()))
                .map_err(|source| StoreError::Encode { what: "delivered ranges", source })?;
            batch.insert(ranges_key(lane, name), value);
        }
        self.main.apply_batch(batch).map_err(io("cursor write"))?;
        Ok(())
    }

    /// [`Store::delivered`] of every name with a cursor or ranges in `lane`.
    pub fn all_delivered(&self, lane: Lane) -> Result<Vec<(String, Delivered)>, StoreError> {
        let prefix = match lane {
            Lane::Results => META_CURSOR,
            Lane::Raw => META_RAW_CURSOR,
        };
        let mut names = Vec::new();
        for key in self.main.scan_prefix(prefix).keys() {
            let key = key.map_err(io("cursor read"))?;
            names.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        let ranges_prefix = [META_DELIVERED, &[lane.prefix()]].concat();
        for key in self.main.scan_prefix(&ranges_prefix).keys() {
            let key = key.map_err(io("cursor read"))?;
            let name = String::from_utf8_lossy(&key[ranges_prefix.len()..]).into_owned();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.into_iter().map(|name| self.delivered(lane, &name).map(|delivered| (name, delivered))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_into_the_prefix_when_the_gap_closes() {
        let mut delivered = Delivered::prefix(10);
        // Live first: a split at 100 (start marker), then current results.
        delivered.mark(101, 100);
        assert_eq!(delivered.above, vec![(101, 100)]);
        assert_eq!(delivered.head(), 100);
        assert_eq!(delivered.first_gap(), Some((11, 100)));
        delivered.mark(101, 120);
        assert_eq!(delivered.above, vec![(101, 120)]);
        assert!(delivered.contains(105) && !delivered.contains(50) && delivered.contains(10));
        assert_eq!(delivered.undelivered_through(130), 90 + 10);
        assert_eq!(delivered.segment_ends().collect::<Vec<_>>(), vec![10, 120]);
        // The backlog drains oldest first.
        delivered.mark(11, 60);
        assert_eq!(delivered.cursor, 60);
        delivered.mark(61, 100);
        assert_eq!(delivered, Delivered::prefix(120));
        assert_eq!(delivered.first_gap(), None);
    }

    #[test]
    fn a_second_outage_during_a_drain_opens_a_second_gap() {
        let mut delivered = Delivered::prefix(0);
        delivered.mark(501, 500);
        delivered.mark(501, 600);
        delivered.mark(901, 900);
        delivered.mark(901, 950);
        assert_eq!(delivered.above, vec![(501, 600), (901, 950)]);
        assert_eq!(delivered.first_gap(), Some((1, 500)));
        delivered.mark(1, 500);
        assert_eq!(delivered.cursor, 600);
        assert_eq!(delivered.first_gap(), Some((601, 900)));
        // An empty marker right above a range is absorbed by it.
        delivered.mark(951, 950);
        assert_eq!(delivered.above, vec![(901, 950)]);
        delivered.mark(601, 900);
        assert_eq!(delivered, Delivered::prefix(950));
    }

    #[test]
    fn delivered_ranges_survive_a_reopen_and_an_old_cursor_reads_as_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, vec![], vec![]).unwrap();
        store.set_cursor("old", 42).unwrap();
        let mut hub = Delivered::prefix(7);
        hub.mark(31, 30);
        hub.mark(31, 40);
        store.set_delivered(Lane::Results, "hub", &hub).unwrap();
        store.set_delivered(Lane::Raw, "hub", &Delivered::prefix(3)).unwrap();
        drop(store);
        let store = Store::open(dir.path(), 1 << 20, vec![], vec![]).unwrap();
        assert_eq!(store.delivered(Lane::Results, "old").unwrap(), Delivered::prefix(42));
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), hub);
        assert_eq!(store.cursor("hub").unwrap(), 7, "the cursor key keeps its meaning");
        assert_eq!(store.delivered(Lane::Raw, "hub").unwrap(), Delivered::prefix(3));
        let mut all = store.all_delivered(Lane::Results).unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all, vec![("hub".to_owned(), hub.clone()), ("old".to_owned(), Delivered::prefix(42))]);
        // The gap closes: the ranges key is removed.
        hub.mark(8, 30);
        store.set_delivered(Lane::Results, "hub", &hub).unwrap();
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), Delivered::prefix(40));
    }
}
