//! eddy's daemon: wires sources, the durable log, the engine and the sinks together, and runs
//! them until a signal asks for a drain-first stop. `main.rs` is a thin shell around [`run`].

pub mod config;
pub mod engine;
pub mod record;
pub mod storage;

mod aggregate;
mod api;
mod deliver;
mod ingest;
mod inspect;
mod marks;
mod sink_set;
mod sources;
mod systemd;
mod telemetry;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eddy_sensors::{ingest_channel, SensorRegistry, SourceStats};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::aggregate::{AggregateStats, Aggregator};
use crate::config::Config;
use crate::deliver::DeliveryStats;
use crate::ingest::{Ingest, ProcessingClock};
use crate::sink_set::{ComponentFuture, SinkSet};
use crate::storage::{Store, StoreError};

pub use crate::inspect::print_dead_letters;

/// Why the daemon stopped with an error; `main` maps it to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store could not be opened (exit code 3).
    #[error(transparent)]
    StoreOpen(StoreError),
    /// Anything else at run time (exit code 1).
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
}

/// Capacity of the ingest channel, in batches. With per-connection pipelining this bounds the
/// readings held in memory between the sockets and the log.
const INGEST_CHANNEL_BATCHES: usize = 32;
/// Capacity of the channel from the log to the engine, in chunks.
const ENGINE_CHANNEL_CHUNKS: usize = 32;
/// How often the daemon logs its counters.
const STATUS_EVERY: Duration = Duration::from_secs(30);
/// How often, while stopping, the daemon says what it still waits for.
const STOPPING_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Everything that can change the daemon's state; the main loop matches on it.
enum Event {
    /// SIGINT/SIGTERM: start the drain.
    Stop,
    /// A component ended.
    Exited { name: String, result: anyhow::Result<()> },
    /// Time to log counters (or, while stopping, the components still running).
    Report,
    /// The stop deadline passed.
    Deadline,
    /// SIGHUP: the configuration file re-read and validated; its sinks are applied.
    Reload(Box<Config>),
    /// The aggregator committed, while no sink runs (free cursor slots follow it).
    Committed,
}

/// Runs the daemon until `stop` resolves (then drains) or a component fails.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> Result<(), RunError> {
    // Nobody sends: the daemon runs on its start-up configuration.
    let (_no_reloads, reloads) = mpsc::channel(1);
    run_with_reloads(config, stop, reloads).await
}

/// Like [`run`], and applies each configuration received on `reloads` (a validated re-read of
/// the file, as `eddy run` sends on SIGHUP): the sinks are added, restarted with new settings or
/// removed, drain-first, without a restart; every other section keeps its start-up value (the
/// sender reports those as needing a restart). A closed channel just ends the reloads.
pub async fn run_with_reloads(
    config: Config,
    stop: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<Config>,
) -> Result<(), RunError> {
    tracing::info!(device_id = %config.device_id, data_dir = %config.data_dir.display(), "Starting eddy.");
    let store = Store::open(
        &config.data_dir,
        config.cache_capacity,
        config.engine.field_names.clone(),
        config.engine.tag_names.clone(),
    )
    .map_err(RunError::StoreOpen)?;
    // The disk budget counts the live log and outbox bytes (one scan at start-up).
    let store = store.with_budget(config.budget.clone()).map_err(RunError::StoreOpen)?;

    // Recover the engine and replay what the log holds past its last commit, before any
    // source is up: the ingest keys and clock continue after what is stored.
    // One cursor slot per sink, plus spares for sinks a reload adds: 0 until the sink task
    // publishes its durable cursor (nothing is trimmed before, also not by the replay below).
    let (cursors, raw_cursors) = sink_set::cursor_slots(&config.sinks);
    let aggregate_stats = Arc::new(AggregateStats::default());
    let (mut aggregator, committed_rx) = Aggregator::recover(
        store.clone(),
        config.engine.clone(),
        config.checkpoint_interval,
        cursors.clone(),
        aggregate_stats.clone(),
    )
    .map(|(aggregator, committed)| {
        (aggregator.forwarding_raw(config.forward_raw, raw_cursors.clone()), committed)
    })
    .context("cannot recover the engine state")?;
    let last_log_key = store.last_log_key().context("cannot read the log")?.unwrap_or(0);
    aggregator.replay(last_log_key).await.context("cannot replay the log")?;
    let next_key = last_log_key.max(aggregator.log_pos()) + 1;
    // What each source had made durable, so it recognises a resend of it (exactly-once
    // ingest for numbered TCP sessions and MQTT redeliveries).
    let mut durable_marks = marks::durable_by_source(
        store.load_marks().context("cannot read the sources' marks")?,
        &aggregator.uncommitted_marks(),
    );

    let mut tasks: JoinSet<(String, anyhow::Result<()>)> = JoinSet::new();
    let mut running: BTreeSet<String> = BTreeSet::new();
    // Task ids to names, so that a task that panicked is still reported by its name.
    let mut names: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut spawn =
        |name: String, fut: ComponentFuture| spawn_component(&mut tasks, &mut running, &mut names, name, fut);

    // Sinks first, so that results replayed above are delivered.
    let (give_up_tx, give_up_rx) = watch::channel(false);
    let mut sinks = SinkSet::new(store.clone(), cursors, raw_cursors, committed_rx.clone(), give_up_rx);
    for task in sinks.start_configured(&config.sinks)? {
        spawn(task.component, task.future);
    }
    if config.sinks.is_empty() {
        tracing::warn!("No sink is configured: results are computed and discarded.");
    }
    // Kept for the status log (outbox depth); the sinks watch the sender, not the receivers.
    let status_committed = committed_rx.clone();
    // Wakes the main loop at each commit while no sink runs (free slots follow the commits).
    let mut commits = committed_rx;
    let mut commits_open = true;
    let mut reloads_open = true;

    let (engine_tx, engine_rx) = mpsc::channel(ENGINE_CHANNEL_CHUNKS);
    let ingest_stats = Arc::new(telemetry::IngestStats::default());
    let source_stats: Vec<Arc<SourceStats>> =
        config.sources.iter().map(|source| Arc::new(SourceStats::new(source.name.clone()))).collect();
    let ingest = Ingest {
        stats: ingest_stats.clone(),
        store: store.clone(),
        flush_interval: config.flush_interval,
        batch_interval_ms: u64::try_from(config.engine.batch_interval.as_millis()).unwrap_or(u64::MAX).max(1),
        next_key,
        clock: ProcessingClock::new(aggregator.clock_ms()),
        failed_groups: 0,
        sources: source_stats.clone(),
        refused_sessions: marks::RefusedSessions::default(),
    };
    let (ingest_tx, ingest_rx) = ingest_channel(INGEST_CHANNEL_BATCHES);
    spawn(
        "aggregator".into(),
        Box::pin(async move { aggregator.run(engine_rx).await.map_err(anyhow::Error::from) }),
    );
    spawn(
        "ingest".into(),
        Box::pin(async move { ingest.run(ingest_rx, engine_tx).await.map_err(anyhow::Error::from) }),
    );

    // Sources last: once they are up, readings flow.
    let registry = Arc::new(SensorRegistry::new(config.max_sensors));
    let sources_stop = CancellationToken::new();
    for (source_idx, (source_config, stats)) in config.sources.iter().zip(&source_stats).enumerate() {
        let stats = stats.clone();
        let started = sources::start(
            source_idx,
            source_config,
            &config,
            registry.clone(),
            stats,
            ingest_tx.clone(),
            sources_stop.clone(),
            durable_marks.remove(&source_config.name).unwrap_or_default(),
        )
        .await
        .with_context(|| format!("cannot start source `{}`", source_config.name))?;
        spawn(format!("source {}", source_config.name), started);
    }
    // Only sources hold senders now: when they all stop, the ingest task sees the end.
    drop(ingest_tx);
    // What operators see: the HTTP endpoint, systemd's readiness and watchdog. Outside the
    // component set: they only read counters, and the endpoint stays up during the drain.
    let telemetry = Arc::new(telemetry::Telemetry::new(
        config.device_id.clone(),
        source_stats.clone(),
        aggregate_stats.clone(),
        ingest_stats,
        sinks.stats_watch(),
        store.clone(),
        status_committed.clone(),
    ));
    telemetry.sources_up.store(true, Ordering::Relaxed);
    let observers_stop = CancellationToken::new();
    let _stop_observers = observers_stop.clone().drop_guard();
    if let Some(listen) = config.api_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on api.listen {listen}"))?;
        let bound = listener.local_addr().unwrap_or(listen);
        tracing::info!(listen = %bound, "HTTP endpoint up: /health, /metrics, /status.");
        tokio::spawn(api::serve(listener, telemetry.clone(), observers_stop.clone()));
    }
    if let Some(interval) = systemd::watchdog_interval() {
        let watchdog = systemd::watchdog(interval, aggregate_stats.clone(), || {
            systemd::notify("WATCHDOG=1");
        });
        let stop = observers_stop.clone();
        tokio::spawn(async move { stop.run_until_cancelled(watchdog).await });
    }
    tracing::info!(sources = config.sources.len(), sinks = config.sinks.len(), "eddy is ready.");
    systemd::notify("READY=1\nSTATUS=Taking readings.");

    // The main loop: every state change of the daemon goes through this one match.
    tokio::pin!(stop);
    let mut stop_requested = false;
    let mut failed: Option<anyhow::Error> = None;
    let mut report = tokio::time::interval(STATUS_EVERY);
    report.reset();
    let deadline = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(deadline);
    let mut stopping = false;
    loop {
        let event = tokio::select! {
            () = &mut stop, if !stop_requested => { stop_requested = true; Event::Stop }
            joined = tasks.join_next_with_id() => match joined {
                Some(Ok((_, (name, result)))) => Event::Exited { name, result },
                Some(Err(join_error)) => Event::Exited {
                    name: names.get(&join_error.id()).cloned().unwrap_or_else(|| "a task".into()),
                    result: Err(anyhow::anyhow!("task panicked or was cancelled: {join_error}")),
                },
                None => break,
            },
            _ = report.tick() => Event::Report,
            () = &mut deadline, if stopping => Event::Deadline,
            reload = reloads.recv(), if reloads_open => match reload {
                Some(new_config) => Event::Reload(Box::new(new_config)),
                None => { reloads_open = false; continue; }
            },
            changed = commits.changed(), if commits_open && sinks.is_empty() => match changed {
                Ok(()) => Event::Committed,
                Err(_) => { commits_open = false; continue; }
            },
        };
        let mut stop_now = false;
        match event {
            Event::Stop => {
                tracing::info!(timeout = ?config.shutdown_timeout, "Stopping: draining sources, log, engine and sinks.");
                stop_now = true;
            }
            Event::Exited { name, result } => {
                running.remove(&name);
                match result {
                    Ok(()) if stopping || name.starts_with("sink ") => {
                        tracing::debug!(component = %name, "Component stopped.")
                    }
                    Ok(()) => {
                        tracing::warn!(component = %name, "Component stopped on its own; stopping eddy.");
                        stop_now = true;
                    }
                    Err(error) => {
                        tracing::error!(component = %name, error = %format!("{error:#}"), "Component failed; stopping eddy.");
                        failed.get_or_insert(error.context(format!("{name} failed")));
                        stop_now = true;
                    }
                }
                // A sink a reload changed starts again with its new settings once the old task
                // has ended (its cursor is flushed); a removed one gives up its slot.
                if let Some(task) = sinks.exited(&name, stopping || stop_now) {
                    tracing::info!(component = %task.component, "Sink restarted with its new settings.");
                    spawn_component(&mut tasks, &mut running, &mut names, task.component, task.future);
                }
            }
            Event::Reload(_) if stopping => {
                tracing::warn!("SIGHUP while stopping: the sinks are not reloaded.");
            }
            Event::Reload(new_config) => {
                if let Some(key) = sinks_need_restart(&config, &new_config) {
                    tracing::warn!(changed = key, "SIGHUP: sinks not reloaded: they are validated against this setting, which takes a restart.");
                } else {
                    let (applied, started) = sinks.reload(new_config.sinks).await;
                    for task in started {
                        spawn_component(&mut tasks, &mut running, &mut names, task.component, task.future);
                    }
                    log_reload(applied);
                }
            }
            Event::Committed => sinks.follow_committed(),
            Event::Report if stopping => {
                tracing::info!(waiting_for = ?running, "Still stopping.");
            }
            Event::Report => {
                log_status(&source_stats, &aggregate_stats, &sinks.stats(), &store);
                log_uplinks(&sinks.stats(), &store, *status_committed.borrow());
            }
            Event::Deadline => {
                tracing::error!(still_running = ?running, "Stop deadline passed; exiting with work unfinished (it stays in the store).");
                let _ = give_up_tx.send(true);
                tasks.abort_all();
                let _ = store.flush().await;
                return Err(RunError::Runtime(anyhow::anyhow!(
                    "stop deadline of {:?} passed",
                    config.shutdown_timeout
                )));
            }
        }
        if stop_now && !stopping {
            // Only sources are cancelled; everything downstream drains as its input closes.
            stopping = true;
            telemetry.sources_up.store(false, Ordering::Relaxed);
            systemd::notify("STOPPING=1\nSTATUS=Draining.");
            sources_stop.cancel();
            report = tokio::time::interval(STOPPING_REPORT_EVERY);
            report.reset();
            deadline.as_mut().reset(tokio::time::Instant::now() + config.shutdown_timeout);
        }
    }
    store.flush().await.context("final flush")?;
    log_status(&source_stats, &aggregate_stats, &sinks.stats(), &store);
    log_uplinks(&sinks.stats(), &store, *status_committed.borrow());
    match failed {
        Some(error) => Err(RunError::Runtime(error)),
        None => {
            tracing::info!("eddy stopped cleanly.");
            Ok(())
        }
    }
}

/// Spawns a component and tracks it by name (the stop report, panics reported by name).
fn spawn_component(
    tasks: &mut JoinSet<(String, anyhow::Result<()>)>,
    running: &mut BTreeSet<String>,
    names: &mut HashMap<tokio::task::Id, String>,
    name: String,
    fut: ComponentFuture,
) {
    running.insert(name.clone());
    let task_name = name.clone();
    let handle = tasks.spawn(async move { (task_name, fut.await) });
    names.insert(handle.id(), name);
}

/// A restart-only setting the sinks are validated against that `new` changes: sinks built
/// from it would disagree with the running engine (MQTT topics and client ids carry the
/// device id; a `raw` sink needs `forward_raw`), so none is reloaded.
fn sinks_need_restart(running: &Config, new: &Config) -> Option<&'static str> {
    if running.device_id != new.device_id {
        Some("device_id")
    } else if running.forward_raw != new.forward_raw {
        Some("engine.forward_raw")
    } else {
        None
    }
}

/// The log lines of an applied sink reload.
fn log_reload(applied: sink_set::Applied) {
    for (sink, error) in &applied.failed {
        tracing::error!(%sink, error = %format!("{error:#}"), "SIGHUP: cannot set up the new settings of this sink; it keeps running as before (or, if new, is not started).");
    }
    if applied.added.is_empty() && applied.changed.is_empty() && applied.removed.is_empty() {
        if applied.failed.is_empty() {
            tracing::info!("SIGHUP: sinks unchanged.");
        }
        return;
    }
    tracing::info!(
        "SIGHUP: sinks reloaded: added [{}], changed [{}], removed [{}].",
        applied.added.join(", "),
        applied.changed.join(", "),
        applied.removed.join(", ")
    );
}

fn log_status(
    sources: &[Arc<SourceStats>],
    aggregate: &AggregateStats,
    sinks: &[(String, Arc<DeliveryStats>)],
    store: &Store,
) {
    for source in sources {
        let snapshot = source.snapshot();
        let rejected: Vec<String> =
            snapshot.rejected.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
        tracing::info!(
            source = %source.name,
            received = snapshot.received,
            accepted = snapshot.accepted,
            refused = snapshot.refused,
            duplicates = snapshot.duplicates,
            up = source.is_up(),
            rejected = snapshot.rejected_total(),
            by_reason = %rejected.join(","),
            "Source counters."
        );
    }
    tracing::info!(
        results = aggregate.results_total.load(Ordering::Relaxed),
        late_readings = aggregate.late_total.load(Ordering::Relaxed),
        commits = aggregate.commits_total.load(Ordering::Relaxed),
        corrupt_log_chunks = store.stats().corrupt_log_chunks.load(Ordering::Relaxed),
        corrupt_outbox_pages = store.stats().corrupt_outbox_entries.load(Ordering::Relaxed),
        corrupt_state_pages = store.stats().corrupt_state_pages.load(Ordering::Relaxed),
        corrupt_meta = store.stats().corrupt_meta.load(Ordering::Relaxed),
        flushes = store.stats().flushes.load(Ordering::Relaxed),
        store_bytes = store.size_on_disk().unwrap_or(0),
        "Engine counters."
    );
    for (name, stats) in sinks {
        tracing::info!(
            sink = %name,
            delivered = stats.delivered_total.load(Ordering::Relaxed),
            retries = stats.retries_total.load(Ordering::Relaxed),
            rejected = stats.rejected_total.load(Ordering::Relaxed),
            "Sink counters."
        );
    }
}

/// The store budget and per-sink delivery counters (outbox depth and age, drops by reason).
fn log_uplinks(sinks: &[(String, Arc<DeliveryStats>)], store: &Store, committed: aggregate::Committed) {
    let drops = store.drop_stats();
    tracing::info!(
        used_bytes = store.used_bytes(),
        max_bytes = store.budget_config().max_bytes.unwrap_or(0),
        dropped_budget = drops.dropped_budget_records.load(Ordering::Relaxed),
        dropped_ttl = drops.dropped_ttl_records.load(Ordering::Relaxed),
        refused_budget = drops.refused_budget_readings.load(Ordering::Relaxed),
        refused_disk = drops.refused_disk_readings.load(Ordering::Relaxed),
        dead_letters = drops.dead_letter_records.load(Ordering::Relaxed),
        dropped_dead_letters = drops.dropped_dead_letter_records.load(Ordering::Relaxed),
        "Store budget counters."
    );
    let now_ms = u64::try_from(eddy_sensors::wall_clock_ms()).unwrap_or(0);
    for (name, stats) in sinks {
        let counters = stats.snapshot(committed, now_ms);
        tracing::info!(
            sink = %name,
            delivered = counters.delivered,
            retries = counters.retries,
            rejected = counters.rejected,
            dropped_budget = counters.dropped_budget,
            dropped_ttl = counters.dropped_ttl,
            outbox_depth = counters.outbox_depth,
            raw_depth = counters.raw_depth,
            outbox_age_ms = counters.outbox_age_ms,
            "Uplink counters."
        );
    }
}
