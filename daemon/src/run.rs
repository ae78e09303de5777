//! The daemon's top level: [`run`] starts the components in order (store, engine recovery and
//! replay, sinks, ingest and aggregator, sources, then the operator's endpoint and systemd),
//! and then serves one closed [`Event`] enum until everything has drained.
//!
//! Every state change of a running daemon goes through [`Daemon::handle`]: a stop request,
//! a component that ended, a reload, the periodic report, the stop deadline.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eddy_sensors::{ingest_channel, SensorRegistry, SourceStats};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::Config;
use crate::delivery::sink_set::{self, ComponentFuture, SinkSet, SinkTask};
use crate::ops::report::log_counters;
use crate::ops::{api, systemd, telemetry};
use crate::pipeline::aggregate::Aggregator;
use crate::pipeline::ingest::{Ingest, ProcessingClock};
use crate::pipeline::{marks, sources};
use crate::stats::{AggregateStats, Committed, IngestStats};
use crate::storage::{Store, StoreError};

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
    reloads: mpsc::Receiver<Config>,
) -> Result<(), RunError> {
    let daemon = Daemon::start(config).await?;
    daemon.serve(stop, reloads).await
}

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

/// What the main loop does after an event.
enum Flow {
    /// Wait for the next event.
    Continue,
    /// Begin the drain-first stop (sources cancelled, the deadline armed).
    BeginStop,
    /// The deadline passed: return at once with this error.
    Exit(RunError),
}

/// The running components, by name: for the stop report, and so that a task that panicked
/// is still reported by its name.
#[derive(Default)]
struct Components {
    tasks: JoinSet<(String, anyhow::Result<()>)>,
    running: BTreeSet<String>,
    names: HashMap<tokio::task::Id, String>,
}

impl Components {
    /// Spawns a component and tracks it by name.
    fn spawn(&mut self, name: String, fut: ComponentFuture) {
        self.running.insert(name.clone());
        let task_name = name.clone();
        let handle = self.tasks.spawn(async move { (task_name, fut.await) });
        self.names.insert(handle.id(), name);
    }

    fn spawn_sinks(&mut self, started: impl IntoIterator<Item = SinkTask>) {
        for task in started {
            self.spawn(task.component, task.future);
        }
    }

    /// The next component that ended (None: none is left).
    async fn next_exited(&mut self) -> Option<(String, anyhow::Result<()>)> {
        match self.tasks.join_next_with_id().await? {
            Ok((_, exited)) => Some(exited),
            Err(join_error) => Some((
                self.names.get(&join_error.id()).cloned().unwrap_or_else(|| "a task".into()),
                Err(anyhow::anyhow!("task panicked or was cancelled: {join_error}")),
            )),
        }
    }
}

/// A started daemon: its components run; [`Daemon::serve`] handles their events.
struct Daemon {
    config: Config,
    store: Store,
    components: Components,
    sinks: SinkSet,
    /// Wakes the main loop at each commit while no sink runs (free slots follow the commits).
    commits: watch::Receiver<Committed>,
    telemetry: Arc<telemetry::Telemetry>,
    /// Cancelled to stop: only sources are; everything downstream drains as its input closes.
    sources_stop: CancellationToken,
    /// At the stop deadline: sinks give up their delivery in flight.
    give_up: watch::Sender<bool>,
    /// Stops the endpoint and the watchdog when the daemon ends.
    _stop_observers: DropGuard,
    stopping: bool,
    failed: Option<anyhow::Error>,
}

impl Daemon {
    /// Opens the store, recovers and replays the engine, then starts the sinks, the pipeline,
    /// the sources and the observers, in that order, and says READY to systemd.
    async fn start(config: Config) -> Result<Daemon, RunError> {
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

        let mut components = Components::default();
        // Sinks first, so that results replayed above are delivered.
        let (give_up, give_up_rx) = watch::channel(false);
        let mut sinks = SinkSet::new(store.clone(), cursors, raw_cursors, committed_rx.clone(), give_up_rx);
        components.spawn_sinks(sinks.start_configured(&config.sinks)?);
        if config.sinks.is_empty() {
            tracing::warn!("No sink is configured: results are computed and discarded.");
        }

        let (engine_tx, engine_rx) = mpsc::channel(ENGINE_CHANNEL_CHUNKS);
        let ingest_stats = Arc::new(IngestStats::default());
        let source_stats: Vec<Arc<SourceStats>> =
            config.sources.iter().map(|source| Arc::new(SourceStats::new(source.name.clone()))).collect();
        let ingest = Ingest {
            stats: ingest_stats.clone(),
            store: store.clone(),
            flush_interval: config.flush_interval,
            batch_interval_ms: u64::try_from(config.engine.batch_interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            next_key,
            clock: ProcessingClock::new(aggregator.clock_ms()),
            failed_groups: 0,
            sources: source_stats.clone(),
            refused_sessions: marks::RefusedSessions::default(),
        };
        let (ingest_tx, ingest_rx) = ingest_channel(INGEST_CHANNEL_BATCHES);
        components.spawn(
            "aggregator".into(),
            Box::pin(async move { aggregator.run(engine_rx).await.map_err(anyhow::Error::from) }),
        );
        components.spawn(
            "ingest".into(),
            Box::pin(async move { ingest.run(ingest_rx, engine_tx).await.map_err(anyhow::Error::from) }),
        );

        // Sources last: once they are up, readings flow.
        let registry = Arc::new(SensorRegistry::new(config.max_sensors));
        let sources_stop = CancellationToken::new();
        for (source_idx, (source_config, stats)) in config.sources.iter().zip(&source_stats).enumerate() {
            let started = sources::start(
                source_idx,
                source_config,
                &config,
                registry.clone(),
                stats.clone(),
                ingest_tx.clone(),
                sources_stop.clone(),
                durable_marks.remove(&source_config.name).unwrap_or_default(),
            )
            .await
            .with_context(|| format!("cannot start source `{}`", source_config.name))?;
            components.spawn(format!("source {}", source_config.name), started);
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
            committed_rx.clone(),
        ));
        telemetry.sources_up.store(true, Ordering::Relaxed);
        let observers_stop = CancellationToken::new();
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

        Ok(Daemon {
            config,
            store,
            components,
            sinks,
            commits: committed_rx,
            telemetry,
            sources_stop,
            give_up,
            _stop_observers: observers_stop.drop_guard(),
            stopping: false,
            failed: None,
        })
    }

    /// The main loop: waits for the next [`Event`] and handles it, until every component has
    /// ended (then a final flush and report) or the stop deadline passes.
    async fn serve(
        mut self,
        stop: impl Future<Output = ()>,
        mut reloads: mpsc::Receiver<Config>,
    ) -> Result<(), RunError> {
        tokio::pin!(stop);
        let mut stop_requested = false;
        let mut commits_open = true;
        let mut reloads_open = true;
        let mut report = tokio::time::interval(STATUS_EVERY);
        report.reset();
        let deadline = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(deadline);
        loop {
            let event = tokio::select! {
                () = &mut stop, if !stop_requested => { stop_requested = true; Event::Stop }
                exited = self.components.next_exited() => match exited {
                    Some((name, result)) => Event::Exited { name, result },
                    None => break,
                },
                _ = report.tick() => Event::Report,
                () = &mut deadline, if self.stopping => Event::Deadline,
                reload = reloads.recv(), if reloads_open => match reload {
                    Some(new_config) => Event::Reload(Box::new(new_config)),
                    None => { reloads_open = false; continue; }
                },
                changed = self.commits.changed(), if commits_open && self.sinks.is_empty() => match changed {
                    Ok(()) => Event::Committed,
                    Err(_) => { commits_open = false; continue; }
                },
            };
            match self.handle(event).await {
                Flow::Continue => {}
                Flow::BeginStop if self.stopping => {}
                Flow::BeginStop => {
                    self.begin_stop();
                    report = tokio::time::interval(STOPPING_REPORT_EVERY);
                    report.reset();
                    deadline.as_mut().reset(tokio::time::Instant::now() + self.config.shutdown_timeout);
                }
                Flow::Exit(error) => return Err(error),
            }
        }
        self.store.flush().await.context("final flush")?;
        self.report();
        match self.failed {
            Some(error) => Err(RunError::Runtime(error)),
            None => {
                tracing::info!("eddy stopped cleanly.");
                Ok(())
            }
        }
    }

    /// Every state change of the running daemon.
    async fn handle(&mut self, event: Event) -> Flow {
        match event {
            Event::Stop => {
                tracing::info!(timeout = ?self.config.shutdown_timeout, "Stopping: draining sources, log, engine and sinks.");
                Flow::BeginStop
            }
            Event::Exited { name, result } => self.exited(name, result),
            Event::Reload(_) if self.stopping => {
                tracing::warn!("SIGHUP while stopping: the sinks are not reloaded.");
                Flow::Continue
            }
            Event::Reload(new_config) => {
                if let Some(key) = sinks_need_restart(&self.config, &new_config) {
                    tracing::warn!(changed = key, "SIGHUP: sinks not reloaded: they are validated against this setting, which takes a restart.");
                } else {
                    let (applied, started) = self.sinks.reload(new_config.sinks).await;
                    self.components.spawn_sinks(started);
                    log_reload(applied);
                }
                Flow::Continue
            }
            Event::Committed => {
                self.sinks.follow_committed();
                Flow::Continue
            }
            Event::Report if self.stopping => {
                tracing::info!(waiting_for = ?self.components.running, "Still stopping.");
                Flow::Continue
            }
            Event::Report => {
                self.report();
                Flow::Continue
            }
            Event::Deadline => {
                tracing::error!(still_running = ?self.components.running, "Stop deadline passed; exiting with work unfinished (it stays in the store).");
                let _ = self.give_up.send(true);
                self.components.tasks.abort_all();
                let _ = self.store.flush().await;
                Flow::Exit(RunError::Runtime(anyhow::anyhow!(
                    "stop deadline of {:?} passed",
                    self.config.shutdown_timeout
                )))
            }
        }
    }

    /// A component ended: fine while stopping (or a sink a reload retired), else the daemon
    /// stops, with an error if the component failed.
    fn exited(&mut self, name: String, result: anyhow::Result<()>) -> Flow {
        self.components.running.remove(&name);
        let mut flow = Flow::Continue;
        match result {
            Ok(()) if self.stopping || name.starts_with("sink ") => {
                tracing::debug!(component = %name, "Component stopped.")
            }
            Ok(()) => {
                tracing::warn!(component = %name, "Component stopped on its own; stopping eddy.");
                flow = Flow::BeginStop;
            }
            Err(error) => {
                tracing::error!(component = %name, error = %format!("{error:#}"), "Component failed; stopping eddy.");
                self.failed.get_or_insert(error.context(format!("{name} failed")));
                flow = Flow::BeginStop;
            }
        }
        // A sink a reload changed starts again with its new settings once the old task has
        // ended (its cursor is flushed); a removed one gives up its slot.
        let stopping = self.stopping || matches!(flow, Flow::BeginStop);
        if let Some(task) = self.sinks.exited(&name, stopping) {
            tracing::info!(component = %task.component, "Sink restarted with its new settings.");
            self.components.spawn(task.component, task.future);
        }
        flow
    }

    /// Starts the drain: only sources are cancelled; everything downstream drains as its
    /// input closes.
    fn begin_stop(&mut self) {
        self.stopping = true;
        self.telemetry.sources_up.store(false, Ordering::Relaxed);
        systemd::notify("STOPPING=1\nSTATUS=Draining.");
        self.sources_stop.cancel();
    }

    /// The counters log lines.
    fn report(&self) {
        log_counters(&self.telemetry.status());
    }
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
