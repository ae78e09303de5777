//! The counters and positions the components publish for the others to read: the engine's
//! heartbeat and commits, the ingest latencies, each sink's delivery counters, and the one
//! snapshot type per component ([`EngineCounters`], [`StoreCounters`], [`SinkCounters`],
//! `eddy_sensors::SourceStatsSnapshot`) gathered in [`Status`], from which the counters log
//! lines, `/status`, `/metrics` and `eddy status` are all made. A leaf of the daemon: the
//! components write these, `ops/` and `cli/` read them, and none of them imports another
//! for it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_common::{boottime_ms, wall_clock_ms, GatewayClock};
use eddy_sensors::SourceStatsSnapshot;
use serde::{Deserialize, Serialize};

use crate::storage::{size_on_disk_of, Appended, Lane, SinkDrops, StoreError, StoreMeters};

/// The `/status` document, and the snapshot of every counter the daemon shows. Fields marked
/// `serde(skip)` in the parts are shown in `/metrics` or the log but not in `/status` (its keys
/// are a contract), so they read back from the document as zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) device_id: String,
    pub(crate) version: String,
    pub(crate) uptime_secs: u64,
    pub(crate) healthy: bool,
    /// Why not healthy (empty when healthy).
    pub(crate) problems: Vec<String>,
    /// What deserves attention without making eddy unhealthy (a clock not synchronised, a broker that dropped messages).
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
    /// The wall clock and the processing clock.
    #[serde(default)]
    pub(crate) clock: ClockSnapshot,
    pub(crate) pipeline_idle_ms: u64,
    pub(crate) sources: Vec<SourceStatsSnapshot>,
    pub(crate) engine: EngineCounters,
    pub(crate) store: StoreCounters,
    pub(crate) uplinks: Vec<SinkCounters>,
}

/// The engine's counters and the ingest latencies (`/status` `engine`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct EngineCounters {
    /// Results (window, batch) committed to the outbox.
    pub(crate) results: u64,
    pub(crate) late_readings: u64,
    pub(crate) commits: u64,
    /// Upper bucket bound of the 99th percentile of `ingest_latency`, ms (None: no data).
    pub(crate) ingest_p99_ms: Option<f64>,
    /// Upper bucket bound of the 99th percentile of `flush_latency`, ms (None: no data).
    pub(crate) flush_p99_ms: Option<f64>,
    /// Window results committed since start, with latency measured (see `result_latency`).
    /// The three figures below are absent from an older eddy's document.
    #[serde(default)]
    pub(crate) result_latency_count: u64,
    /// From the reading that closed a window to its result committed in the outbox: the fine
    /// bucket bound of the median and of the 99th percentile (at most the maximum), and the
    /// maximum, ms.
    #[serde(default)]
    pub(crate) result_p50_ms: Option<f64>,
    #[serde(default)]
    pub(crate) result_p99_ms: Option<f64>,
    #[serde(default)]
    pub(crate) result_max_ms: Option<f64>,
    /// Log chunks and ticks through the engine (the heartbeat).
    #[serde(skip)]
    pub(crate) inputs: u64,
    #[serde(skip)]
    pub(crate) ingest_latency: HistogramSnapshot,
    #[serde(skip)]
    pub(crate) flush_latency: HistogramSnapshot,
    #[serde(skip)]
    pub(crate) result_latency: HistogramSnapshot,
    /// Readings held because their event time was far ahead of their sensor's clock (the
    /// engine's count, kept across restarts). Absent from an older eddy's document.
    #[serde(default)]
    pub(crate) future_outliers: u64,
    /// Held readings applied because their sensor held too many.
    #[serde(default)]
    pub(crate) future_outliers_dropped: u64,
    /// Readings held now.
    #[serde(default)]
    pub(crate) future_outliers_held: u64,
    /// Readings counted in a window's `other` bucket: their `count_by` tag value came past
    /// `engine.count_by_max_values` distinct ones (kept across restarts).
    #[serde(default)]
    pub(crate) count_by_overflow: u64,
    /// Sensors the engine holds state for now (forgotten ones left out).
    #[serde(default)]
    pub(crate) sensors: u64,
    /// Open (window, sensor, start) windows now.
    #[serde(default)]
    pub(crate) open_windows: u64,
    /// Sensors forgotten (silent past `engine.forget_after`) since eddy started.
    #[serde(default)]
    pub(crate) sensors_forgotten: u64,
    /// The sensors whose clocks are furthest off (at most [`SENSOR_CLOCKS_LISTED`], beyond
    /// [`SENSOR_CLOCK_THRESHOLD`]), as of the last engine commit.
    #[serde(default)]
    pub(crate) sensor_clocks: Vec<SensorClockStatus>,
}

/// Most sensors `sensor_clocks` lists.
pub(crate) const SENSOR_CLOCKS_LISTED: usize = 20;

/// A sensor is listed in `sensor_clocks` when its clock is off by more than this, against the
/// gateway's clock or against the median sensor.
pub(crate) const SENSOR_CLOCK_THRESHOLD: Duration = Duration::from_secs(5);

/// One sensor's clock offset (`/status` `engine.sensor_clocks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SensorClockStatus {
    pub(crate) sensor: String,
    /// Its event times minus the gateway's processing clock, ms (positive: ahead).
    pub(crate) offset_ms: i64,
    /// `offset_ms` minus the median of all sensors' offsets: what counts when the gateway's
    /// own clock is the wrong one.
    pub(crate) offset_from_median_ms: i64,
}

impl EngineCounters {
    /// The counters now.
    pub(crate) fn read(aggregate: &AggregateStats, ingest: &IngestStats) -> EngineCounters {
        let ingest_latency = ingest.ingest_latency.snapshot();
        let flush_latency = ingest.flush_latency.snapshot();
        let result_latency = aggregate.result_latency.snapshot();
        let ms = |q: Option<f64>| q.map(|secs| secs * 1000.0);
        EngineCounters {
            results: aggregate.results_total.load(Ordering::Relaxed),
            late_readings: aggregate.late_total.load(Ordering::Relaxed),
            commits: aggregate.commits_total.load(Ordering::Relaxed),
            ingest_p99_ms: ms(ingest_latency.quantile_bound(0.99)),
            flush_p99_ms: ms(flush_latency.quantile_bound(0.99)),
            inputs: aggregate.inputs_total.load(Ordering::Relaxed),
            ingest_latency,
            flush_latency,
            result_latency_count: result_latency.count(),
            result_p50_ms: aggregate.result_latency.quantile_ms(0.5),
            result_p99_ms: aggregate.result_latency.quantile_ms(0.99),
            result_max_ms: aggregate.result_latency.max_ms(),
            result_latency,
            future_outliers: aggregate.future_outliers_total.load(Ordering::Relaxed),
            future_outliers_dropped: aggregate.future_outliers_dropped_total.load(Ordering::Relaxed),
            future_outliers_held: aggregate.future_outliers_held.load(Ordering::Relaxed),
            count_by_overflow: aggregate.count_by_overflow_total.load(Ordering::Relaxed),
            sensors: aggregate.sensors.load(Ordering::Relaxed),
            open_windows: aggregate.open_windows.load(Ordering::Relaxed),
            sensors_forgotten: aggregate.sensors_forgotten_total.load(Ordering::Relaxed),
            sensor_clocks: aggregate.sensor_clocks.lock().map(|clocks| clocks.clone()).unwrap_or_default(),
        }
    }
}

/// The store's size, budget, refusals and drops, and its corruption and flush counts
/// (`/status` `store`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoreCounters {
    pub(crate) used_bytes: u64,
    /// 0: no budget.
    pub(crate) budget_bytes: u64,
    pub(crate) disk_bytes: u64,
    /// Readings refused because the budget was full.
    pub(crate) refused_budget: u64,
    /// Readings refused because a write failed.
    pub(crate) refused_disk: u64,
    /// Why the last group was not stored (None: it was).
    pub(crate) last_refusal: Option<String>,
    /// Free bytes on the store's file system (0: unknown). Absent from older documents.
    #[serde(default)]
    pub(crate) free_bytes: u64,
    /// Times the store failed (a write or flush error) and was opened again, or is being.
    #[serde(default)]
    pub(crate) failures: u64,
    /// Outbox records dropped for the budget (`drop_oldest`, or `downsample` past its last
    /// level), since eddy started.
    #[serde(default)]
    pub(crate) dropped_budget: u64,
    /// Outbox records dropped for their age.
    #[serde(skip)]
    pub(crate) dropped_ttl: u64,
    #[serde(skip)]
    pub(crate) dead_letters: u64,
    /// Dead letters deleted because their tree was full, since eddy started.
    #[serde(default)]
    pub(crate) dropped_dead_letters: u64,
    /// Their bytes.
    #[serde(default)]
    pub(crate) dropped_dead_letter_bytes: u64,
    /// Dead letters kept now (`eddy dead-letters`).
    #[serde(default)]
    pub(crate) dead_letters_kept: u64,
    /// Their bytes, against `dead_letter_max_bytes`.
    #[serde(default)]
    pub(crate) dead_letter_bytes: u64,
    /// `storage.dead_letter_max_bytes`.
    #[serde(default)]
    pub(crate) dead_letter_max_bytes: u64,
    #[serde(skip)]
    pub(crate) corrupt_log_chunks: u64,
    #[serde(skip)]
    pub(crate) corrupt_outbox_pages: u64,
    #[serde(skip)]
    pub(crate) corrupt_state_pages: u64,
    #[serde(skip)]
    pub(crate) corrupt_meta: u64,
    /// Store flushes made durable (group commits, engine commits, cursors); absent from an
    /// older eddy's document.
    #[serde(default)]
    pub(crate) flushes: u64,
    /// Bytes eddy caused to be written to storage since it started (`write_bytes` of
    /// `/proc/self/io`: the store with sled's own overhead, and file sinks): what wears the
    /// flash. 0 where the kernel does not count it; absent from an older eddy's document.
    #[serde(default)]
    pub(crate) written_bytes: u64,
    /// Undelivered records `downsample` merged into coarser ones, since eddy started.
    #[serde(default)]
    pub(crate) downsample_merged: u64,
    /// Downsampled records it wrote.
    #[serde(default)]
    pub(crate) downsample_written: u64,
    /// Sliding-window records it deleted as redundant (their readings are in the tiling
    /// windows it merged).
    #[serde(default)]
    pub(crate) downsample_redundant: u64,
}

impl StoreCounters {
    /// The counters now, without a handle of the store (it may have failed): its budget and
    /// counters from `meters`, its size from the files in `data_dir`.
    pub(crate) fn read(
        meters: &StoreMeters,
        data_dir: &std::path::Path,
        ingest: &IngestStats,
        health: &StoreHealth,
    ) -> StoreCounters {
        let drops = meters.drop_stats();
        let stats = meters.stats();
        StoreCounters {
            used_bytes: meters.used_bytes(),
            budget_bytes: meters.budget_config().max_bytes.unwrap_or(0),
            disk_bytes: size_on_disk_of(data_dir),
            refused_budget: drops.refused_budget_readings.load(Ordering::Relaxed),
            refused_disk: drops.refused_disk_readings.load(Ordering::Relaxed),
            last_refusal: ingest.last_refusal(),
            free_bytes: meters.free_bytes().unwrap_or(0),
            failures: health.failures_total.load(Ordering::Relaxed),
            dropped_budget: drops.dropped_budget_records.load(Ordering::Relaxed),
            dropped_ttl: drops.dropped_ttl_records.load(Ordering::Relaxed),
            dead_letters: drops.dead_letter_records.load(Ordering::Relaxed),
            dropped_dead_letters: drops.dropped_dead_letter_records.load(Ordering::Relaxed),
            dropped_dead_letter_bytes: drops.dropped_dead_letter_bytes.load(Ordering::Relaxed),
            dead_letters_kept: drops.dead_letters_kept.load(Ordering::Relaxed),
            dead_letter_bytes: drops.dead_letter_bytes.load(Ordering::Relaxed),
            dead_letter_max_bytes: meters.budget_config().dead_letter_max_bytes,
            corrupt_log_chunks: stats.corrupt_log_chunks.load(Ordering::Relaxed),
            corrupt_outbox_pages: stats.corrupt_outbox_entries.load(Ordering::Relaxed),
            corrupt_state_pages: stats.corrupt_state_pages.load(Ordering::Relaxed),
            corrupt_meta: stats.corrupt_meta.load(Ordering::Relaxed),
            flushes: stats.flushes.load(Ordering::Relaxed),
            written_bytes: process_written_bytes().unwrap_or(0),
            downsample_merged: drops.downsample_merged_records.load(Ordering::Relaxed),
            downsample_written: drops.downsample_written_records.load(Ordering::Relaxed),
            downsample_redundant: drops.downsample_redundant_records.load(Ordering::Relaxed),
        }
    }
}

/// `write_bytes` of `/proc/self/io`: the bytes this process caused to be sent to the storage
/// layer (counted when pages are dirtied, so a rewrite of a cached page counts again).
fn process_written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|line| line.strip_prefix("write_bytes:")).and_then(|value| value.trim().parse().ok())
}

/// Whether the store can be written, as the main loop knows it: set when the store failed,
/// cleared once it is open again. Read by `/health` and `/status`.
#[derive(Debug, Default)]
pub(crate) struct StoreHealth {
    /// Why the store is not open (None: it is).
    failure: Mutex<Option<String>>,
    /// Times the store failed.
    pub(crate) failures_total: AtomicU64,
}

impl StoreHealth {
    /// The store failed for `reason`; it is closed until [`StoreHealth::reopened`].
    pub(crate) fn failed(&self, reason: String) {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        self.set(Some(reason));
    }

    /// Why the store is not open now, in words (a failed reopening updates it).
    pub(crate) fn set_reason(&self, reason: String) {
        self.set(Some(reason));
    }

    /// The store is open again.
    pub(crate) fn reopened(&self) {
        self.set(None);
    }

    /// Why the store is not open (None: it is).
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|failure| failure.clone())
    }

    fn set(&self, reason: Option<String>) {
        if let Ok(mut failure) = self.failure.lock() {
            *failure = reason;
        }
    }
}

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
    /// The engine's count of readings held as future outliers (kept across restarts).
    pub(crate) future_outliers_total: AtomicU64,
    /// The engine's count of held readings dropped, never confirmed (a full hold, an idle close).
    pub(crate) future_outliers_dropped_total: AtomicU64,
    /// Set once the aggregator published the outlier counters (the first publication seeds
    /// them from the recovered engine, without a warning).
    pub(crate) outliers_published: AtomicBool,
    /// Readings held now.
    pub(crate) future_outliers_held: AtomicU64,
    /// The engine's count of readings put in `count_by` `other` buckets (kept across restarts).
    pub(crate) count_by_overflow_total: AtomicU64,
    /// The engine's sensors and open windows, as of the last commit.
    pub(crate) sensors: AtomicU64,
    pub(crate) open_windows: AtomicU64,
    /// Sensors the engine forgot since start.
    pub(crate) sensors_forgotten_total: AtomicU64,
    /// The sensors whose clocks are furthest off, as of the last commit.
    pub(crate) sensor_clocks: Mutex<Vec<SensorClockStatus>>,
    /// From the ingest task's receipt of the reading that closed a window to its result being
    /// committed (durable, visible to the sinks); one observation per window result.
    pub(crate) result_latency: FineHistogram,
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
}

/// Upper bounds of the latency histograms, seconds (Prometheus `le`).
const LATENCY_BOUNDS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

/// Upper bounds of [`FineHistogram`], seconds: 1, 1.5, 2, 3, 5 and 7 per decade, from 0.1 ms to
/// 5 s. Every bound of [`LATENCY_BOUNDS`] is one of them, so the fine counts fold exactly into
/// the Prometheus buckets all latency histograms share.
const FINE_BOUNDS: [f64; 29] = [
    0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.0007, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.007, 0.01, 0.015,
    0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0,
];

/// A latency histogram with finer buckets (quantiles within 50 % between 0.1 ms and 5 s), its
/// exact maximum, and weighted observations: for latencies measured per event where one
/// measurement stands for many (a commit holding many results).
#[derive(Debug, Default)]
pub(crate) struct FineHistogram {
    buckets: [AtomicU64; FINE_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
    max_micros: AtomicU64,
}

impl FineHistogram {
    /// Records `n` observations of `elapsed`.
    pub(crate) fn observe_n(&self, elapsed: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let secs = elapsed.as_secs_f64();
        let idx = FINE_BOUNDS.iter().position(|bound| secs <= *bound).unwrap_or(FINE_BOUNDS.len());
        self.buckets[idx].fetch_add(n, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros.saturating_mul(n), Ordering::Relaxed);
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
    }

    /// The counts now, folded into the shared Prometheus buckets.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [0; LATENCY_BOUNDS.len() + 1];
        for (idx, bucket) in self.buckets.iter().enumerate() {
            let coarse = FINE_BOUNDS.get(idx).map_or(LATENCY_BOUNDS.len(), |fine| {
                LATENCY_BOUNDS.iter().position(|bound| fine <= bound).unwrap_or(LATENCY_BOUNDS.len())
            });
            buckets[coarse] += bucket.load(Ordering::Relaxed);
        }
        HistogramSnapshot { buckets, sum_micros: self.sum_micros.load(Ordering::Relaxed) }
    }

    /// The fine bucket bound under which `q` (0..1) of the observations fall, never more than
    /// the maximum, ms (None: no observation; past the largest bound: the maximum).
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let mut seen = 0;
        for (idx, count) in counts.iter().enumerate() {
            seen += count;
            #[allow(clippy::cast_precision_loss)]
            if seen as f64 >= q * total as f64 {
                let max = self.max_ms().unwrap_or(0.0);
                return Some(FINE_BOUNDS.get(idx).map_or(max, |bound| (bound * 1000.0).min(max)));
            }
        }
        self.max_ms()
    }

    /// The largest observation, ms (None: none yet).
    pub(crate) fn max_ms(&self) -> Option<f64> {
        let total: u64 = self.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).sum();
        #[allow(clippy::cast_precision_loss)]
        (total > 0).then(|| self.max_micros.load(Ordering::Relaxed) as f64 / 1000.0)
    }
}

/// A fixed-bucket latency histogram, lock-free to observe.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let idx = LATENCY_BOUNDS.iter().position(|bound| secs <= *bound).unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The counts now.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|idx| self.buckets[idx].load(Ordering::Relaxed)),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a latency histogram at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HistogramSnapshot {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    pub(crate) buckets: [u64; LATENCY_BOUNDS.len() + 1],
    /// Sum of the observations, microseconds.
    pub(crate) sum_micros: u64,
}

impl HistogramSnapshot {
    /// Each bucket's upper bound in seconds (None: `+Inf`) with the observations at or under
    /// it (cumulative, as Prometheus wants).
    pub(crate) fn cumulative(&self) -> impl Iterator<Item = (Option<f64>, u64)> + '_ {
        self.buckets.iter().enumerate().scan(0, |seen, (idx, bucket)| {
            *seen += bucket;
            Some((LATENCY_BOUNDS.get(idx).copied(), *seen))
        })
    }

    /// Number of observations.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Sum of the observations, seconds.
    pub(crate) fn sum_secs(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_micros as f64 / 1e6;
        sum
    }

    /// The smallest bucket bound under which `q` (0..1) of the observations fall, seconds
    /// (None: no observation, or past the largest bound).
    pub(crate) fn quantile_bound(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        self.cumulative().find(|(_, seen)| *seen as f64 >= q * count as f64).and_then(|(bound, _)| bound)
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
    /// Wall-clock time of the first refusal of our credentials (HTTP 401, 403, 407) in a row
    /// (ms since the epoch; 0: not refused). For `/health`, `/status` and `/metrics`.
    pub(crate) refused_since_ms: AtomicU64,
    /// The HTTP status of the last refusal.
    pub(crate) refused_status: AtomicU64,
    /// Bytes the sink keeps on disk: a file sink's live and rotated files (0 for other sinks).
    pub(crate) file_bytes: AtomicU64,
    /// Requests of the local endpoint to resend the sink's dead letters.
    pub(crate) resend: ResendRequests,
    // Live first (#17).
    /// Records delivered above the cursor (a live-first drain's ranges), per lane: results,
    /// raw.
    pub(crate) delivered_above: [AtomicU64; 2],
    /// The estimated time to drain what waits.
    pub(crate) backlog_drain: DrainEstimate,
}

/// A sink's estimated time to drain what waits, ms (`u64::MAX`: unknown).
#[derive(Debug)]
pub(crate) struct DrainEstimate(AtomicU64);

impl Default for DrainEstimate {
    fn default() -> DrainEstimate {
        DrainEstimate(AtomicU64::new(u64::MAX))
    }
}

impl DrainEstimate {
    /// Publishes the estimate (`None`: unknown).
    pub(crate) fn set(&self, estimate: Option<Duration>) {
        let ms =
            estimate.map_or(u64::MAX, |estimate| u64::try_from(estimate.as_millis()).unwrap_or(u64::MAX - 1));
        self.0.store(ms, Ordering::Relaxed);
    }

    /// The estimate, whole seconds rounded up (`None`: unknown).
    pub(crate) fn secs(&self) -> Option<u64> {
        let ms = self.0.load(Ordering::Relaxed);
        (ms != u64::MAX).then(|| ms.div_ceil(1000))
    }
}

/// What a resend request is answered: how many dead letters were marked, or why none.
pub(crate) type ResendAnswer = Result<u64, String>;

/// Requests to mark a sink's dead letters for resend (`POST /dead-letters/resend`), answered
/// by the sink's delivery task, which holds the store, between two deliveries.
#[derive(Debug, Default)]
pub(crate) struct ResendRequests {
    pending: AtomicBool,
    wake: tokio::sync::Notify,
    replies: Mutex<Vec<tokio::sync::oneshot::Sender<ResendAnswer>>>,
}

impl ResendRequests {
    /// Asks the sink's task; the answer comes when it gets to it.
    pub(crate) fn request(&self) -> tokio::sync::oneshot::Receiver<ResendAnswer> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.replies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(reply);
        self.pending.store(true, Ordering::Release);
        self.wake.notify_one();
        answer
    }

    /// Whether a request waits.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The requests waiting, to answer (none: nothing was asked).
    pub(crate) fn take(&self) -> Vec<tokio::sync::oneshot::Sender<ResendAnswer>> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.replies.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Resolves when a request may have come (check [`ResendRequests::is_pending`]).
    pub(crate) async fn asked(&self) {
        self.wake.notified().await;
    }
}

/// A copy of one sink's counters at one moment (`/status` `uplinks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SinkCounters {
    /// The sink's name from the config.
    pub(crate) name: String,
    /// False from the first failed delivery of an outage to the next delivery.
    pub(crate) online: bool,
    /// How long the sink has been failing, s (0: online).
    pub(crate) offline_secs: u64,
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
    /// Bytes of a file sink's files (live and rotated; 0 for other sinks). Absent from the
    /// documents of older eddies, read as 0.
    #[serde(default)]
    pub(crate) file_bytes: u64,
    /// Since when the hub refuses our credentials (ms since the epoch; absent: it does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) refused_since_ms: Option<u64>,
    /// The HTTP status of that refusal (401, 403, 407).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) refused_status: Option<u16>,
    /// How long the hub has refused our credentials, s (0: it does not).
    #[serde(default)]
    pub(crate) refused_secs: u64,
    // Live first (#17).
    /// Records committed and not yet delivered, both lanes (delivered ranges above the
    /// cursors excluded).
    #[serde(default)]
    pub(crate) backlog_records: u64,
    /// Commit time of the oldest of them (ms since the epoch; null: none waits).
    #[serde(default)]
    pub(crate) backlog_oldest_ms: Option<u64>,
    /// Estimated time to drain them at the recent pace, s (null: unknown — the sink is
    /// offline, or what waits does not shrink).
    #[serde(default)]
    pub(crate) backlog_drain_secs: Option<u64>,
}

impl DeliveryStats {
    /// Counters now of the sink `name`; `committed` is the last committed seqs, `now_ms` the
    /// wall clock.
    pub(crate) fn snapshot(&self, name: &str, committed: Committed, now_ms: u64) -> SinkCounters {
        let since = self.offline_since_ms.load(Ordering::Relaxed);
        let refused = self.refused_since_ms.load(Ordering::Relaxed);
        let cursor = self.cursor.load(Ordering::Relaxed);
        let oldest = self.oldest_waiting_ms.load(Ordering::Relaxed);
        // Live first: records delivered above a cursor are not waiting.
        let depth = committed
            .results
            .saturating_sub(cursor)
            .saturating_sub(self.delivered_above[0].load(Ordering::Relaxed));
        let raw_depth = committed
            .raw
            .saturating_sub(self.raw_cursor.load(Ordering::Relaxed))
            .saturating_sub(self.delivered_above[1].load(Ordering::Relaxed));
        SinkCounters {
            name: name.to_owned(),
            online: since == 0,
            offline_secs: if since == 0 { 0 } else { now_ms.saturating_sub(since) / 1000 },
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
            file_bytes: self.file_bytes.load(Ordering::Relaxed),
            refused_since_ms: (refused != 0).then_some(refused),
            refused_status: (refused != 0)
                .then(|| u16::try_from(self.refused_status.load(Ordering::Relaxed)).unwrap_or(0)),
            refused_secs: if refused == 0 { 0 } else { now_ms.saturating_sub(refused) / 1000 },
            backlog_records: depth + raw_depth,
            backlog_oldest_ms: (depth + raw_depth > 0 && oldest != 0).then_some(oldest),
            backlog_drain_secs: if since != 0 {
                None
            } else if depth + raw_depth == 0 {
                Some(0)
            } else {
                self.backlog_drain.secs()
            },
        }
    }
}

/// A step of the wall clock larger than this, against the elapsed monotonic time, is a jump.
pub(crate) const JUMP_THRESHOLD_MS: i64 = 1000;

/// The wall clock's state for `/status`, `/health` and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ClockStats {
    /// Whether the wall clock is trusted now.
    synchronized: AtomicBool,
    /// Wall-clock jumps seen.
    pub(crate) jumps: AtomicU64,
    /// Size of the last jump, ms (negative: backwards).
    pub(crate) last_jump_ms: AtomicI64,
    /// `CLOCK_BOOTTIME` when the clock was last seen becoming untrusted (0: trusted).
    unsynchronized_since_boot_ms: AtomicI64,
    /// The wall clock then.
    unsynchronized_since_wall_ms: AtomicI64,
    /// The processing clock, as last read by the watch.
    pub(crate) processing_ms: AtomicI64,
}

/// The `/status` `clock` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ClockSnapshot {
    /// Whether the wall clock is trusted (synchronised, not before the build).
    pub(crate) synchronized: bool,
    /// Since when it is not, by the wall clock of that moment (which is itself not trusted).
    pub(crate) unsynchronized_since_ms: Option<i64>,
    /// How long it has not been, by the monotonic clock, seconds.
    pub(crate) unsynchronized_for_secs: Option<u64>,
    /// Wall-clock jumps seen since start.
    pub(crate) jumps: u64,
    /// The last jump's size, ms (negative: backwards).
    pub(crate) last_jump_ms: Option<i64>,
    /// The wall clock now, ms.
    pub(crate) wall_ms: i64,
    /// The processing clock now, ms.
    pub(crate) processing_ms: i64,
    /// While the clock is trusted: how far the processing clock is behind it (labels of
    /// processing-time results catch up at the next start).
    pub(crate) processing_behind_ms: Option<i64>,
}

impl ClockStats {
    /// Records whether the clock is trusted, seen at `boot_ms` / `wall_ms`.
    pub(crate) fn set_synchronized(&self, synchronized: bool, boot_ms: i64, wall_ms: i64) {
        let was = self.synchronized.swap(synchronized, Ordering::Relaxed);
        if !synchronized && (was || self.unsynchronized_since_boot_ms.load(Ordering::Relaxed) == 0) {
            self.unsynchronized_since_boot_ms.store(boot_ms.max(1), Ordering::Relaxed);
            self.unsynchronized_since_wall_ms.store(wall_ms, Ordering::Relaxed);
        } else if synchronized {
            self.unsynchronized_since_boot_ms.store(0, Ordering::Relaxed);
        }
    }

    /// The state now.
    pub(crate) fn snapshot(&self) -> ClockSnapshot {
        let synchronized = self.synchronized.load(Ordering::Relaxed);
        let since_boot = self.unsynchronized_since_boot_ms.load(Ordering::Relaxed);
        let jumps = self.jumps.load(Ordering::Relaxed);
        let wall_ms = wall_clock_ms();
        let processing_ms = self.processing_ms.load(Ordering::Relaxed);
        let unsynced = !synchronized && since_boot > 0;
        ClockSnapshot {
            synchronized,
            unsynchronized_since_ms: unsynced
                .then(|| self.unsynchronized_since_wall_ms.load(Ordering::Relaxed)),
            unsynchronized_for_secs: unsynced
                .then(|| u64::try_from(boottime_ms().saturating_sub(since_boot) / 1000).unwrap_or(0)),
            jumps,
            last_jump_ms: (jumps > 0).then(|| self.last_jump_ms.load(Ordering::Relaxed)),
            wall_ms,
            processing_ms,
            processing_behind_ms: (synchronized
                && processing_ms > 0
                && wall_ms - processing_ms > JUMP_THRESHOLD_MS)
                .then_some(wall_ms - processing_ms),
        }
    }

    /// The `/health` warning while the clock is not trusted.
    pub(crate) fn warning(&self, clock: &GatewayClock) -> Option<String> {
        let snapshot = self.snapshot();
        if snapshot.synchronized {
            return None;
        }
        let reason = clock.distrust_reason().unwrap_or_else(|| "it is not trusted yet".to_owned());
        let since = snapshot.unsynchronized_since_ms.map_or_else(String::new, |ms| {
            format!(" since {} ({} s ago)", rfc3339_ms(ms), snapshot.unsynchronized_for_secs.unwrap_or(0))
        });
        Some(format!(
            "clock not synchronised{since}: {reason}; readings are kept and judged by their sensors' clocks"
        ))
    }
}

/// `ms` as an RFC 3339 UTC time with milliseconds: the result records' UTC formatting
/// (`engine/record.rs`) with the `T` and `Z` of RFC 3339.
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    format!("{}Z", crate::engine::record::format_utc_ms(ms).replacen(' ', "T", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weighted observations give the fine quantiles, the exact maximum, and fold into the
    /// shared Prometheus buckets without losing or moving any.
    #[test]
    fn the_fine_histogram_gives_quantiles_the_maximum_and_the_shared_buckets() {
        let histogram = FineHistogram::default();
        assert_eq!((histogram.quantile_ms(0.5), histogram.max_ms()), (None, None));
        histogram.observe_n(Duration::from_micros(1_800), 98);
        histogram.observe_n(Duration::from_micros(6_500), 1);
        histogram.observe_n(Duration::from_millis(40), 1);
        histogram.observe_n(Duration::from_secs(1), 0);
        assert_eq!(histogram.quantile_ms(0.5), Some(2.0));
        assert_eq!(histogram.quantile_ms(0.99), Some(7.0));
        assert_eq!(histogram.quantile_ms(1.0), Some(40.0), "the bound, capped by the maximum");
        assert_eq!(histogram.max_ms(), Some(40.0));
        let coarse = histogram.snapshot();
        assert_eq!(coarse.count(), 100);
        assert_eq!(coarse.quantile_bound(0.5), Some(0.002));
        assert_eq!(coarse.quantile_bound(0.99), Some(0.01));
        assert_eq!(coarse.quantile_bound(1.0), Some(0.05));
        assert_eq!(coarse.sum_micros, 98 * 1_800 + 6_500 + 40_000);
        // Past the largest bound: the maximum stands for the quantile.
        histogram.observe_n(Duration::from_secs(9), 1000);
        assert_eq!(histogram.quantile_ms(0.99), Some(9000.0));
        assert_eq!(histogram.snapshot().quantile_bound(0.99), None);
    }

    /// A resend request wakes the sink's task (even one not waiting yet), is taken once, and
    /// its answer reaches the asker.
    #[tokio::test]
    async fn a_resend_request_is_taken_once_and_answered() {
        let requests = ResendRequests::default();
        assert!(!requests.is_pending());
        assert!(requests.take().is_empty());
        let answer = requests.request();
        assert!(requests.is_pending());
        tokio::time::timeout(Duration::from_secs(1), requests.asked()).await.expect("woken");
        let replies = requests.take();
        assert_eq!(replies.len(), 1);
        assert!(!requests.is_pending());
        assert!(requests.take().is_empty());
        for reply in replies {
            reply.send(Ok(3)).unwrap();
        }
        assert_eq!(answer.await.unwrap(), Ok(3));
    }
}
