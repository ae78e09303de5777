//! The counters and positions the components publish for the others to read: the engine's
//! heartbeat and commits, the ingest latencies, each sink's delivery counters. A leaf of the
//! daemon: the components write these, `ops/` reads them, and none of them imports another
//! for it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::storage::{Appended, Lane, SinkDrops, StoreError};

/// Counters of the aggregator, shared with the status log.
#[derive(Debug, Default)]
pub(crate) struct AggregateStats {
    /// Results (window, batch) committed to the outbox.
    pub(crate) results_total: AtomicU64,
    /// Late readings (counted once per window spec).
    pub(crate) late_total: AtomicU64,
    /// Commits done.
    pub(crate) commits_total: AtomicU64,
    /// Inputs processed (log chunks and ticks): the pipeline's heartbeat. The ingest task sends
    /// a tick every 200 ms when idle, so this stalls only when ingest or the engine is stuck
    /// (the systemd watchdog and `/health` watch it).
    pub(crate) inputs_total: AtomicU64,
}

/// The last committed (and flushed) seq of each outbox lane, announced to the sinks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Committed {
    /// Results lane.
    pub(crate) results: u64,
    /// Raw-readings lane.
    pub(crate) raw: u64,
}

impl Committed {
    /// The seq of `lane`.
    pub(crate) fn get(&self, lane: Lane) -> u64 {
        match lane {
            Lane::Results => self.results,
            Lane::Raw => self.raw,
        }
    }

    /// Sets the seq of `lane`.
    pub(crate) fn set(&mut self, lane: Lane, seq: u64) {
        match lane {
            Lane::Results => self.results = seq,
            Lane::Raw => self.raw = seq,
        }
    }
}

/// Upper bounds of the latency histograms, seconds (Prometheus `le`).
const LATENCY_BOUNDS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

/// A fixed-bucket latency histogram, lock-free to observe.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let idx = LATENCY_BOUNDS.iter().position(|bound| secs <= *bound).unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The smallest bucket bound under which `q` (0..1) of the observations fall, seconds
    /// (None: no observation, or past the largest bound).
    pub(crate) fn quantile_bound(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let mut seen = 0;
        for (idx, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            #[allow(clippy::cast_precision_loss)]
            if seen as f64 >= q * count as f64 {
                return LATENCY_BOUNDS.get(idx).copied();
            }
        }
        None
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (idx, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match LATENCY_BOUNDS.get(idx) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Counters of the ingest task.
#[derive(Debug, Default)]
pub(crate) struct IngestStats {
    /// From a group's first batch to its acknowledgement (gathering + write + fsync).
    pub(crate) ingest_latency: Histogram,
    /// The log append and its fsync, per group.
    pub(crate) flush_latency: Histogram,
    /// Why the last group was not stored (None: it was).
    last_refusal: Mutex<Option<String>>,
}

impl IngestStats {
    pub(crate) fn record_write(&self, outcome: &Result<Appended, StoreError>, elapsed: Duration) {
        let refusal = match outcome {
            Ok(Appended::Stored) => {
                self.flush_latency.observe(elapsed);
                None
            }
            Ok(Appended::Refused(reason)) => Some(format!("readings refused: {reason}")),
            Err(error) => Some(format!("store write failed: {error}")),
        };
        if let Ok(mut last) = self.last_refusal.lock() {
            *last = refusal;
        }
    }

    pub(crate) fn last_refusal(&self) -> Option<String> {
        self.last_refusal.lock().ok().and_then(|last| last.clone())
    }
}

/// Counters of one sink.
#[derive(Debug, Default)]
pub(crate) struct DeliveryStats {
    /// Records delivered.
    pub(crate) delivered_total: AtomicU64,
    /// Failed delivery attempts (retried).
    pub(crate) retries_total: AtomicU64,
    /// Records the sink permanently rejected (moved to the dead-letter tree).
    pub(crate) rejected_total: AtomicU64,
    /// Outbox records dropped (budget, ttl) before this sink delivered them.
    pub(crate) drops: Arc<SinkDrops>,
    /// The last seq delivered (the durable cursor).
    pub(crate) cursor: AtomicU64,
    /// The last raw-lane seq delivered (`u64::MAX`: takes no raw readings).
    pub(crate) raw_cursor: AtomicU64,
    /// Processing time of the commit that wrote the oldest record not yet delivered (ms since
    /// the epoch; 0: nothing waiting).
    pub(crate) oldest_waiting_ms: AtomicU64,
    /// Wall-clock time of the first failed delivery of the current outage (ms since the
    /// epoch; 0: the sink is online). For `/metrics` and `/status`.
    pub(crate) offline_since_ms: AtomicU64,
}

/// A plain copy of one sink's counters, for the status log (and a later `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SinkCounters {
    pub(crate) delivered: u64,
    pub(crate) retries: u64,
    pub(crate) rejected: u64,
    pub(crate) dropped_budget: u64,
    pub(crate) dropped_ttl: u64,
    /// Results committed but not yet delivered (all kinds, by outbox seq).
    pub(crate) outbox_depth: u64,
    /// Raw readings committed but not yet delivered (0 for a sink that takes none).
    pub(crate) raw_depth: u64,
    /// Age of the oldest record waiting, ms (0: none).
    pub(crate) outbox_age_ms: u64,
}

impl DeliveryStats {
    /// Counters now; `committed` is the last committed seqs, `now_ms` the processing clock.
    pub(crate) fn snapshot(&self, committed: Committed, now_ms: u64) -> SinkCounters {
        let cursor = self.cursor.load(Ordering::Relaxed);
        let oldest = self.oldest_waiting_ms.load(Ordering::Relaxed);
        let depth = committed.results.saturating_sub(cursor);
        let raw_depth = committed.raw.saturating_sub(self.raw_cursor.load(Ordering::Relaxed));
        SinkCounters {
            delivered: self.delivered_total.load(Ordering::Relaxed),
            retries: self.retries_total.load(Ordering::Relaxed),
            rejected: self.rejected_total.load(Ordering::Relaxed),
            dropped_budget: self.drops.budget.load(Ordering::Relaxed),
            dropped_ttl: self.drops.ttl.load(Ordering::Relaxed),
            outbox_depth: depth,
            raw_depth,
            outbox_age_ms: if depth + raw_depth == 0 || oldest == 0 {
                0
            } else {
                now_ms.saturating_sub(oldest)
            },
        }
    }
}
