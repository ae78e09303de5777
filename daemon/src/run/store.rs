//! The store as the daemon holds it: one opening with the engine recovered and replayed on it
//! ([`open_store`], shared by the start-up and every reopening), and the state of a store that
//! failed ([`StoreFault`]).
//!
//! # A failed store is a state, not an exit
//! A full disk or a failing medium makes a write of the store fail (ENOSPC, EIO), and sled
//! then refuses every later write of that handle (`storage/meters.rs` has the evidence).
//! Exiting would leave systemd to restart eddy into the same full disk until the unit's start
//! limit gives up on it. Instead the daemon keeps running and:
//! 1. lets go of the store everywhere: the ingest task refuses readings (nack, counted per
//!    source and store-wide) without touching the disk; the aggregator drains and ends; every
//!    sink is retired, its slot kept at its durable cursor; the sources stay up;
//! 2. says so: `/health` is 503 with the reason, systemd's STATUS names it, and the main loop
//!    beats the watchdog while it waits;
//! 3. once every handle is dropped and the file system has `storage.min_free_bytes` free
//!    again, opens the store again in this process (with backoff while that fails), recovers
//!    the engine from its last commit and replays the log, as after a crash, then resumes the
//!    ingest and the sinks from their durable cursors.
//!
//! Nothing acknowledged is lost: a reading is acknowledged only after its fsync, the log is
//! trimmed only through a flushed commit, and a cursor is published only after its flush, so
//! what the reopened store holds covers everything acknowledged. A group refused because its
//! write failed may still be found in the store (as after a crash: "may or may not be in the
//! log"). At start-up, a store that cannot be opened (or replayed) because the disk is full or
//! failing is waited for the same way, before READY, extending systemd's start timeout.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use eddy_common::Backoff;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::pipeline::aggregate::Aggregator;
use crate::stats::{AggregateStats, Committed};
use crate::storage::{Store, StoreError, StoreMeters};

/// First pause after a failed opening of the store; doubles up to [`STORE_MAX_BACKOFF`].
pub(super) const STORE_MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause between two openings of a failed store.
pub(super) const STORE_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// While waiting for the store, the wait is logged again this often.
const STORE_WAIT_LOG_EVERY: Duration = Duration::from_secs(30);

/// The store's failure, if `error` is one (a read, write or flush of sled that failed), as
/// opposed to a bug or a closed channel.
pub(super) fn store_failure(error: &anyhow::Error) -> Option<&StoreError> {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<StoreError>())
        .find(|store_error| store_error.is_runtime_failure())
}

/// One opening of the store with the engine recovered and replayed on it: what the start-up
/// and every reopening after a failure share.
pub(super) struct Opened {
    pub(super) store: Store,
    pub(super) aggregator: Aggregator,
    pub(super) committed: watch::Receiver<Committed>,
    /// The first log key past every chunk the log holds.
    pub(super) next_key: u64,
    /// The sources' marks as of the replay: what each source had made durable (used at
    /// start-up; the sources keep theirs across a reopening).
    pub(super) marks: Vec<(Vec<u8>, u64)>,
}

/// Why an opening failed: the store itself, or the engine's recovery on it.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Engine(anyhow::Error),
}

impl OpenError {
    /// A full or failing disk, which eddy waits out rather than exits for.
    pub(super) fn is_waitable(&self) -> bool {
        match self {
            OpenError::Store(error) => error.is_waitable_open_failure() || error.is_runtime_failure(),
            OpenError::Engine(error) => store_failure(error).is_some(),
        }
    }
}

/// What an opening of the store needs from the configuration and the daemon, owned so that a
/// reopening can run as its own task.
#[derive(Clone)]
pub(super) struct OpenArgs {
    pub(super) config: Config,
    /// The meters of the earlier opening, taken over by a reopening (None at start-up).
    pub(super) meters: Option<StoreMeters>,
    pub(super) cursors: Arc<Vec<AtomicU64>>,
    pub(super) raw_cursors: Arc<Vec<AtomicU64>>,
    pub(super) aggregate_stats: Arc<AggregateStats>,
    /// Where the aggregator releases the ids of sensors the engine forgot.
    pub(super) sensor_registry: Arc<eddy_sensors::SensorRegistry>,
}

/// Opens the store, sets its budget (or takes over `meters`), recovers the engine and replays
/// the log after its last commit. The sled open and the scans block: off the async workers.
pub(super) async fn open_store(args: OpenArgs) -> Result<Opened, OpenError> {
    let OpenArgs { config, meters, cursors, raw_cursors, aggregate_stats, sensor_registry } = args;
    let recover_config = config.clone();
    let recovered = tokio::task::spawn_blocking(move || {
        let config = recover_config;
        let store = Store::open(
            &config.data_dir,
            config.cache_capacity,
            config.engine.field_names.clone(),
            config.engine.tag_names.clone(),
        )
        .map_err(OpenError::Store)?;
        // The disk budget counts the live log and outbox bytes (one scan).
        let store = match &meters {
            None => store.with_budget(crate::storage::BudgetConfig {
                // The downsampler merges by the configured windows' shapes.
                shapes: crate::engine::downsample::Shapes::from_spec(&config.engine),
                ..config.budget.clone()
            }),
            Some(meters) => store.with_meters_of(meters),
        }
        .map_err(OpenError::Store)?;
        let (aggregator, committed) = Aggregator::recover(
            store.clone(),
            config.engine.clone(),
            config.checkpoint_interval,
            cursors,
            aggregate_stats,
        )
        .map_err(|error| {
            OpenError::Engine(anyhow::Error::from(error).context("cannot recover the engine state"))
        })?;
        let last_log_key = store
            .last_log_key()
            .map_err(|error| OpenError::Engine(anyhow::Error::from(error).context("cannot read the log")))?
            .unwrap_or(0);
        let aggregator = aggregator
            .forwarding_raw(config.forward_raw, raw_cursors)
            .releasing_sensors_to(sensor_registry)
            .committing_results_within(config.result_commit_delay);
        Ok((store, aggregator, committed, last_log_key))
    })
    .await
    .map_err(|join_error| OpenError::Engine(anyhow::anyhow!("store opening task failed: {join_error}")))??;
    let (store, mut aggregator, committed, last_log_key) = recovered;
    // Replay what the log holds past the last commit, before anything new is written: chunk
    // keys continue after what is stored.
    aggregator
        .replay(last_log_key)
        .await
        .map_err(|error| OpenError::Engine(anyhow::Error::from(error).context("cannot replay the log")))?;
    let next_key = last_log_key.max(aggregator.log_pos()) + 1;
    // After the replay, whose commit wrote the marks of the chunks it replayed.
    let marks = store.load_marks().map_err(|error| {
        OpenError::Engine(anyhow::Error::from(error).context("cannot read the sources' marks"))
    })?;
    Ok(Opened { store, aggregator, committed, next_key, marks })
}

/// The store failed: since when, why, and how the reopening goes.
pub(super) struct StoreFault {
    pub(super) since: Instant,
    /// The error that failed it.
    pub(super) error: String,
    /// The ingest task has let go of its handle.
    pub(super) ingest_released: bool,
    /// Pauses between failed openings.
    pub(super) backoff: Backoff,
    /// No opening before this.
    pub(super) next_attempt: Instant,
    /// An opening under way.
    pub(super) attempt: Option<oneshot::Receiver<anyhow::Result<Opened>>>,
    /// What the wait was last logged for, and when.
    pub(super) last_logged: Option<(&'static str, Instant)>,
}

impl StoreFault {
    pub(super) fn new(error: &str) -> StoreFault {
        let now = Instant::now();
        StoreFault {
            since: now,
            error: error.to_owned(),
            ingest_released: false,
            backoff: Backoff::new(STORE_MIN_BACKOFF, STORE_MAX_BACKOFF),
            next_attempt: now,
            attempt: None,
            last_logged: None,
        }
    }

    /// Whether waiting `for_what` is due to be logged: when the wait starts or changes, and
    /// every [`STORE_WAIT_LOG_EVERY`] while it lasts.
    pub(super) fn log_due(&mut self, for_what: &'static str) -> bool {
        let due = self
            .last_logged
            .is_none_or(|(logged, at)| logged != for_what || at.elapsed() >= STORE_WAIT_LOG_EVERY);
        if due {
            self.last_logged = Some((for_what, Instant::now()));
        }
        due
    }
}

/// Whether an opening of the failed store is under way.
pub(super) fn reopening_pending(fault: &Option<StoreFault>) -> bool {
    fault.as_ref().is_some_and(|fault| fault.attempt.is_some())
}
