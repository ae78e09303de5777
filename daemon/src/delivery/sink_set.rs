//! The running sinks: one delivery task per sink, each with a cursor slot the aggregator trims
//! the outbox by; a reload (SIGHUP) adds, restarts and removes sinks drain-first.
//!
//! What a reload guarantees, per sink (compared by name, every setting and secret included,
//! and the contents of its TLS files, so that a certificate renewed in place counts):
//! - unchanged: its task keeps running untouched;
//! - changed: the new settings are built first (a failure is logged and the old sink keeps
//!   running); then the old task is retired (no new delivery, the one in flight gets the
//!   shutdown grace, its cursor is flushed) and, once it has ended, the new one starts from
//!   that durable cursor: nothing is skipped, and what was confirmed is not sent again;
//! - added: it starts from its stored cursor, which a name never seen has not: it gets what
//!   is still in the outbox (what some other sink has not yet delivered) and everything
//!   after, as at a restart;
//! - removed: it is retired the same way, then its slot stops holding back the outbox trim.
//!   Its stored cursor is kept, as a restart keeps it: a sink of that name added later
//!   resumes after it with what the outbox still holds.
//!
//! When the store fails (see `run/store.rs`), every sink is *suspended*: retired the same way, its
//! slot kept at its durable cursor (so the outbox is not trimmed past it), no task started; once
//! the store is open again, [`SinkSet::resume`] sets every sink up afresh and starts it from its
//! stored cursor, as at a restart. A sink that cannot be set up again then is logged and
//! retried ([`SinkSet::resume_pending`]).
//!
//! The aggregator reads a fixed vector of cursor slots, so the vector has spare slots for
//! sinks a reload adds (`SPARE_SLOTS`). A free slot reads `u64::MAX` (it never holds back the
//! trim) while any sink runs; with no sink at all, free slots follow the committed seq (the
//! main loop calls [`SinkSet::follow_committed`]), so results are discarded as before, and a
//! sink added later still has its outbox trimmed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use eddy_sinks::{ConsoleSink, FileSink, HttpSink, KafkaSink, MqttSink, Sink};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{SinkConfig, SinkKind};
use crate::delivery::sink_task::Delivering;
use crate::stats::Committed;
use crate::stats::DeliveryStats;
use crate::storage::{Store, StoreMeters};

/// Test switches read from the environment, compiled only with the `test-switches` feature
/// (tests/e2e/tidy.rs checks these names stay inside this module).
#[cfg(feature = "test-switches")]
mod test_switches {
    /// With `1`, setting up the sinks of a reload takes a minute longer, as if a file or TLS
    /// read hung (tests/e2e/reload.rs: a stop meanwhile keeps its deadline).
    const SLOW_SET_UP_VARIABLE: &str = "EDDY_TEST_SLOW_SINK_SET_UP";

    /// Blocks the calling (blocking-pool) thread for a minute when the switch is on.
    pub(super) fn slow_set_up() {
        if std::env::var_os(SLOW_SET_UP_VARIABLE).is_some_and(|value| value == "1") {
            tracing::warn!("{SLOW_SET_UP_VARIABLE}=1: the sinks of this reload take a minute to set up.");
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
}

/// Cursor slots beyond the configured sinks, for sinks added by a reload. Each holds two
/// atomics; past them an added sink is refused (logged) until a restart.
pub(crate) const SPARE_SLOTS: usize = 16;

/// Every sink's counters by name, in configuration order: what the status log, `/status` and
/// `/metrics` show.
pub(crate) type SinkStatsList = Vec<(String, Arc<DeliveryStats>)>;

/// A component future, as `run` spawns it.
pub(crate) type ComponentFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A sink's delivery task, to be spawned and tracked by the caller.
pub(crate) struct SinkTask {
    /// Component name, `sink NAME`.
    pub(crate) component: String,
    pub(crate) future: ComponentFuture,
}

/// How a new sink list differs from the running one, by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SinkDiff {
    /// New names, in the new list's order.
    pub(crate) added: Vec<String>,
    /// Same name, other settings, in the new list's order.
    pub(crate) changed: Vec<String>,
    /// Names no longer listed, in the old order.
    pub(crate) removed: Vec<String>,
}

/// Compares the running sinks with a new list (pure).
pub(crate) fn diff<'a>(old: impl IntoIterator<Item = &'a SinkConfig>, new: &[SinkConfig]) -> SinkDiff {
    let old: Vec<&SinkConfig> = old.into_iter().collect();
    let by_name: HashMap<&str, &SinkConfig> = old.iter().map(|sink| (sink.name.as_str(), *sink)).collect();
    let new_names: BTreeSet<&str> = new.iter().map(|sink| sink.name.as_str()).collect();
    let mut sink_diff = SinkDiff::default();
    for sink in new {
        match by_name.get(sink.name.as_str()) {
            None => sink_diff.added.push(sink.name.clone()),
            Some(running) if *running != sink => sink_diff.changed.push(sink.name.clone()),
            Some(_) => {}
        }
    }
    sink_diff.removed = old
        .iter()
        .filter(|sink| !new_names.contains(sink.name.as_str()))
        .map(|sink| sink.name.clone())
        .collect();
    sink_diff
}

/// What a reload applied, for its log line.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) added: Vec<String>,
    pub(crate) changed: Vec<String>,
    pub(crate) removed: Vec<String>,
    /// Sinks whose new settings could not be set up, with why: an added one is not started, a
    /// changed one keeps running with its old settings.
    pub(crate) failed: Vec<(String, anyhow::Error)>,
}

/// A sink reload set up and ready to apply ([`SinkSet::plan_reload`]).
pub(crate) struct ReloadPlan {
    /// The new list.
    new: Vec<SinkConfig>,
    sink_diff: SinkDiff,
    /// The added and changed sinks, set up (or why not).
    built: Vec<(String, anyhow::Result<Prepared>)>,
    failed: Vec<(String, anyhow::Error)>,
}

/// What becomes of a sink when its task ends.
enum Next {
    /// Nothing: it ended with the daemon (or failed, which stops the daemon).
    Keep,
    /// A reload changed it: start these settings, built and checked already.
    Restart(Box<Prepared>),
    /// A reload removed it: free its slot.
    Remove,
}

/// Whether a task is a retired one's successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    Fresh,
    /// Its sink was set up while the old task still ran: it is closed before it starts, so
    /// that a file sink on the same path reopens the file and checks its tail afresh (the old
    /// task may have been writing when it was opened).
    Successor,
}

/// A sink set up from its settings, ready to start.
struct Prepared {
    config: SinkConfig,
    sink: Sink,
    /// What its TLS files held when it was set up ([`tls_digest`]).
    tls_digest: u64,
}

struct Entry {
    slot: usize,
    stats: Arc<DeliveryStats>,
    /// The settings of the task running now.
    config: SinkConfig,
    /// [`tls_digest`] of the files the running task's sink read.
    tls_digest: u64,
    /// Retires the running task.
    retire: CancellationToken,
    next: Next,
}

impl Entry {
    /// The settings this sink will run with once pending changes are applied (None: removed).
    fn desired(&self) -> Option<&SinkConfig> {
        match &self.next {
            Next::Keep => Some(&self.config),
            Next::Restart(next) => Some(&next.config),
            Next::Remove => None,
        }
    }

    /// The TLS digest that goes with [`Entry::desired`].
    fn desired_tls_digest(&self) -> u64 {
        match &self.next {
            Next::Restart(next) => next.tls_digest,
            Next::Keep | Next::Remove => self.tls_digest,
        }
    }
}

/// The running sinks, their cursor slots and counters. Owned by `run`'s main loop, which
/// spawns the tasks this hands out and reports their ends back.
pub(crate) struct SinkSet {
    /// `None` while suspended: the store failed and is being opened again.
    store: Option<Store>,
    /// Per-sink drop counters are registered here; they outlive a failed store.
    meters: StoreMeters,
    /// Sinks whose settings could not be set up when resuming; retried.
    pending: BTreeSet<String>,
    cursors: Arc<Vec<AtomicU64>>,
    raw_cursors: Arc<Vec<AtomicU64>>,
    committed: watch::Receiver<Committed>,
    give_up: watch::Receiver<bool>,
    entries: BTreeMap<String, Entry>,
    /// Names in configuration order (the order of the status list).
    order: Vec<String>,
    free: BTreeSet<usize>,
    /// Counters of removed sinks, reused if the name comes back: counters never go backwards
    /// and the store's per-sink drop counters stay registered once per name.
    retired: HashMap<String, Arc<DeliveryStats>>,
    stats: watch::Sender<SinkStatsList>,
}

/// The cursor slots for `sinks` plus the spares: results-lane cursors and raw-lane cursors.
/// Configured sinks start at 0 (nothing is trimmed before a sink publishes its durable cursor);
/// a sink that takes no raw readings, and a spare, never holds the raw lane back.
pub(crate) fn cursor_slots(sinks: &[SinkConfig]) -> (Arc<Vec<AtomicU64>>, Arc<Vec<AtomicU64>>) {
    // With no sink configured, spares start at 0 and follow the committed seq once running.
    let spare = if sinks.is_empty() { 0 } else { u64::MAX };
    let cursors = sinks.iter().map(|_| 0).chain(std::iter::repeat_n(spare, SPARE_SLOTS));
    let raw = sinks
        .iter()
        .map(|sink| if sink.records.contains("raw") { 0 } else { u64::MAX })
        .chain(std::iter::repeat_n(u64::MAX, SPARE_SLOTS));
    (Arc::new(cursors.map(AtomicU64::new).collect()), Arc::new(raw.map(AtomicU64::new).collect()))
}

/// Sets up the sink `config` describes. Blocking (files are opened, TLS files read).
/// How many records the sink reads at once, for the downsampler's in-flight zone.
fn batch_max_records(config: &SinkConfig) -> u64 {
    u64::try_from(config.delivery.batch_max_records).unwrap_or(u64::MAX)
}

fn build(config: &SinkConfig) -> anyhow::Result<Sink> {
    Ok(match &config.kind {
        SinkKind::Console => Sink::Console(ConsoleSink::stdout(&config.name)),
        SinkKind::File(file) => Sink::File(
            FileSink::open(&config.name, file)
                .with_context(|| format!("cannot open sink `{}`", config.name))?,
        ),
        SinkKind::Mqtt(mqtt) => Sink::Mqtt(Box::new(
            MqttSink::new((**mqtt).clone())
                .with_context(|| format!("cannot set up sink `{}`", config.name))?,
        )),
        SinkKind::Http(http) => Sink::Http(Box::new(
            HttpSink::new((**http).clone())
                .with_context(|| format!("cannot set up sink `{}`", config.name))?,
        )),
        SinkKind::Kafka(kafka) => Sink::Kafka(Box::new(
            KafkaSink::new((**kafka).clone())
                .with_context(|| format!("cannot set up sink `{}`", config.name))?,
        )),
    })
}

/// A digest of the contents of a sink's TLS files (0: it has none). A sink reads them when
/// it is set up, so a certificate or key replaced under the same path (a renewal) makes it a
/// changed sink at the next reload. Blocking.
fn tls_digest(config: &SinkConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let tls = match &config.kind {
        SinkKind::Mqtt(mqtt) => &mqtt.tls,
        SinkKind::Http(http) => &http.tls,
        SinkKind::Kafka(kafka) => match &kafka.tls {
            Some(tls) => tls,
            None => return 0,
        },
        SinkKind::Console | SinkKind::File(_) => return 0,
    };
    let files = [&tls.ca_file, &tls.cert_file, &tls.key_file];
    if files.iter().all(|file| file.is_none()) {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        file.as_ref().map(|path| std::fs::read(path).ok()).hash(&mut hasher);
    }
    hasher.finish().max(1)
}

/// Sets up `config`'s sink and notes its TLS files. Blocking.
fn prepare(config: SinkConfig) -> (String, anyhow::Result<Prepared>) {
    let name = config.name.clone();
    let tls_digest = tls_digest(&config);
    let prepared = build(&config).map(|sink| Prepared { config, sink, tls_digest });
    (name, prepared)
}

impl SinkSet {
    /// An empty set over the slots of [`cursor_slots`]; `committed` and `give_up` are handed to
    /// every delivery task.
    pub(crate) fn new(
        store: Store,
        cursors: Arc<Vec<AtomicU64>>,
        raw_cursors: Arc<Vec<AtomicU64>>,
        committed: watch::Receiver<Committed>,
        give_up: watch::Receiver<bool>,
    ) -> SinkSet {
        let (stats, _) = watch::channel(Vec::new());
        let free = (0..cursors.len()).collect();
        SinkSet {
            meters: store.meters(),
            store: Some(store),
            pending: BTreeSet::new(),
            cursors,
            raw_cursors,
            committed,
            give_up,
            entries: BTreeMap::new(),
            order: Vec::new(),
            free,
            retired: HashMap::new(),
            stats,
        }
    }

    /// Starts the configured sinks, in the slots [`cursor_slots`] gave them. A sink that cannot
    /// be set up fails the start.
    pub(crate) fn start_configured(&mut self, sinks: &[SinkConfig]) -> anyhow::Result<Vec<SinkTask>> {
        let mut tasks = Vec::new();
        for (slot, config) in sinks.iter().enumerate() {
            let prepared = prepare(config.clone()).1?;
            self.free.remove(&slot);
            let stats = self.stats_for(config);
            tasks.push(self.launch(slot, stats, prepared, Started::Fresh));
        }
        self.order = sinks.iter().map(|sink| sink.name.clone()).collect();
        self.publish_stats();
        Ok(tasks)
    }

    /// True when no sink runs or is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The store failed: every sink's task is retired (drain-first, as by a reload) and none is
    /// started again until [`SinkSet::resume`]. The set lets go of its handle of the store.
    pub(crate) fn suspend(&mut self) {
        self.store = None;
        for entry in self.entries.values() {
            entry.retire.cancel();
        }
    }

    /// The store is open again (`committed` is its recovered engine's): every sink is set up
    /// afresh and started from its stored cursor. Sinks that cannot be set up are logged and
    /// left to [`SinkSet::resume_pending`]. Call once every suspended task has ended.
    pub(crate) async fn resume(
        &mut self,
        store: Store,
        committed: watch::Receiver<Committed>,
    ) -> Vec<SinkTask> {
        self.store = Some(store);
        self.committed = committed;
        self.pending.extend(self.entries.keys().cloned());
        self.resume_pending().await
    }

    /// Starts the sinks that could not be set up at the last [`SinkSet::resume`] (none while
    /// suspended).
    pub(crate) async fn resume_pending(&mut self) -> Vec<SinkTask> {
        if self.store.is_none() || self.pending.is_empty() {
            return Vec::new();
        }
        let mut ready = Vec::new();
        let mut to_build = Vec::new();
        for name in std::mem::take(&mut self.pending) {
            let Some(entry) = self.entries.get_mut(&name) else { continue };
            match std::mem::replace(&mut entry.next, Next::Keep) {
                // A reload changed it before the store failed: its new settings are built.
                Next::Restart(prepared) => ready.push(*prepared),
                Next::Keep => to_build.push(entry.config.clone()),
                Next::Remove => self.remove(&name),
            }
        }
        // Opening files and reading TLS files blocks: off the async workers.
        let built =
            tokio::task::spawn_blocking(move || to_build.into_iter().map(prepare).collect::<Vec<_>>())
                .await
                .unwrap_or_default();
        for (name, prepared) in built {
            match prepared {
                Ok(prepared) => ready.push(prepared),
                Err(error) => {
                    tracing::error!(sink = %name, error = %format!("{error:#}"), "Cannot set this sink up again after the store reopened; retrying.");
                    self.pending.insert(name);
                }
            }
        }
        // The suspended tasks have ended and closed their sinks: these start fresh.
        let tasks =
            ready.into_iter().filter_map(|prepared| self.relaunch(prepared, Started::Fresh)).collect();
        self.publish_stats();
        tasks
    }

    /// The counters as they change, for `/status`, `/metrics` and the counters log lines.
    pub(crate) fn stats_watch(&self) -> watch::Receiver<SinkStatsList> {
        self.stats.subscribe()
    }

    /// With no sink running, free slots follow the committed seq so that results are trimmed
    /// (discarded) as they are committed.
    pub(crate) fn follow_committed(&self) {
        if self.entries.is_empty() {
            let results = self.committed.borrow().results;
            for slot in &self.free {
                self.cursors[*slot].store(results, Ordering::Release);
            }
        }
    }

    /// The settings the sink `name` runs with, or will once a pending restart is done (None:
    /// no such sink, or it is being removed). A reload keeps them for a sink whose new
    /// settings are invalid.
    pub(crate) fn running_settings(&self, name: &str) -> Option<SinkConfig> {
        self.entries.get(name).and_then(Entry::desired).cloned()
    }

    /// The first half of applying a new sink list (see the module docs): what differs, and the
    /// added and changed sinks set up, in a future that borrows nothing, so that the main loop
    /// keeps serving stop and the deadline while it runs (setting a sink up blocks: files are
    /// opened, TLS files read). [`SinkSet::apply_reload`] applies the plan.
    pub(crate) fn plan_reload(
        &self,
        new: Vec<SinkConfig>,
    ) -> impl Future<Output = ReloadPlan> + Send + 'static {
        let mut sink_diff = diff(self.entries.values().filter_map(Entry::desired), &new);
        // Same settings, but a TLS file the sink read has another content now: a change too.
        let same_settings: Vec<(SinkConfig, u64)> = new
            .iter()
            .filter(|sink| !sink_diff.added.contains(&sink.name) && !sink_diff.changed.contains(&sink.name))
            .filter_map(|sink| {
                let entry = self.entries.get(&sink.name)?;
                Some((sink.clone(), entry.desired_tls_digest())).filter(|(_, digest)| *digest != 0)
            })
            .collect();
        async move {
            let to_set_up = new.clone();
            let changes = sink_diff.clone();
            // Off the async workers: reading TLS files and opening files block.
            let set_up = tokio::task::spawn_blocking(move || {
                #[cfg(feature = "test-switches")]
                test_switches::slow_set_up();
                let mut changes = changes;
                changes.changed.extend(
                    same_settings
                        .into_iter()
                        .filter(|(config, digest)| tls_digest(config) != *digest)
                        .map(|(config, _)| config.name),
                );
                let built = to_set_up
                    .into_iter()
                    .filter(|sink| changes.added.contains(&sink.name) || changes.changed.contains(&sink.name))
                    .map(prepare)
                    .collect::<Vec<_>>();
                (changes, built)
            })
            .await;
            let mut failed = Vec::new();
            let built = match set_up {
                Ok((changes, built)) => {
                    sink_diff = changes;
                    built
                }
                Err(join_error) => {
                    failed.push(("*".to_owned(), anyhow::anyhow!("sink set-up task failed: {join_error}")));
                    Vec::new()
                }
            };
            ReloadPlan { new, sink_diff, built, failed }
        }
    }

    /// Plans and applies a reload at once (the tests' shorthand; the main loop awaits the
    /// plan as an event).
    #[cfg(test)]
    pub(crate) async fn reload(&mut self, new: Vec<SinkConfig>) -> (Applied, Vec<SinkTask>) {
        let plan = self.plan_reload(new).await;
        self.apply_reload(plan)
    }

    /// Applies a [`SinkSet::plan_reload`]. Returns what was done and the tasks to spawn now
    /// (added sinks); restarts follow from [`SinkSet::exited`].
    pub(crate) fn apply_reload(&mut self, plan: ReloadPlan) -> (Applied, Vec<SinkTask>) {
        let ReloadPlan { new, sink_diff, built, failed } = plan;
        let mut applied = Applied { removed: sink_diff.removed.clone(), failed, ..Applied::default() };
        for name in &sink_diff.removed {
            if let Some(entry) = self.entries.get_mut(name) {
                entry.retire.cancel();
                entry.next = Next::Remove;
            }
        }
        let mut tasks = Vec::new();
        for (name, prepared) in built {
            let is_change = sink_diff.changed.contains(&name);
            let prepared = match prepared {
                Ok(prepared) => prepared,
                Err(error) => {
                    applied.failed.push((name, error));
                    continue;
                }
            };
            if let Some(entry) = self.entries.get_mut(&name) {
                // Changed, or added back while its removal still drains: start after the end.
                entry.retire.cancel();
                entry.next = Next::Restart(Box::new(prepared));
            } else {
                let Some(slot) = self.take_slot(&prepared.config) else {
                    applied.failed.push((
                        name,
                        anyhow::anyhow!(
                            "no free cursor slot: at most {} sinks run at once; restart eddy to add more",
                            self.cursors.len()
                        ),
                    ));
                    continue;
                };
                let stats = self.stats_for(&prepared.config);
                tasks.push(self.launch(slot, stats, prepared, Started::Fresh));
            }
            if is_change {
                applied.changed.push(name);
            } else {
                applied.added.push(name);
            }
        }
        self.order = new.iter().map(|sink| sink.name.clone()).collect();
        self.publish_stats();
        (applied, tasks)
    }

    /// The task of `component` ended. Returns its successor to spawn when a reload changed it
    /// (unless the daemon is `stopping`); frees its slot when a reload removed it.
    pub(crate) fn exited(&mut self, component: &str, stopping: bool) -> Option<SinkTask> {
        let name = component.strip_prefix("sink ")?;
        let suspended = self.store.is_none();
        let entry = self.entries.get_mut(name)?;
        match std::mem::replace(&mut entry.next, Next::Keep) {
            Next::Keep => None,
            // Suspended: it starts with the others once the store is open again.
            Next::Restart(next) if suspended => {
                entry.next = Next::Restart(next);
                None
            }
            Next::Restart(next) if !stopping => self.relaunch(*next, Started::Successor),
            Next::Restart(_) => None,
            Next::Remove => {
                self.remove(name);
                None
            }
        }
    }

    /// Starts `next` in the slot, and with the counters, of the sink of its name, whose task has
    /// ended.
    fn relaunch(&mut self, next: Prepared, started: Started) -> Option<SinkTask> {
        let entry = self.entries.remove(&next.config.name)?;
        // A sink that starts taking raw readings must hold the raw lane from now on.
        let takes_raw = next.config.records.contains("raw");
        if takes_raw && !entry.config.records.contains("raw") {
            self.raw_cursors[entry.slot].store(0, Ordering::Release);
        }
        // Raw-lane drops count for it from now on, or no longer.
        self.meters.register_sink_drops(
            &next.config.name,
            takes_raw,
            batch_max_records(&next.config),
            &entry.stats.drops,
        );
        Some(self.launch(entry.slot, entry.stats, next, started))
    }

    /// Frees the slot of a removed sink, keeping its counters in case the name comes back.
    fn remove(&mut self, name: &str) {
        if let Some(entry) = self.entries.remove(name) {
            self.free_slot(entry.slot);
            self.meters.unregister_sink(name);
            self.retired.insert(name.to_owned(), entry.stats);
        }
        self.pending.remove(name);
        self.publish_stats();
    }

    /// Spawnable delivery task for `prepared` in `slot`.
    fn launch(
        &mut self,
        slot: usize,
        stats: Arc<DeliveryStats>,
        prepared: Prepared,
        started: Started,
    ) -> SinkTask {
        let Prepared { config, sink, tls_digest } = prepared;
        // A restarted sink has not failed yet with its new settings.
        stats.offline_since_ms.store(0, Ordering::Relaxed);
        stats.refused_since_ms.store(0, Ordering::Relaxed);
        let retire = CancellationToken::new();
        let delivering = Delivering {
            sink,
            records: config.records.clone(),
            store: self.store.clone().expect("sinks are started only while the store is open"),
            cursor: self.cursors.clone(),
            raw_cursor: self.raw_cursors.clone(),
            cursor_idx: slot,
            stats: stats.clone(),
            delivery: config.delivery.clone(),
        };
        let committed = self.committed.clone();
        let give_up = self.give_up.clone();
        let task_retire = retire.clone();
        let component = format!("sink {}", config.name);
        self.entries
            .insert(config.name.clone(), Entry { slot, stats, config, tls_digest, retire, next: Next::Keep });
        SinkTask {
            component,
            future: Box::pin(async move {
                let mut delivering = delivering;
                if started == Started::Successor {
                    delivering.sink.close().await;
                }
                delivering.run(committed, give_up, task_retire).await.map_err(anyhow::Error::from)
            }),
        }
    }

    /// A free slot for a new sink, holding the trim until the sink publishes its cursor.
    fn take_slot(&mut self, config: &SinkConfig) -> Option<usize> {
        let slot = self.free.pop_first()?;
        self.cursors[slot].store(0, Ordering::Release);
        let raw = if config.records.contains("raw") { 0 } else { u64::MAX };
        self.raw_cursors[slot].store(raw, Ordering::Release);
        if self.entries.is_empty() {
            // Free slots no longer need to follow the committed seq: a sink holds the trim.
            for free in &self.free {
                self.cursors[*free].store(u64::MAX, Ordering::Release);
            }
        }
        Some(slot)
    }

    fn free_slot(&mut self, slot: usize) {
        self.cursors[slot].store(u64::MAX, Ordering::Release);
        self.raw_cursors[slot].store(u64::MAX, Ordering::Release);
        self.free.insert(slot);
        self.follow_committed();
    }

    fn stats_for(&mut self, config: &SinkConfig) -> Arc<DeliveryStats> {
        let takes_raw = config.records.contains("raw");
        match self.retired.remove(&config.name) {
            Some(stats) => {
                // Added back: its drops count for it again, from where they were.
                self.meters.register_sink_drops(
                    &config.name,
                    takes_raw,
                    batch_max_records(config),
                    &stats.drops,
                );
                stats
            }
            None => Arc::new(DeliveryStats {
                drops: self.meters.register_sink(&config.name, takes_raw, batch_max_records(config)),
                ..DeliveryStats::default()
            }),
        }
    }

    fn publish_stats(&self) {
        let list: SinkStatsList = self
            .order
            .iter()
            .filter_map(|name| {
                let entry = self.entries.get(name)?;
                entry.desired().map(|_| (name.clone(), entry.stats.clone()))
            })
            .collect();
        self.stats.send_replace(list);
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::DeliveryConfig;

    fn file(name: &str, path: &str) -> SinkConfig {
        SinkConfig {
            name: name.to_owned(),
            kind: SinkKind::File(eddy_sinks::FileConfig::new(path)),
            records: ["window".to_owned()].into(),
            delivery: DeliveryConfig::default(),
        }
    }

    fn check(old: Vec<SinkConfig>, new: Vec<SinkConfig>, added: &[&str], changed: &[&str], removed: &[&str]) {
        let expected = SinkDiff {
            added: added.iter().map(|name| (*name).to_owned()).collect(),
            changed: changed.iter().map(|name| (*name).to_owned()).collect(),
            removed: removed.iter().map(|name| (*name).to_owned()).collect(),
        };
        assert_eq!(diff(&old, &new), expected);
    }

    #[test]
    fn the_diff_names_added_changed_and_removed_sinks() {
        let a = file("a", "a.jsonl");
        let b = file("b", "b.jsonl");
        check(vec![a.clone(), b.clone()], vec![a.clone(), b.clone()], &[], &[], &[]);
        // Order alone is no change.
        check(vec![a.clone(), b.clone()], vec![b.clone(), a.clone()], &[], &[], &[]);
        check(vec![a.clone()], vec![a.clone(), b.clone()], &["b"], &[], &[]);
        check(vec![a.clone(), b.clone()], vec![b.clone()], &[], &[], &["a"]);
        check(vec![a.clone()], vec![file("a", "elsewhere.jsonl")], &[], &["a"], &[]);
        // A rename is a removal and an addition: the cursor belongs to the name.
        check(vec![a.clone()], vec![file("c", "a.jsonl")], &["c"], &[], &["a"]);
        check(vec![], vec![a.clone()], &["a"], &[], &[]);
    }

    #[test]
    fn any_setting_or_secret_counts_as_a_change() {
        let a = file("a", "a.jsonl");
        let mut paced = a.clone();
        paced.delivery.rate_limit = Some(5.0);
        check(vec![a.clone()], vec![paced], &[], &["a"], &[]);
        let mut late_too = a.clone();
        late_too.records.insert("late".to_owned());
        check(vec![a.clone()], vec![late_too], &[], &["a"], &[]);
        let http = |token: &str| SinkConfig {
            kind: SinkKind::Http(Box::new(eddy_sinks::HttpConfig {
                name: "hub".to_owned(),
                url: "http://127.0.0.1:1/in".to_owned(),
                headers: vec![("authorization".to_owned(), eddy_sinks::Secret::new(token))],
                tls: eddy_sinks::TlsFiles::default(),
                timeout: std::time::Duration::from_secs(1),
                connect_timeout: std::time::Duration::from_secs(1),
            })),
            ..file("hub", "-")
        };
        // A rotated token (the file's content) restarts the sink, though Debug shows neither.
        assert_eq!(format!("{:?}", http("old")), format!("{:?}", http("new")));
        check(vec![http("old")], vec![http("new")], &[], &["hub"], &[]);
        check(vec![http("same")], vec![http("same")], &[], &[], &[]);
    }

    fn slots(cursors: &[AtomicU64]) -> Vec<u64> {
        cursors.iter().map(|slot| slot.load(Ordering::Relaxed)).collect()
    }

    /// The slot bookkeeping that the outbox trim depends on: a removed sink stops holding it
    /// back, an added sink holds it from 0 until it publishes its cursor, and with no sink at
    /// all the free slots follow the committed seq.
    /// A failed store suspends every sink: nothing starts while it is failed (not even a changed
    /// sink's successor), slots keep their cursors; a reopened store starts them all again, the
    /// changed one with its new settings, and drops the ones a reload removed.
    #[tokio::test]
    async fn a_failed_store_suspends_every_sink_until_it_is_open_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data"), 1 << 20, vec![], vec![]).unwrap();
        let out = |name: &str| dir.path().join(name).display().to_string();
        let configured = [file("a", &out("a.jsonl")), file("b", &out("b.jsonl")), file("c", &out("c.jsonl"))];
        let (cursors, raw_cursors) = cursor_slots(&configured);
        let (_committed_tx, committed_rx) = watch::channel(Committed { results: 7, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let mut sinks =
            SinkSet::new(store.clone(), cursors.clone(), raw_cursors, committed_rx.clone(), give_up_rx);
        assert_eq!(sinks.start_configured(&configured).unwrap().len(), 3);
        cursors[0].store(5, Ordering::Release);
        // A reload changes b and removes c, then the store fails before their tasks ended.
        let (applied, _) = sinks.reload(vec![file("a", &out("a.jsonl")), file("b", &out("b2.jsonl"))]).await;
        assert_eq!((applied.changed, applied.removed), (vec!["b".to_owned()], vec!["c".to_owned()]));
        sinks.suspend();
        assert!(sinks.entries.values().all(|entry| entry.retire.is_cancelled()), "every task is retired");
        for name in ["sink a", "sink b", "sink c"] {
            assert!(sinks.exited(name, false).is_none(), "{name} does not start while suspended");
        }
        assert_eq!(slots(&cursors)[..3], [5, 0, u64::MAX], "slots keep their cursors; c is gone");
        assert!(sinks.resume_pending().await.is_empty(), "nothing starts while suspended");

        let tasks = sinks.resume(store, committed_rx).await;
        let mut started: Vec<&str> = tasks.iter().map(|task| task.component.as_str()).collect();
        started.sort_unstable();
        assert_eq!(started, ["sink a", "sink b"]);
        let b = sinks.entries.get("b").expect("b runs");
        assert!(
            matches!(&b.config.kind, SinkKind::File(file) if file.path.ends_with("b2.jsonl")),
            "with its new settings"
        );
        assert!(sinks.pending.is_empty());
    }

    #[tokio::test]
    async fn slots_hold_the_trim_only_for_running_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data"), 1 << 20, vec![], vec![]).unwrap();
        let out = |name: &str| dir.path().join(name).display().to_string();
        let configured = [file("a", &out("a.jsonl")), file("b", &out("b.jsonl"))];
        let (cursors, raw_cursors) = cursor_slots(&configured);
        assert_eq!(cursors.len(), 2 + SPARE_SLOTS);
        let (committed_tx, committed_rx) = watch::channel(Committed { results: 7, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let mut sinks = SinkSet::new(store, cursors.clone(), raw_cursors.clone(), committed_rx, give_up_rx);
        let tasks = sinks.start_configured(&configured).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(slots(&cursors)[..3], [0, 0, u64::MAX]);
        let names = |sinks: &SinkSet| {
            sinks.stats_watch().borrow().iter().map(|(name, _)| name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&sinks), ["a", "b"]);

        // Remove a, add c: c takes a spare slot at 0 and starts now; a leaves once ended.
        let (applied, tasks) = sinks.reload(vec![configured[1].clone(), file("c", &out("c.jsonl"))]).await;
        assert_eq!(
            (applied.added, applied.removed, applied.changed),
            (vec!["c".into()], vec!["a".into()], vec![])
        );
        assert_eq!(tasks.iter().map(|task| task.component.as_str()).collect::<Vec<_>>(), ["sink c"]);
        assert_eq!(names(&sinks), ["b", "c"]);
        assert_eq!(slots(&cursors)[..3], [0, 0, 0]);
        assert!(sinks.exited("sink a", false).is_none());
        assert_eq!(slots(&cursors)[..3], [u64::MAX, 0, 0], "a removed sink no longer holds the trim");

        // A changed sink restarts in its own slot once its old task ended.
        let (applied, tasks) =
            sinks.reload(vec![file("b", &out("b2.jsonl")), file("c", &out("c.jsonl"))]).await;
        assert_eq!(applied.changed, ["b"]);
        assert!(tasks.is_empty(), "the successor waits for the old task to end");
        let successor = sinks.exited("sink b", false).expect("b restarts");
        assert_eq!(successor.component, "sink b");

        // An invalid new setting keeps the old sink: a file sink under a regular file.
        let (applied, _) =
            sinks.reload(vec![file("b", &out("b2.jsonl/x")), file("c", &out("c.jsonl"))]).await;
        assert_eq!(applied.failed.len(), 1, "{:?}", applied.failed);
        assert!(applied.changed.is_empty());
        assert!(sinks.exited("sink b", false).is_none(), "b was not retired");

        // No sink left: free slots follow the committed seq.
        let (applied, _) = sinks.reload(Vec::new()).await;
        assert_eq!(applied.removed, ["b", "c"]);
        sinks.exited("sink b", false);
        sinks.exited("sink c", false);
        assert!(sinks.is_empty());
        assert!(slots(&cursors).iter().all(|cursor| *cursor == 7), "{:?}", slots(&cursors));
        committed_tx.send_replace(Committed { results: 9, raw: 0 });
        sinks.follow_committed();
        assert!(slots(&cursors).iter().all(|cursor| *cursor == 9));
        // And a sink added then holds the trim again, the free slots let go.
        let (_, tasks) = sinks.reload(vec![file("d", &out("d.jsonl"))]).await;
        assert_eq!(tasks.len(), 1);
        let held: Vec<u64> = slots(&cursors).into_iter().filter(|cursor| *cursor != u64::MAX).collect();
        assert_eq!(held, [0]);
    }

    /// A certificate renewed in place (same path, new content) restarts the sink at the next
    /// reload; an untouched one does not.
    #[tokio::test]
    async fn a_tls_file_with_a_new_content_makes_a_changed_sink() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data"), 1 << 20, vec![], vec![]).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, "first certificate").unwrap();
        // An http:// hub never reads its TLS files, so any content sets it up.
        let hub = SinkConfig {
            kind: SinkKind::Http(Box::new(eddy_sinks::HttpConfig {
                name: "hub".to_owned(),
                url: "http://127.0.0.1:1/in".to_owned(),
                headers: Vec::new(),
                tls: eddy_sinks::TlsFiles {
                    ca_file: Some(ca_file.clone()),
                    ..eddy_sinks::TlsFiles::default()
                },
                timeout: std::time::Duration::from_secs(1),
                connect_timeout: std::time::Duration::from_secs(1),
            })),
            ..file("hub", "-")
        };
        let configured = [hub.clone()];
        let (cursors, raw_cursors) = cursor_slots(&configured);
        let (_committed_tx, committed_rx) = watch::channel(Committed::default());
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let mut sinks = SinkSet::new(store, cursors, raw_cursors, committed_rx, give_up_rx);
        sinks.start_configured(&configured).unwrap();

        let (applied, _) = sinks.reload(vec![hub.clone()]).await;
        assert!(applied.changed.is_empty(), "untouched files: no change");
        std::fs::write(&ca_file, "renewed certificate").unwrap();
        let (applied, _) = sinks.reload(vec![hub.clone()]).await;
        assert_eq!(applied.changed, ["hub"]);
        assert!(sinks.exited("sink hub", false).is_some(), "the hub restarts with the new file");
        let (applied, _) = sinks.reload(vec![hub]).await;
        assert!(applied.changed.is_empty(), "the successor read the renewed file");
    }
}
