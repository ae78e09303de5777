//! What an operator sees of a running eddy: the health verdict and the [`Status`] snapshot
//! (served as `/status`, rendered as `/metrics`, logged as the counters lines), all read from
//! the counters the components already keep.
//!
//! It holds no handle of the store: the store's counters come from its [`StoreMeters`], which
//! outlive a failed handle, so `/health` and `/status` keep answering while the main loop opens
//! a failed store again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use eddy_common::GatewayClock;
use eddy_sensors::SourceStats;
use tokio::sync::watch;

use crate::delivery::sink_set::SinkStatsList;
use crate::ops::metrics;
use crate::stats::{
    rfc3339_ms, AggregateStats, ClockStats, Committed, EngineCounters, IngestStats, SinkCounters, Status,
    StoreCounters, StoreHealth,
};
use crate::storage::StoreMeters;

/// The pipeline counts as stalled when its heartbeat (chunks and ticks through the engine,
/// one tick every 200 ms when idle) has not moved for this long.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(10);

/// How long `/health` warns after a source's MQTT broker reported dropped messages.
pub(crate) const BROKER_DROPS_WARN_FOR: Duration = Duration::from_secs(10 * 60);

/// Watches a counter that only moves while the pipeline works.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    last: Mutex<(u64, Instant)>,
}

impl Heartbeat {
    fn new() -> Heartbeat {
        Heartbeat { last: Mutex::new((0, Instant::now())) }
    }

    /// How long ago `count` last changed (as seen by the calls to this).
    pub(crate) fn still_for(&self, count: u64) -> Duration {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else { return Duration::ZERO };
        if last.0 != count {
            *last = (count, now);
        }
        now - last.1
    }
}

/// Everything the endpoint, the status and the watchdog read.
#[derive(Debug)]
pub(crate) struct Telemetry {
    pub(crate) device_id: String,
    pub(crate) started: Instant,
    pub(crate) sources: Vec<Arc<SourceStats>>,
    pub(crate) aggregate: Arc<AggregateStats>,
    pub(crate) ingest: Arc<IngestStats>,
    /// The sinks configured now (a reload changes the set).
    pub(crate) sinks: watch::Receiver<SinkStatsList>,
    /// The store's budget and counters.
    pub(crate) meters: StoreMeters,
    /// The store's directory, whose files make its size on disk.
    pub(crate) data_dir: PathBuf,
    /// Whether the store is open (the main loop sets it).
    pub(crate) store_health: Arc<StoreHealth>,
    /// The last committed seqs, from the engine running on the store now (a reopened store
    /// brings a new engine, [`Telemetry::set_committed`]).
    committed: Mutex<watch::Receiver<Committed>>,
    /// True once every source is up, false again when the drain starts.
    pub(crate) sources_up: AtomicBool,
    heartbeat: Heartbeat,
    /// Whether the wall clock is trusted (the sources' view of it).
    clock: GatewayClock,
    /// The wall clock's state, kept by the ingest task's watch.
    clock_stats: Arc<ClockStats>,
}

fn now_ms() -> u64 {
    u64::try_from(eddy_common::wall_clock_ms()).unwrap_or(0)
}

impl Telemetry {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        device_id: String,
        sources: Vec<Arc<SourceStats>>,
        aggregate: Arc<AggregateStats>,
        ingest: Arc<IngestStats>,
        sinks: watch::Receiver<SinkStatsList>,
        meters: StoreMeters,
        data_dir: PathBuf,
        store_health: Arc<StoreHealth>,
        committed: watch::Receiver<Committed>,
        clock: GatewayClock,
        clock_stats: Arc<ClockStats>,
    ) -> Telemetry {
        Telemetry {
            device_id,
            started: Instant::now(),
            sources,
            aggregate,
            ingest,
            sinks,
            meters,
            data_dir,
            store_health,
            committed: Mutex::new(committed),
            sources_up: AtomicBool::new(false),
            heartbeat: Heartbeat::new(),
            clock,
            clock_stats,
        }
    }

    /// The engine recovered on a reopened store announces its commits here.
    pub(crate) fn set_committed(&self, committed: watch::Receiver<Committed>) {
        *self.committed.lock().unwrap_or_else(PoisonError::into_inner) = committed;
    }

    /// How long the pipeline's heartbeat has not moved.
    pub(crate) fn pipeline_idle(&self) -> Duration {
        self.heartbeat.still_for(self.aggregate.inputs_total.load(Ordering::Relaxed))
    }

    /// Ok when sources are up, the store is open and takes writes, its file system has room
    /// and the pipeline moves; else the reasons.
    pub(crate) fn health(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !self.sources_up.load(Ordering::Relaxed) {
            problems.push("sources are not up (starting or stopping)".to_owned());
        } else {
            for source in self.sources.iter().filter(|source| !source.is_up()) {
                problems.push(format!(
                    "source {} is down (not listening, its port not open, or its broker not connected)",
                    source.name
                ));
            }
        }
        if let Some(failure) = self.store_health.failure() {
            problems.push(format!(
                "store failed: {failure}; new readings are refused until it is open again \
                 (eddy retries by itself, no restart needed)"
            ));
        }
        if let Some(short) = self.meters.short_of_space() {
            problems.push(short);
        }
        if let Some(refusal) = self.ingest.last_refusal() {
            problems.push(format!("store is not writable: {refusal}"));
        }
        let idle = self.pipeline_idle();
        if idle > STALL_AFTER {
            problems.push(format!("pipeline has made no progress for {} s", idle.as_secs()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// What is worth an operator's attention without making eddy unhealthy (`/health` stays
    /// 200): a wall clock that is not synchronised, an MQTT broker that reported dropped
    /// messages in the last [`BROKER_DROPS_WARN_FOR`], a hub that refuses a sink's credentials
    /// (records wait in the outbox, as for any unavailable uplink, and nothing is lost), dead
    /// letters dropped because their tree was full.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let now = Instant::now();
        let brokers = self.sources.iter().filter_map(|source| {
            let ago = source.broker_dropped_rose_ago(now).filter(|ago| *ago < BROKER_DROPS_WARN_FOR)?;
            let total = source.snapshot().broker_dropped.unwrap_or(0);
            Some(format!(
                "source {}: the MQTT broker dropped messages {} s ago (its counter, for all its \
                 clients, is at {total}): readings may be missing; raise its max_queued_messages \
                 (README, \"Broker settings\")",
                source.name,
                ago.as_secs()
            ))
        });
        let refusals = self.uplinks().into_iter().filter_map(|sink| {
            let since = sink.refused_since_ms?;
            Some(format!(
                "sink {}: the hub refuses our credentials since {} (HTTP {}); records wait in the \
                 outbox and are retried until it takes them: check the sink's token",
                sink.name,
                rfc3339_ms(i64::try_from(since).unwrap_or(i64::MAX)),
                sink.refused_status.unwrap_or(0)
            ))
        });
        let drops = self.meters.drop_stats();
        let dropped = drops.dropped_dead_letter_records.load(Ordering::Relaxed);
        let dead_letters = (dropped > 0).then(|| {
            format!(
                "{dropped} dead letters dropped ({} bytes) since eddy started: the dead-letter tree \
                 is full (storage.dead_letter_max_bytes = {}); look at them with `eddy dead-letters`",
                drops.dropped_dead_letter_bytes.load(Ordering::Relaxed),
                self.meters.budget_config().dead_letter_max_bytes
            )
        });
        self.clock_stats
            .warning(&self.clock)
            .into_iter()
            .chain(brokers)
            .chain(refusals)
            .chain(dead_letters)
            .collect()
    }

    fn uplinks(&self) -> Vec<SinkCounters> {
        let committed = *self.committed.lock().unwrap_or_else(PoisonError::into_inner).borrow();
        let now = now_ms();
        let sinks = self.sinks.borrow().clone();
        sinks.iter().map(|(name, stats)| stats.snapshot(name, committed, now)).collect()
    }

    /// Every counter now: the `/status` document, and what `/metrics` and the counters log
    /// lines are made from.
    pub(crate) fn status(&self) -> Status {
        let problems = self.health().err().unwrap_or_default();
        Status {
            device_id: self.device_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            healthy: problems.is_empty(),
            problems,
            warnings: self.warnings(),
            clock: self.clock_stats.snapshot(),
            pipeline_idle_ms: u64::try_from(self.pipeline_idle().as_millis()).unwrap_or(u64::MAX),
            sources: self.sources.iter().map(|source| source.snapshot()).collect(),
            engine: EngineCounters::read(&self.aggregate, &self.ingest),
            store: StoreCounters::read(&self.meters, &self.data_dir, &self.ingest, &self.store_health),
            uplinks: self.uplinks(),
        }
    }

    /// `/metrics` in the Prometheus text exposition format (version 0.0.4).
    pub(crate) fn metrics(&self) -> String {
        metrics::render(&self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_measures_time_since_the_counter_moved() {
        let heartbeat = Heartbeat::new();
        assert!(heartbeat.still_for(1) < Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert!(heartbeat.still_for(1) >= Duration::from_millis(60));
        assert!(heartbeat.still_for(2) < Duration::from_millis(50));
    }
}
