//! The daemon's top level: [`run`] starts the components in order (store, engine recovery and
//! replay, sinks, ingest and aggregator, sources, then the operator's endpoint and systemd),
//! and then serves one closed [`Event`] enum until everything has drained.
//!
//! Every state change of a running daemon goes through [`Daemon::handle`]: a stop request,
//! a component that ended, a reload, the periodic report, the stop deadline, a failure of the
//! store and its reopening (`store.rs`: why a failed store is a state, not an exit).

mod store;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eddy_common::{Backoff, GatewayClock};
use eddy_sensors::{ingest_channel, SensorRegistry, SourceStats};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{Config, SinkReload};
use crate::delivery::sink_set::{self, ComponentFuture, ReloadPlan, SinkSet, SinkTask};
use crate::ops::report::log_counters;
use crate::ops::{api, systemd, telemetry};
use crate::pipeline::aggregate::Aggregator;
use crate::pipeline::clock::{Anchor, ClockWatch, ProcessingClock};
use crate::pipeline::ingest::{EngineInput, Ingest, IngestNotice, StoreControl, StoreLink};
use crate::pipeline::{marks, sources};
use crate::run::store::{
    open_store, reopening_pending, store_failure, OpenArgs, OpenError, Opened, StoreFault, STORE_MAX_BACKOFF,
    STORE_MIN_BACKOFF,
};
use crate::stats::{AggregateStats, ClockStats, Committed, IngestStats, StoreHealth};
use crate::storage::{Store, StoreError, StoreMeters};

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
/// While the store is failed, how often the main loop looks whether it can open it again (and
/// beats the watchdog).
const STORE_WAIT_TICK: Duration = Duration::from_secs(1);

/// Test switches read from the environment, compiled only with the `test-switches` feature
/// (tests/e2e/tidy.rs checks these names stay inside this module).
#[cfg(feature = "test-switches")]
mod test_switches {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use crate::delivery::sink_set::ComponentFuture;

    /// With `1`, a component panics a second after the start (tests/e2e/panic.rs: the report
    /// line and the abort).
    const PANIC_VARIABLE: &str = "EDDY_TEST_PANIC";

    /// The panicking component, when the switch is on; it ends quietly if eddy stops first.
    pub(super) fn panicking_task(stop: CancellationToken) -> Option<ComponentFuture> {
        if std::env::var_os(PANIC_VARIABLE).is_none_or(|value| value != "1") {
            return None;
        }
        tracing::warn!("{PANIC_VARIABLE}=1: a task panics in a second.");
        Some(Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    panic!("{PANIC_VARIABLE}=1: a panic on purpose,\nwith a second line")
                }
                () = stop.cancelled() => Ok(()),
            }
        }))
    }
}

/// Runs the daemon until `stop` resolves (then drains) or a component fails.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> Result<(), RunError> {
    // Nobody sends: the daemon runs on its start-up configuration.
    let (_no_reloads, reloads) = mpsc::channel(1);
    run_with_reloads(config, stop, reloads).await
}

/// Like [`run`], and applies the sinks of each reload received on `reloads` (a re-read of the
/// file, as `eddy run` sends on SIGHUP): the sinks are added, restarted with new settings or
/// removed, drain-first, without a restart; a sink whose new settings are invalid keeps
/// running as it is; every other section keeps its start-up value (the sender reports those
/// as needing a restart). A closed channel just ends the reloads.
pub async fn run_with_reloads(
    config: Config,
    stop: impl Future<Output = ()>,
    reloads: mpsc::Receiver<SinkReload>,
) -> Result<(), RunError> {
    let mut stop = std::pin::pin!(stop);
    // A stop while eddy waits for its disk at start-up ends it cleanly.
    let Some(daemon) = Daemon::start(config, stop.as_mut()).await? else { return Ok(()) };
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
    /// SIGHUP: the sinks of the configuration file re-read; they are set up, then applied.
    Reload(Box<SinkReload>),
    /// The sinks of a reload are set up: apply them.
    ReloadPlanned(ReloadPlan),
    /// The aggregator committed, while no sink runs (free cursor slots follow it).
    Committed,
    /// The ingest task says something about the store.
    Ingest(IngestNotice),
    /// While the store is failed: time to look whether it can be opened again.
    StoreWait,
    /// An opening of the failed store ended.
    Reopened(Box<anyhow::Result<Opened>>),
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

/// The running components, by name, for the stop report.
///
/// A panicking task is not among what they report: a panic prints its report line and aborts
/// the process (`ops/panic.rs`, the chosen strategy), so a task ends here only with its result.
#[derive(Default)]
struct Components {
    tasks: JoinSet<(String, anyhow::Result<()>)>,
    running: BTreeSet<String>,
}

impl Components {
    /// Spawns a component and tracks it by name.
    fn spawn(&mut self, name: String, fut: ComponentFuture) {
        self.running.insert(name.clone());
        self.tasks.spawn(async move { (name, fut.await) });
    }

    fn spawn_sinks(&mut self, started: impl IntoIterator<Item = SinkTask>) {
        for task in started {
            self.spawn(task.component, task.future);
        }
    }

    /// Spawns the aggregator on its input.
    fn spawn_aggregator(&mut self, aggregator: Aggregator, input: mpsc::Receiver<EngineInput>) {
        self.spawn(
            "aggregator".into(),
            Box::pin(async move { aggregator.run(input).await.map_err(anyhow::Error::from) }),
        );
    }

    /// The components that use the store besides the ingest task: the aggregator and the sinks.
    fn holding_the_store(&self) -> Vec<&String> {
        self.running.iter().filter(|name| *name == "aggregator" || name.starts_with("sink ")).collect()
    }

    /// The next component that ended (None: none is left). A join error can only be a
    /// cancellation (a panic aborts the process first), and tasks are cancelled only at the
    /// stop deadline, after which the main loop no longer asks.
    async fn next_exited(&mut self) -> Option<(String, anyhow::Result<()>)> {
        match self.tasks.join_next().await? {
            Ok(exited) => Some(exited),
            Err(join_error) => Some(("a cancelled task".into(), Err(anyhow::anyhow!("{join_error}")))),
        }
    }
}

/// A started daemon: its components run; [`Daemon::serve`] handles their events.
struct Daemon {
    config: Config,
    /// `None` while the store is failed and not yet open again.
    store: Option<Store>,
    /// The store's budget and counters, across its openings.
    meters: StoreMeters,
    components: Components,
    sinks: SinkSet,
    /// Wakes the main loop at each commit while no sink runs (free slots follow the commits).
    commits: watch::Receiver<Committed>,
    commits_open: bool,
    telemetry: Arc<telemetry::Telemetry>,
    /// Cancelled to stop: only sources are; everything downstream drains as its input closes.
    sources_stop: CancellationToken,
    /// At the stop deadline: sinks give up their delivery in flight.
    give_up: watch::Sender<bool>,
    /// Stops the endpoint and the watchdog when the daemon ends.
    _stop_observers: DropGuard,
    stopping: bool,
    failed: Option<anyhow::Error>,
    /// Orders to the ingest task about the store, and its notices.
    ingest_control: mpsc::Sender<StoreControl>,
    ingest_notices: mpsc::Receiver<IngestNotice>,
    /// Handed to each engine recovered on a reopened store.
    cursors: Arc<Vec<AtomicU64>>,
    raw_cursors: Arc<Vec<AtomicU64>>,
    aggregate_stats: Arc<AggregateStats>,
    /// The gateway's sensor cap, in front of which each source has its own; the aggregator
    /// releases the ids of sensors the engine forgot.
    sensor_registry: Arc<SensorRegistry>,
    /// Whether the store is open, for `/health` and `/status`.
    store_health: Arc<StoreHealth>,
    /// The store failed and is being opened again.
    fault: Option<StoreFault>,
    /// Beaten once per [`STORE_WAIT_TICK`] while the store is failed: the watchdog's sign
    /// that the main loop is alive and waiting on purpose.
    waiting_beats: Arc<AtomicU64>,
    /// A sink reload being set up: the main loop waits for it as one more event, so that a
    /// stop and the deadline are served meanwhile.
    reloading: Option<Pin<Box<dyn Future<Output = ReloadPlan> + Send>>>,
    /// What a reload being set up refused: applied with its plan.
    refused: Vec<(String, anyhow::Error)>,
    /// A SIGHUP that came while another reload was being set up: the latest, applied next.
    queued_reload: Option<Box<SinkReload>>,
}

impl Daemon {
    /// Opens the store (waiting out a full or failing disk, until `stop`: then `None`),
    /// recovers and replays the engine, then starts the sinks, the pipeline, the sources and
    /// the observers, in that order, and says READY to systemd.
    async fn start(
        config: Config,
        mut stop: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<Daemon>, RunError> {
        tracing::info!(device_id = %config.device_id, data_dir = %config.data_dir.display(), "Starting eddy.");
        // Recover the engine and replay what the log holds past its last commit, before any
        // source is up: the ingest keys and clock continue after what is stored.
        // One cursor slot per sink, plus spares for sinks a reload adds: 0 until the sink task
        // publishes its durable cursor (nothing is trimmed before, also not by the replay).
        let (cursors, raw_cursors) = sink_set::cursor_slots(&config.sinks);
        let aggregate_stats = Arc::new(AggregateStats::default());
        let registry = Arc::new(SensorRegistry::new(config.max_sensors));
        let args = OpenArgs {
            config: config.clone(),
            meters: None,
            cursors: cursors.clone(),
            raw_cursors: raw_cursors.clone(),
            aggregate_stats: aggregate_stats.clone(),
            sensor_registry: registry.clone(),
        };
        let mut backoff = Backoff::new(STORE_MIN_BACKOFF, STORE_MAX_BACKOFF);
        let opened = loop {
            let error = match open_store(args.clone()).await {
                Ok(opened) => break opened,
                // A damaged or locked store, or a bug: the operator must act (exit 3, or 1).
                Err(error) if !error.is_waitable() => {
                    return Err(match error {
                        OpenError::Store(error) => RunError::StoreOpen(error),
                        OpenError::Engine(error) => RunError::Runtime(error),
                    })
                }
                Err(error) => error,
            };
            // A full or failing disk: wait in this process rather than exit into systemd's
            // restart loop. The start timeout is extended while eddy says why it waits.
            let delay = backoff.next_delay();
            tracing::warn!(error = %format!("{error:#}"), retry_in = ?delay, "Cannot open the store: its disk is full or failing; waiting for it (no restart needed).");
            let timeout_usec = (delay + Duration::from_secs(30)).as_micros();
            let status_error = error.to_string().replace(['\n', '\r'], " ");
            systemd::notify(&format!(
                "STATUS=Waiting for the store's disk: {status_error}\nEXTEND_TIMEOUT_USEC={timeout_usec}"
            ));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.as_mut() => {
                    tracing::info!("Stopped while waiting for the store's disk.");
                    return Ok(None);
                }
            }
        };
        let Opened { store, aggregator, committed: committed_rx, next_key, marks } = opened;
        let meters = store.meters();
        // What each source had made durable, so it recognises a resend of it (exactly-once
        // ingest for numbered TCP sessions and MQTT redeliveries).
        let mut durable_marks = marks::durable_by_source(marks, &aggregator.uncommitted_marks());

        let mut components = Components::default();
        // Sinks first, so that results replayed above are delivered.
        let (give_up, give_up_rx) = watch::channel(false);
        let mut sinks = SinkSet::new(
            store.clone(),
            cursors.clone(),
            raw_cursors.clone(),
            committed_rx.clone(),
            give_up_rx,
        );
        components.spawn_sinks(sinks.start_configured(&config.sinks)?);
        if config.sinks.is_empty() {
            tracing::warn!("No sink is configured: results are computed and discarded.");
        }

        // The wall clock's trust (for the future-timestamp check) and the processing clock,
        // anchored on what the store holds (pipeline/clock.rs).
        let gateway_clock = GatewayClock::new(config.clock.trust, config.clock.synchronized_file.clone());
        let clock_stats = Arc::new(ClockStats::default());
        let clock_watch = ClockWatch::new(gateway_clock.clone(), clock_stats.clone());
        let (processing_clock, anchor) = ProcessingClock::anchored(
            aggregator.clock_ms(),
            eddy_common::wall_clock_ms(),
            gateway_clock.is_trusted(),
        );
        match anchor {
            Anchor::NewStore => tracing::info!(
                trusted = gateway_clock.is_trusted(),
                "Processing time starts at the wall clock (a new store)."
            ),
            Anchor::TrustedWall { downtime_ms } => {
                tracing::info!(downtime_ms, "Processing time continues at the synchronised wall clock.")
            }
            Anchor::Stored => tracing::info!(
                stored_ms = aggregator.clock_ms(),
                trusted = gateway_clock.is_trusted(),
                "Processing time continues from the store (the wall clock is not synchronised, or behind it)."
            ),
        }

        let (engine_tx, engine_rx) = mpsc::channel(ENGINE_CHANNEL_CHUNKS);
        let ingest_stats = Arc::new(IngestStats::default());
        let source_stats: Vec<Arc<SourceStats>> =
            config.sources.iter().map(|source| Arc::new(SourceStats::new(source.name.clone()))).collect();
        let ingest = Ingest {
            stats: ingest_stats.clone(),
            store: Some(store.clone()),
            meters: meters.clone(),
            released: None,
            flush_interval: config.flush_interval,
            batch_interval_ms: u64::try_from(config.engine.batch_interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            next_key,
            clock: processing_clock,
            clock_watch: Some(clock_watch),
            sources: source_stats.clone(),
            refused_sessions: marks::RefusedSessions::default(),
            refusal_log: Default::default(),
        };
        let (ingest_control, control) = mpsc::channel(4);
        let (notices, ingest_notices) = mpsc::channel(4);
        let (ingest_tx, ingest_rx) = ingest_channel(INGEST_CHANNEL_BATCHES);
        components.spawn_aggregator(aggregator, engine_rx);
        let link = StoreLink { control, notices };
        components.spawn(
            "ingest".into(),
            Box::pin(
                async move { ingest.run(ingest_rx, engine_tx, link).await.map_err(anyhow::Error::from) },
            ),
        );

        // Sources last: once they are up, readings flow.
        let sources_stop = CancellationToken::new();
        for (source_idx, (source_config, stats)) in config.sources.iter().zip(&source_stats).enumerate() {
            let started = sources::start(
                source_idx,
                source_config,
                &config,
                SensorRegistry::for_source(&registry, source_config.max_sensors),
                stats.clone(),
                ingest_tx.clone(),
                sources_stop.clone(),
                durable_marks.remove(&source_config.name).unwrap_or_default(),
                &gateway_clock,
            )
            .await
            .with_context(|| format!("cannot start source `{}`", source_config.name))?;
            components.spawn(format!("source {}", source_config.name), started);
        }
        #[cfg(feature = "test-switches")]
        if let Some(panicking) = test_switches::panicking_task(sources_stop.clone()) {
            components.spawn("test panic".into(), panicking);
        }
        // Only sources hold senders now: when they all stop, the ingest task sees the end.
        drop(ingest_tx);

        // What operators see: the HTTP endpoint, systemd's readiness and watchdog. Outside the
        // component set: they only read counters, and the endpoint stays up during the drain
        // and while a failed store is opened again.
        let store_health = Arc::new(StoreHealth::default());
        let telemetry = Arc::new(telemetry::Telemetry::new(
            config.device_id.clone(),
            source_stats.clone(),
            aggregate_stats.clone(),
            ingest_stats,
            sinks.stats_watch(),
            meters.clone(),
            config.data_dir.clone(),
            store_health.clone(),
            committed_rx.clone(),
            gateway_clock.clone(),
            clock_stats.clone(),
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
        let waiting_beats = Arc::new(AtomicU64::new(0));
        if let Some(interval) = systemd::watchdog_interval() {
            let (pipeline, waiting) = (aggregate_stats.clone(), waiting_beats.clone());
            let progress = move || {
                pipeline.inputs_total.load(Ordering::Relaxed).wrapping_add(waiting.load(Ordering::Relaxed))
            };
            let watchdog = systemd::watchdog(interval, progress, || {
                systemd::notify("WATCHDOG=1");
            });
            let stop = observers_stop.clone();
            tokio::spawn(async move { stop.run_until_cancelled(watchdog).await });
        }
        tracing::info!(sources = config.sources.len(), sinks = config.sinks.len(), "eddy is ready.");
        systemd::notify("READY=1\nSTATUS=Taking readings.");

        Ok(Some(Daemon {
            config,
            store: Some(store),
            meters,
            components,
            sinks,
            commits: committed_rx,
            commits_open: true,
            telemetry,
            sources_stop,
            give_up,
            _stop_observers: observers_stop.drop_guard(),
            stopping: false,
            failed: None,
            ingest_control,
            ingest_notices,
            cursors,
            raw_cursors,
            aggregate_stats,
            sensor_registry: registry,
            store_health,
            fault: None,
            waiting_beats,
            reloading: None,
            refused: Vec::new(),
            queued_reload: None,
        }))
    }

    /// The main loop: waits for the next [`Event`] and handles it, until every component has
    /// ended (then a final flush and report) or the stop deadline passes.
    async fn serve(
        mut self,
        mut stop: Pin<&mut impl Future<Output = ()>>,
        mut reloads: mpsc::Receiver<SinkReload>,
    ) -> Result<(), RunError> {
        let mut stop_requested = false;
        let mut reloads_open = true;
        let mut notices_open = true;
        let mut report = tokio::time::interval(STATUS_EVERY);
        report.reset();
        let mut store_wait = tokio::time::interval(STORE_WAIT_TICK);
        store_wait.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(deadline);
        loop {
            let (store_failed, reopening_now) = (self.fault.is_some(), reopening_pending(&self.fault));
            let reopening = self.fault.as_mut().and_then(|fault| fault.attempt.as_mut());
            let reloading_now = self.reloading.is_some();
            let reloading = self.reloading.as_mut();
            let event = tokio::select! {
                () = stop.as_mut(), if !stop_requested => { stop_requested = true; Event::Stop }
                exited = self.components.next_exited() => match exited {
                    Some((name, result)) => Event::Exited { name, result },
                    None => break,
                },
                _ = report.tick() => Event::Report,
                () = &mut deadline, if self.stopping => Event::Deadline,
                reload = reloads.recv(), if reloads_open => match reload {
                    Some(sinks) => Event::Reload(Box::new(sinks)),
                    None => { reloads_open = false; continue; }
                },
                changed = self.commits.changed(), if self.commits_open && self.sinks.is_empty() => match changed {
                    Ok(()) => Event::Committed,
                    Err(_) => { self.commits_open = false; continue; }
                },
                notice = self.ingest_notices.recv(), if notices_open => match notice {
                    Some(notice) => Event::Ingest(notice),
                    None => { notices_open = false; continue; }
                },
                _ = store_wait.tick(), if store_failed => Event::StoreWait,
                plan = async { reloading.expect("guarded by the condition").await }, if reloading_now => {
                    Event::ReloadPlanned(plan)
                }
                opened = async { reopening.expect("guarded by the condition").await }, if reopening_now => {
                    Event::Reopened(Box::new(opened.unwrap_or_else(|_| Err(anyhow::anyhow!("the store opening task ended without an answer")))))
                }
            };
            match self.handle(event).await {
                Flow::Continue => {}
                Flow::BeginStop if self.stopping => {}
                Flow::BeginStop => {
                    self.begin_stop();
                    report = tokio::time::interval(STOPPING_REPORT_EVERY);
                    report.reset();
                    deadline.as_mut().reset(Instant::now() + self.config.shutdown_timeout);
                }
                Flow::Exit(error) => return Err(error),
            }
        }
        match &self.store {
            Some(store) => store.flush().await.context("final flush")?,
            None => tracing::warn!(
                "Stopped while the store was failed: nothing more could be written; what was \
                 acknowledged is in it."
            ),
        }
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
            Event::Reload(_) if self.fault.is_some() => {
                tracing::warn!("SIGHUP while the store is failed: the sinks are not reloaded; send SIGHUP again once it is open.");
                Flow::Continue
            }
            Event::Reload(sinks) if self.reloading.is_some() => {
                tracing::info!("SIGHUP while the last one is being applied: this one follows.");
                self.queued_reload = Some(sinks);
                Flow::Continue
            }
            Event::Reload(sinks) => {
                self.plan_reload(*sinks);
                Flow::Continue
            }
            Event::ReloadPlanned(_) if self.stopping || self.fault.is_some() => {
                self.reloading = None;
                self.refused.clear();
                self.queued_reload = None;
                tracing::warn!("The sinks of the SIGHUP were set up, but eddy is stopping or its store failed: not applied.");
                Flow::Continue
            }
            Event::ReloadPlanned(plan) => {
                self.reloading = None;
                let (mut applied, started) = self.sinks.apply_reload(plan);
                self.components.spawn_sinks(started);
                applied.failed.append(&mut self.refused);
                log_reload(applied);
                if let Some(next) = self.queued_reload.take() {
                    self.plan_reload(*next);
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
                let retried = self.sinks.resume_pending().await;
                self.components.spawn_sinks(retried);
                Flow::Continue
            }
            Event::Deadline => {
                tracing::error!(still_running = ?self.components.running, "Stop deadline passed; exiting with work unfinished (it stays in the store).");
                let _ = self.give_up.send(true);
                self.components.tasks.abort_all();
                if let Some(store) = &self.store {
                    let _ = store.flush().await;
                }
                Flow::Exit(RunError::Runtime(anyhow::anyhow!(
                    "stop deadline of {:?} passed",
                    self.config.shutdown_timeout
                )))
            }
            Event::Ingest(IngestNotice::StoreFailed { error }) => {
                self.store_failed("ingest", &error);
                if let Some(fault) = &mut self.fault {
                    fault.ingest_released = true;
                }
                Flow::Continue
            }
            Event::Ingest(IngestNotice::Released) => {
                if let Some(fault) = &mut self.fault {
                    fault.ingest_released = true;
                }
                Flow::Continue
            }
            Event::StoreWait => {
                self.waiting_beats.fetch_add(1, Ordering::Relaxed);
                self.try_reopen();
                Flow::Continue
            }
            Event::Reopened(opened) => {
                self.reopened(*opened).await;
                Flow::Continue
            }
        }
    }

    /// Starts setting up the sinks of a reload (its end is [`Event::ReloadPlanned`]). A sink
    /// whose new settings are invalid keeps its running ones.
    fn plan_reload(&mut self, reload: SinkReload) {
        if let Some(key) = sinks_need_restart(&self.config, &reload) {
            tracing::warn!(
                changed = key,
                "SIGHUP: sinks not reloaded: they are validated against this setting, which takes a restart."
            );
            return;
        }
        let mut sinks = Vec::new();
        for sink in reload.sinks {
            match sink {
                Ok(sink) => sinks.push(sink),
                Err((name, error)) => {
                    sinks.extend(self.sinks.running_settings(&name));
                    self.refused.push((name, anyhow::Error::from(error)));
                }
            }
        }
        self.reloading = Some(Box::pin(self.sinks.plan_reload(sinks)));
    }

    /// A component ended: fine while stopping (or a sink a reload retired, or the aggregator
    /// and sinks while the store is failed), else the daemon stops, with an error if the
    /// component failed. A failure of the store is no reason to stop: see the module docs.
    fn exited(&mut self, name: String, result: anyhow::Result<()>) -> Flow {
        self.components.running.remove(&name);
        let mut flow = Flow::Continue;
        let holds_store = name == "aggregator" || name.starts_with("sink ");
        match result {
            Ok(()) if self.stopping || name.starts_with("sink ") => {
                tracing::debug!(component = %name, "Component stopped.")
            }
            Ok(()) if self.fault.is_some() && holds_store => {
                tracing::info!(component = %name, "Component stopped while the store is failed; it starts again once the store is open.")
            }
            Ok(()) => {
                tracing::warn!(component = %name, "Component stopped on its own; stopping eddy.");
                flow = Flow::BeginStop;
            }
            Err(error) if !self.stopping && holds_store && store_failure(&error).is_some() => {
                self.store_failed(&name, &format!("{error:#}"));
            }
            // A stop that came while this holder was still letting go of the failed store: its
            // last write failed as every write there does. What was acknowledged is in the log.
            Err(error) if self.fault.is_some() && holds_store && store_failure(&error).is_some() => {
                tracing::warn!(component = %name, error = %format!("{error:#}"), "Component stopped on the failed store; its last commit is replayed from the log at the next start.")
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

    /// The store failed (seen by `component`): every handle is let go of, readings are refused,
    /// and the main loop opens the store again once it can (see the module docs).
    fn store_failed(&mut self, component: &str, error: &str) {
        if self.fault.is_some() {
            tracing::debug!(component, error, "The store failed here too; it is being opened again already.");
            return;
        }
        if self.stopping {
            tracing::error!(
                component,
                error,
                "The store failed while stopping; what was acknowledged is in it."
            );
            return;
        }
        tracing::error!(
            component,
            error,
            "The store failed: new readings are refused (nack) until eddy has opened it again, \
             which it does by itself once the disk has room; nothing acknowledged is lost."
        );
        let reason = format!("store failed ({error}); eddy opens it again by itself");
        self.store = None;
        self.fault = Some(StoreFault::new(error));
        self.store_health.failed(error.to_owned());
        // The ingest task answers with `Released` (or has let go already, `StoreFailed`).
        if self.ingest_control.try_send(StoreControl::Release { reason }).is_err() {
            tracing::debug!("The ingest task has stopped or is busy; it lets go of the store on its own.");
        }
        self.sinks.suspend();
        // One line: the protocol separates its fields by line.
        let status_error = error.replace(['\n', '\r'], " ");
        systemd::notify(&format!(
            "STATUS=Store failed ({status_error}); refusing readings until it is open again."
        ));
    }

    /// While the store is failed: opens it again once nothing holds it and its file system has
    /// room, as a task whose end is [`Event::Reopened`].
    fn try_reopen(&mut self) {
        let holding: Vec<String> = self.components.holding_the_store().into_iter().cloned().collect();
        let short_of_space = self.meters.short_of_space();
        let Some(fault) = &mut self.fault else { return };
        if self.stopping || fault.attempt.is_some() || Instant::now() < fault.next_attempt {
            return;
        }
        if !fault.ingest_released || !holding.is_empty() {
            if fault.log_due("holders") {
                tracing::info!(still_holding = ?holding, ingest_released = fault.ingest_released, "Waiting for every component to let go of the failed store.");
            }
            return;
        }
        if let Some(short) = short_of_space {
            if fault.log_due("space") {
                tracing::warn!(reason = %short, down_secs = fault.since.elapsed().as_secs(), "Waiting for free space before opening the store again.");
            }
            return;
        }
        tracing::info!(down_secs = fault.since.elapsed().as_secs(), "Opening the store again.");
        let args = OpenArgs {
            config: self.config.clone(),
            meters: Some(self.meters.clone()),
            cursors: self.cursors.clone(),
            raw_cursors: self.raw_cursors.clone(),
            aggregate_stats: self.aggregate_stats.clone(),
            sensor_registry: self.sensor_registry.clone(),
        };
        let (answer, attempt) = oneshot::channel();
        fault.attempt = Some(attempt);
        tokio::spawn(async move {
            let _ = answer.send(open_store(args).await.map_err(anyhow::Error::from));
        });
    }

    /// An opening of the failed store ended: on success the engine, the ingest task and the
    /// sinks resume on it; else the next try waits longer.
    async fn reopened(&mut self, opened: anyhow::Result<Opened>) {
        let Some(fault) = &mut self.fault else { return };
        fault.attempt = None;
        let opened = match opened {
            Ok(opened) if !self.stopping => opened,
            Ok(_) => return, // stopping: the opened store is dropped unused
            Err(error) => {
                let delay = fault.backoff.next_delay();
                fault.next_attempt = Instant::now() + delay;
                tracing::warn!(error = %format!("{error:#}"), retry_in = ?delay, "Cannot open the store again yet; retrying.");
                self.store_health.set_reason(format!("{}; opening it again failed: {error:#}", fault.error));
                return;
            }
        };
        let down_secs = fault.since.elapsed().as_secs();
        let Opened { store, aggregator, committed, next_key, marks: _ } = opened;
        let (engine_tx, engine_rx) = mpsc::channel(ENGINE_CHANNEL_CHUNKS);
        self.components.spawn_aggregator(aggregator, engine_rx);
        let reopened = StoreControl::Reopened { store: store.clone(), engine: engine_tx, next_key };
        if self.ingest_control.send(reopened).await.is_err() {
            tracing::warn!("The ingest task has stopped; readings are not taken again.");
        }
        let started = self.sinks.resume(store.clone(), committed.clone()).await;
        self.components.spawn_sinks(started);
        self.telemetry.set_committed(committed.clone());
        self.commits = committed;
        self.commits_open = true;
        self.store = Some(store);
        self.fault = None;
        self.store_health.reopened();
        tracing::info!(down_secs, "Store open again: readings are taken and results delivered again.");
        systemd::notify("STATUS=Taking readings.");
    }

    /// Starts the drain: only sources are cancelled; everything downstream drains as its
    /// input closes.
    fn begin_stop(&mut self) {
        self.stopping = true;
        if self.reloading.take().is_some() || self.queued_reload.take().is_some() {
            self.refused.clear();
            tracing::warn!("Stopping while a SIGHUP's sinks were being set up: not applied.");
        }
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
fn sinks_need_restart(running: &Config, new: &SinkReload) -> Option<&'static str> {
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
