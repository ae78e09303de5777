//! The aggregator task: recovers the engine from its last commit, replays the log after it,
//! then runs the engine on durable chunks and commits results, state and log position
//! atomically every `checkpoint_interval`.

#[cfg(test)]
mod burst_tests;
#[cfg(test)]
mod recovery_tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_sensors::SensorRegistry;
use tokio::sync::{mpsc, watch};

use crate::engine::record::TitleKey;
use crate::engine::{Engine, EngineSpec, Output, RestoreReport};
use crate::pipeline::ingest::EngineInput;
use crate::stats::{
    AggregateStats, Committed, SensorClockStatus, SENSOR_CLOCKS_LISTED, SENSOR_CLOCK_THRESHOLD,
};
use crate::storage::{
    state_page_of, state_page_of_sensor, Commit, Lane, LogChunk, MarkChange, OutboxEntry, RawCommit,
    SealedPage, Store, StoreError, OUTBOX_PAGE_ENTRIES, STATE_PAGES,
};

/// How many log chunks the replay reads per step.
const REPLAY_PAGE: usize = 256;

/// Pending results that force a commit before the interval ends, bounding memory.
const MAX_PENDING_RESULTS: usize = 10_000;

/// Readings processed since the last commit that force a commit before the interval ends.
/// sled keeps every log value it was given in memory until the log is trimmed, and the log is
/// trimmed only after a commit: at 300,000 readings/s a 1 s interval held ~14 MB of log. This
/// bounds it to about 2 MB (~40 bytes a reading) whatever the rate, and bounds the replay
/// after a crash too. At realistic gateway rates the interval comes first.
const MAX_UNCOMMITTED_READINGS: usize = 50_000;

/// Readings per known sensor allowed between commits when that is more than
/// [`MAX_UNCOMMITTED_READINGS`]. A commit rewrites the state of every sensor that changed, a
/// few hundred bytes to kilobytes each, so with many sensors a commit every 50,000 readings
/// wrote far more state than the log it let go (10,000 sensors: most of eddy's CPU went to
/// commits). The log allowed to wait then grows with the state it saves rewriting.
const UNCOMMITTED_READINGS_PER_SENSOR: usize = 10;

/// State pages loaded per step in the background after a lazy restart, between inputs: each
/// step holds up the next input by about 1/64 of a full restore.
const BACKGROUND_PAGES: usize = 2;

/// A page's mark changes since the last commit: per slot, nothing, a new value, or a forget.
type MarkPageDelta = [Option<Option<u64>>; 256];

/// The engine as recovered at start-up, ready to run.
#[derive(Debug)]
pub(crate) struct Aggregator {
    store: Store,
    engine: Engine,
    log_pos: u64,
    next_seq: u64,
    checkpoint_interval: Duration,
    /// Results since the last commit: full pages sealed as they fill, then the rest.
    sealed: Vec<SealedPage>,
    pending: Vec<OutboxEntry>,
    /// Readings applied since the last commit.
    uncommitted_readings: usize,
    outputs: Vec<Output>,
    stats: Arc<AggregateStats>,
    /// Each sink's delivered cursor; the outbox is trimmed below the smallest.
    cursors: Arc<Vec<AtomicU64>>,
    /// Last seqs committed to the outbox, for the sinks.
    committed: watch::Sender<Committed>,
    /// Raw readings go to the raw lane too (`forward_raw`).
    forward_raw: bool,
    spec: Arc<EngineSpec>,
    pending_raw: Vec<OutboxEntry>,
    next_raw_seq: u64,
    /// Each sink's raw-lane cursor (`u64::MAX` for sinks that take no raw readings).
    raw_cursors: Arc<Vec<AtomicU64>>,
    trimmed_raw_through: u64,
    late_by_window: BTreeMap<String, u64>,
    last_late_log: Option<Instant>,
    trimmed_outbox_through: u64,
    committed_log_pos: u64,
    clock_ms: i64,
    /// The sources' marks of the chunks applied since the last commit, by page, committed
    /// with it. A page is a fixed 256 slots (4 KiB), so an MQTT source's 65,536 packet ids
    /// take at most 1 MiB here between commits however many messages came, and no
    /// allocation per message.
    pending_marks: BTreeMap<Vec<u8>, Box<MarkPageDelta>>,
    /// Where the ids of sensors the engine forgot are released, once their deletion is
    /// committed (None: nowhere, as in tests without sources).
    sensor_registry: Option<Arc<SensorRegistry>>,
    /// Window results produced since the last commit, by the moment the ingest task received
    /// the group whose reading closed their window: observed in `result_latency` once
    /// committed. Groups in order; one entry per group (its chunks are merged).
    closed_since_commit: Vec<(Instant, u64)>,
    /// The longest a window result waits for its commit (None: the next checkpoint).
    result_commit_delay: Option<Duration>,
    /// When the oldest uncommitted window result is due to be committed.
    results_due: Option<tokio::time::Instant>,
    /// State pages not loaded yet after a lazy restart (see [`Aggregator::recover`]).
    unloaded_pages: Vec<bool>,
    n_unloaded_pages: usize,
    /// When the recovery started, for the log line once every page is in.
    recovery_started: Instant,
}

impl Aggregator {
    /// Restores the engine from the store's last commit. Returns the aggregator and the
    /// receiver on which sinks learn the last committed outbox seq.
    ///
    /// Lazily when the last commit wrote a state index: only the page of the engine-wide entry
    /// and the pages holding micro-batch entries are loaded here; before a chunk is applied the
    /// pages of its sensors are ([`Aggregator::load_state_for`]), and the rest a few at a time
    /// between inputs, or all at once when the processing clock reaches the index's deadline.
    /// Without an index (a store written by an older build) every page is loaded here.
    pub(crate) fn recover(
        store: Store,
        spec: Arc<EngineSpec>,
        checkpoint_interval: Duration,
        cursors: Arc<Vec<AtomicU64>>,
        stats: Arc<AggregateStats>,
    ) -> Result<(Aggregator, watch::Receiver<Committed>), StoreError> {
        Aggregator::recover_with(store, spec, checkpoint_interval, cursors, stats, true)
    }

    /// [`Aggregator::recover`], loading every state page at once unless `lazy`.
    pub(crate) fn recover_with(
        store: Store,
        spec: Arc<EngineSpec>,
        checkpoint_interval: Duration,
        cursors: Arc<Vec<AtomicU64>>,
        stats: Arc<AggregateStats>,
        lazy: bool,
    ) -> Result<(Aggregator, watch::Receiver<Committed>), StoreError> {
        let started = Instant::now();
        let (snapshot, index) = store.load_engine_meta()?;
        let mut unloaded_pages = vec![true; usize::from(STATE_PAGES)];
        let first_pages: Vec<u16> = match index.as_ref().filter(|_| lazy) {
            Some(index) => {
                let mut pages = index.batch_pages.clone();
                pages.push(state_page_of(Engine::meta_state_key()));
                pages.sort_unstable();
                pages.dedup();
                pages
            }
            None => (0..STATE_PAGES).collect(),
        };
        for page in &first_pages {
            unloaded_pages[usize::from(*page)] = false;
        }
        let n_unloaded_pages = unloaded_pages.iter().filter(|unloaded| **unloaded).count();
        let entries = store.load_state_pages(&first_pages)?;
        let load_ms = started.elapsed().as_millis();
        let n_entries = entries.len();
        let mut engine = Engine::new(spec.clone());
        let report = engine.restore_more(entries);
        if n_unloaded_pages > 0 {
            engine.set_unloaded(index.as_ref().map(|index| index.due_ms));
        }
        let restore_ms = started.elapsed().as_millis() - load_ms;
        log_skipped(&report);
        tracing::info!(
            entries = n_entries,
            pages = first_pages.len(),
            pages_later = n_unloaded_pages,
            open_keys = engine.stats().open_keys,
            loaded = report.loaded,
            skipped = report.skipped.len(),
            log_pos = snapshot.log_pos,
            next_seq = snapshot.next_seq,
            load_ms,
            restore_ms,
            "Engine state restored."
        );
        let (committed, committed_rx) =
            watch::channel(Committed { results: snapshot.next_seq - 1, raw: snapshot.next_raw_seq - 1 });
        publish_outliers(&engine, &stats);
        if !engine.is_partial() {
            publish_sensor_clocks(&engine, &stats);
            publish_state_size(&engine, &stats);
        }
        Ok((
            Aggregator {
                store,
                engine,
                log_pos: snapshot.log_pos,
                next_seq: snapshot.next_seq,
                checkpoint_interval,
                sealed: Vec::new(),
                pending: Vec::new(),
                uncommitted_readings: 0,
                outputs: Vec::new(),
                stats,
                cursors,
                committed,
                forward_raw: false,
                spec,
                pending_raw: Vec::new(),
                next_raw_seq: snapshot.next_raw_seq,
                raw_cursors: Arc::new(Vec::new()),
                trimmed_raw_through: 0,
                late_by_window: BTreeMap::new(),
                last_late_log: None,
                trimmed_outbox_through: 0,
                committed_log_pos: snapshot.log_pos,
                clock_ms: snapshot.clock_ms,
                pending_marks: BTreeMap::new(),
                sensor_registry: None,
                closed_since_commit: Vec::new(),
                result_commit_delay: None,
                results_due: None,
                unloaded_pages,
                n_unloaded_pages,
                recovery_started: started,
            },
            committed_rx,
        ))
    }

    /// Whether state pages are still to be loaded.
    pub(crate) fn is_loading(&self) -> bool {
        self.n_unloaded_pages > 0
    }

    /// The hook before a chunk is applied (live or replayed): loads the state pages its
    /// readings' sensors may be stored in, or every page left when the chunk's advance may
    /// close, release or forget state not loaded yet.
    fn load_state_for(&mut self, chunk: &LogChunk) -> Result<(), StoreError> {
        if self.n_unloaded_pages == 0 || chunk.ingest_ms == i64::MIN {
            return Ok(());
        }
        if self.engine.needs_all_state(chunk.ingest_ms) {
            return self.load_pages(usize::MAX);
        }
        // Every entry of a sensor lies in the page of its id (store format 3).
        let mut pages = Vec::new();
        for reading in &chunk.readings {
            let page = state_page_of_sensor(&reading.sensor);
            if self.unloaded_pages[usize::from(page)] {
                self.unloaded_pages[usize::from(page)] = false;
                pages.push(page);
            }
        }
        self.restore_pages(&pages)
    }

    /// Loads up to `n_pages` of the pages left, in page order.
    fn load_pages(&mut self, n_pages: usize) -> Result<(), StoreError> {
        let mut pages = Vec::new();
        for (page, unloaded) in (0..STATE_PAGES).zip(self.unloaded_pages.iter_mut()) {
            if pages.len() == n_pages {
                break;
            }
            if *unloaded {
                *unloaded = false;
                pages.push(page);
            }
        }
        self.restore_pages(&pages)
    }

    /// Restores the entries of `pages` (already marked loaded) into the engine.
    fn restore_pages(&mut self, pages: &[u16]) -> Result<(), StoreError> {
        if pages.is_empty() {
            return Ok(());
        }
        let entries = self.store.load_state_pages(pages)?;
        let report = self.engine.restore_more(entries);
        log_skipped(&report);
        self.n_unloaded_pages -= pages.len();
        if self.n_unloaded_pages == 0 {
            self.engine.set_unloaded(None);
            publish_sensor_clocks(&self.engine, &self.stats);
            publish_state_size(&self.engine, &self.stats);
            tracing::info!(
                open_keys = self.engine.stats().open_keys,
                sensors = self.engine.stats().sensors,
                elapsed_ms = self.recovery_started.elapsed().as_millis(),
                "Engine state loaded in full."
            );
        }
        Ok(())
    }

    /// Also writes every reading to the raw lane of the outbox (`forward_raw`), trimmed below
    /// the smallest of `raw_cursors`.
    pub(crate) fn forwarding_raw(
        mut self,
        forward_raw: bool,
        raw_cursors: Arc<Vec<AtomicU64>>,
    ) -> Aggregator {
        self.forward_raw = forward_raw;
        self.raw_cursors = raw_cursors;
        self
    }

    /// Commits window results at most `delay` after the chunk that closed their window, not
    /// only at checkpoints (None: at checkpoints): `engine.result_commit_delay`.
    pub(crate) fn committing_results_within(mut self, delay: Option<Duration>) -> Aggregator {
        self.result_commit_delay = delay;
        self
    }

    /// Releases the ids of the sensors the engine forgets from `registry` (the gateway's
    /// sensor cap and the sources'), each after the commit that deletes its state.
    pub(crate) fn releasing_sensors_to(mut self, registry: Arc<SensorRegistry>) -> Aggregator {
        self.sensor_registry = Some(registry);
        self
    }

    /// The processing clock as far as the engine has seen it: the floor for the ingest clock.
    pub(crate) fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// The last log key whose readings the engine has processed (after recovery: committed).
    pub(crate) fn log_pos(&self) -> u64 {
        self.log_pos
    }

    /// The marks of chunks applied but not yet committed (empty after a replay, which ends
    /// with a commit; kept exact all the same).
    pub(crate) fn uncommitted_marks(&self) -> Vec<MarkChange> {
        let mut changes = Vec::new();
        for (page, delta) in &self.pending_marks {
            for (slot, change) in (0..=u8::MAX).zip(delta.iter()) {
                if let Some(value) = change {
                    changes.push(([page.as_slice(), &[slot]].concat(), *value));
                }
            }
        }
        changes
    }

    /// Replays the log after the recovered position up to and including `through`, the last
    /// key that existed when the store was opened.
    pub(crate) async fn replay(&mut self, through: u64) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut n_chunks = 0u64;
        while self.log_pos < through {
            let (chunks, _skipped) = self.store.read_log_after(self.log_pos, REPLAY_PAGE)?;
            if chunks.is_empty() {
                break;
            }
            for chunk in chunks.into_iter().take_while(|chunk| chunk.key <= through) {
                n_chunks += 1;
                self.load_state_for(&chunk)?;
                self.apply_chunk(&chunk);
                self.seal_full_pages()?;
            }
            if self.commit_due() {
                self.commit().await?;
            }
        }
        if n_chunks > 0 {
            self.commit().await?;
        }
        tracing::info!(chunks = n_chunks, elapsed_ms = started.elapsed().as_millis(), "Log replayed.");
        let stats = self.store.stats();
        let skipped = [
            &stats.corrupt_log_chunks,
            &stats.corrupt_outbox_entries,
            &stats.corrupt_state_pages,
            &stats.corrupt_meta,
        ]
        .map(|counter| counter.load(Ordering::Relaxed));
        if skipped.iter().any(|n| *n > 0) {
            tracing::error!(
                corrupt_log_chunks = skipped[0],
                corrupt_outbox_pages = skipped[1],
                corrupt_state_pages = skipped[2],
                corrupt_meta = skipped[3],
                "Undecodable records were skipped while recovering (a torn write or an unknown \
                 format); eddy goes on without them."
            );
        }
        Ok(())
    }

    /// Runs until the ingest task closes the channel, then commits a last time. Open windows
    /// stay in the committed state for the next start.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<EngineInput>) -> Result<(), StoreError> {
        let mut ticker = tokio::time::interval(self.checkpoint_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => {
                        let mut input = Some(input);
                        while let Some(current) = input.take() {
                            input = self.on_input_then_commit(current, &mut rx).await?;
                        }
                    }
                    None => break,
                },
                _ = ticker.tick() => self.commit().await?,
                () = tokio::time::sleep_until(self.results_due.unwrap_or_else(tokio::time::Instant::now)),
                    if self.results_due.is_some() => self.commit().await?,
                // No input waiting: load a few more state pages, then let others run.
                () = std::future::ready(()), if self.is_loading() && rx.is_empty() => {
                    self.load_pages(BACKGROUND_PAGES)?;
                    tokio::task::yield_now().await;
                }
            }
        }
        self.commit().await?;
        tracing::info!(
            log_pos = self.log_pos,
            next_seq = self.next_seq,
            "Aggregator stopped; state committed."
        );
        Ok(())
    }

    /// Applies `input`; a chunk whose window results are then due is committed at once, with
    /// the rest of its ingest group. The ingest task cuts a group into chunks of at most 512
    /// readings, all with the group's receipt time: a window-close burst of 1,000 sensors came
    /// as two chunks, and committed one by one the second waited for the first one's whole
    /// commit. Chunks of later groups wait for the commit: joining it would delay the results
    /// already due (letting every queued input join made the close burst's max 25 % worse
    /// with 2 ms groups at 100k/s).
    /// Returns an input taken from `rx` while looking for the group's chunks, to be handled
    /// next.
    async fn on_input_then_commit(
        &mut self,
        input: EngineInput,
        rx: &mut mpsc::Receiver<EngineInput>,
    ) -> Result<Option<EngineInput>, StoreError> {
        let (chunk, received) = match input {
            EngineInput::Chunk(chunk, received) => (chunk, received),
            EngineInput::Tick { now_ms } => {
                self.on_tick(now_ms)?;
                return Ok(None);
            }
        };
        self.on_chunk(&chunk, received)?;
        let mut next = None;
        while self.results_are_due() && !self.commit_due() {
            match rx.try_recv() {
                Ok(EngineInput::Chunk(more, at)) if at == received => self.on_chunk(&more, at)?,
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if self.commit_due() || self.results_are_due() {
            self.commit().await?;
        }
        Ok(next)
    }

    /// Applies one durable chunk from the ingest task, received there at `received`.
    fn on_chunk(&mut self, chunk: &LogChunk, received: tokio::time::Instant) -> Result<(), StoreError> {
        self.stats.inputs_total.fetch_add(1, Ordering::Relaxed);
        self.load_state_for(chunk)?;
        let closed = self.apply_chunk(chunk);
        self.note_closed(received.into_std(), closed);
        self.seal_full_pages()?;
        if closed > 0 && self.results_due.is_none() {
            self.results_due = self.result_commit_delay.map(|delay| tokio::time::Instant::now() + delay);
        }
        Ok(())
    }

    /// Moves processing time on to `now_ms` with no new readings.
    fn on_tick(&mut self, now_ms: i64) -> Result<(), StoreError> {
        self.stats.inputs_total.fetch_add(1, Ordering::Relaxed);
        if self.engine.needs_all_state(now_ms) {
            self.load_pages(usize::MAX)?;
        }
        self.clock_ms = self.clock_ms.max(now_ms);
        self.engine.tick(now_ms, &mut self.outputs);
        publish_outliers(&self.engine, &self.stats);
        self.take_outputs();
        self.seal_full_pages()
    }

    /// Whether window results wait past `result_commit_delay`.
    fn results_are_due(&self) -> bool {
        self.results_due.is_some_and(|due| due <= tokio::time::Instant::now())
    }

    /// Results produced since the last commit.
    fn n_pending(&self) -> usize {
        self.sealed.iter().map(SealedPage::len).sum::<usize>() + self.pending.len()
    }

    /// Whether enough piled up since the last commit to commit before the interval ends.
    fn commit_due(&self) -> bool {
        let max_readings = MAX_UNCOMMITTED_READINGS
            .max(UNCOMMITTED_READINGS_PER_SENSOR.saturating_mul(self.engine.n_sensors()));
        self.n_pending() + self.pending_raw.len() >= MAX_PENDING_RESULTS
            || self.uncommitted_readings >= max_readings
    }

    /// Encodes full pages of pending results right away: a window-close burst (every sensor's
    /// windows end together) then waits for its commit compressed, not as JSON.
    ///
    /// The sealed entries leave `pending` in one drain at the end: a drain per page moved all
    /// the entries behind it each time, quadratic in a burst (135,000 results after a restart
    /// with 125,000 sensors: 348M instructions of `memmove`, BENCHMARKS.md #18 session 11).
    fn seal_full_pages(&mut self) -> Result<(), StoreError> {
        let mut n_sealed = 0;
        let mut outcome = Ok(());
        for entries in self.pending.chunks_exact(OUTBOX_PAGE_ENTRIES) {
            match Store::seal_outbox_page(entries) {
                Ok(page) => {
                    self.sealed.push(page);
                    n_sealed += entries.len();
                }
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        // Whether or not a page failed, each entry is either sealed or still pending: never both.
        self.pending.drain(..n_sealed);
        outcome
    }

    /// Remembers `closed` window results caused by readings received at `received`.
    fn note_closed(&mut self, received: Instant, closed: u64) {
        if closed == 0 {
            return;
        }
        match self.closed_since_commit.last_mut() {
            Some((at, n)) if *at == received => *n += closed,
            _ => self.closed_since_commit.push((received, closed)),
        }
    }

    /// Applies one durable chunk; returns the number of window results it closed.
    fn apply_chunk(&mut self, chunk: &LogChunk) -> u64 {
        self.uncommitted_readings += chunk.readings.len();
        for (key, value) in &chunk.marks {
            let Some((slot, page)) = key.split_last() else { continue };
            let delta = match self.pending_marks.get_mut(page) {
                Some(delta) => delta,
                None => self.pending_marks.entry(page.to_vec()).or_insert_with(|| Box::new([None; 256])),
            };
            delta[usize::from(*slot)] = Some(*value);
        }
        if chunk.ingest_ms != i64::MIN {
            self.clock_ms = self.clock_ms.max(chunk.ingest_ms);
            self.engine.apply_chunk(chunk.ingest_ms, chunk.batch, &chunk.readings, &mut self.outputs);
            publish_outliers(&self.engine, &self.stats);
            if self.forward_raw {
                for (reading_idx, reading) in chunk.readings.iter().enumerate() {
                    self.pending_raw.push(OutboxEntry {
                        kind: "raw".to_owned(),
                        group: "Raw readings".to_owned(),
                        payload: crate::engine::record::raw_reading_json(
                            &self.spec,
                            reading,
                            chunk.key,
                            reading_idx,
                        ),
                    });
                }
            }
        }
        self.log_pos = chunk.key;
        self.take_outputs()
    }

    /// Moves the engine's outputs to the pending results; returns how many were window results.
    fn take_outputs(&mut self) -> u64 {
        let mut windows = 0;
        // A close emits thousands of records of one window slot: their title is made once.
        let mut title: Option<(TitleKey, String)> = None;
        for output in self.outputs.drain(..) {
            match output {
                Output::Result(record) => {
                    let kind = record.kind();
                    windows += u64::from(kind == "window");
                    let key = record.title_key();
                    let group = match &title {
                        Some((made_for, made)) if *made_for == key => made.clone(),
                        _ => {
                            let made = record.group_title();
                            title = Some((key, made.clone()));
                            made
                        }
                    };
                    self.pending.push(OutboxEntry {
                        kind: kind.to_owned(),
                        group,
                        payload: record.to_json(),
                    });
                }
                Output::Late(late) => {
                    *self.late_by_window.entry(late.window().to_owned()).or_default() += 1;
                    self.stats.late_total.fetch_add(1, Ordering::Relaxed);
                    self.pending.push(OutboxEntry {
                        kind: "late".to_owned(),
                        group: late.group_title(),
                        payload: late.to_json(),
                    });
                }
            }
        }
        self.log_late_readings();
        windows
    }

    /// Late readings are logged as a summary at most every ten seconds.
    fn log_late_readings(&mut self) {
        if self.late_by_window.is_empty() {
            return;
        }
        let due = self.last_late_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            for (window, n) in std::mem::take(&mut self.late_by_window) {
                tracing::warn!(
                    window,
                    late_readings = n,
                    "Readings arrived after their window was emitted; counted as late."
                );
            }
            self.last_late_log = Some(Instant::now());
        }
    }

    /// Commits pending results, the engine's changed state and the log position in one sled
    /// batch, flushes, then lets the sinks see the new results and trims what is no longer
    /// needed.
    async fn commit(&mut self) -> Result<(), StoreError> {
        self.uncommitted_readings = 0;
        self.results_due = None;
        let position_moved = self.store_position_changed();
        // Nothing but the processing clock moved (an idle gateway): no write, no fsync.
        if self.n_pending() == 0
            && self.pending_raw.is_empty()
            && !self.engine.has_changes()
            && !position_moved
        {
            self.trim_outbox()?;
            return Ok(());
        }
        let state = self.engine.take_dirty();
        let forgotten = self.engine.take_forgotten();
        let n_results = u64::try_from(self.n_pending()).unwrap_or(u64::MAX);
        let commit = Commit {
            sealed: std::mem::take(&mut self.sealed),
            outbox: std::mem::take(&mut self.pending),
            state,
            log_pos: self.log_pos,
            next_seq: self.next_seq + n_results,
            clock_ms: self.clock_ms,
            state_due_ms: Some(self.engine.state_due_ms()),
            marks: std::mem::take(&mut self.pending_marks)
                .into_iter()
                .map(|(page, delta)| {
                    let slots = (0..=u8::MAX)
                        .zip(delta.iter())
                        .filter_map(|(slot, change)| change.map(|value| (slot, value)));
                    (page, slots.collect())
                })
                .collect(),
        };
        let raw = RawCommit {
            next_raw_seq: self.next_raw_seq + u64::try_from(self.pending_raw.len()).unwrap_or(u64::MAX),
            entries: std::mem::take(&mut self.pending_raw),
        };
        self.store.commit_with_raw(&commit, self.forward_raw.then_some(&raw))?;
        self.store.flush().await?;
        self.next_seq = commit.next_seq;
        if self.forward_raw {
            self.next_raw_seq = raw.next_raw_seq;
        }
        self.committed_log_pos = self.log_pos;
        self.stats.results_total.fetch_add(n_results, Ordering::Relaxed);
        self.stats.commits_total.fetch_add(1, Ordering::Relaxed);
        for (received, n) in self.closed_since_commit.drain(..) {
            self.stats.result_latency.observe_n(received.elapsed(), n);
        }
        if !self.engine.is_partial() {
            publish_sensor_clocks(&self.engine, &self.stats);
            publish_state_size(&self.engine, &self.stats);
        }
        // Their state is deleted durably: a restart cannot bring them back, so their ids may
        // count no more.
        if let Some(registry) = &self.sensor_registry {
            registry.release(&forgotten);
        }
        if !forgotten.is_empty() {
            tracing::info!(sensors = forgotten.len(), "Forgot sensors silent for engine.forget_after.");
        }
        self.committed.send_replace(Committed { results: self.next_seq - 1, raw: self.next_raw_seq - 1 });
        // The log up to the committed position is no longer needed: a restart resumes after it.
        self.store.trim_log_through(self.log_pos)?;
        self.trim_outbox()?;
        // Past the budget (drop_oldest) or the ttl, the oldest undelivered results go.
        self.store.enforce_budget(self.clock_ms)?;
        Ok(())
    }

    fn store_position_changed(&self) -> bool {
        self.log_pos != self.committed_log_pos
    }

    /// Deletes outbox entries every sink has delivered.
    fn trim_outbox(&mut self) -> Result<(), StoreError> {
        let delivered = self.cursors.iter().map(|cursor| cursor.load(Ordering::Acquire)).min();
        // With no sink at all, results are committed and immediately discarded.
        let through = delivered.unwrap_or(self.next_seq - 1);
        if through > self.trimmed_outbox_through {
            self.store.trim_outbox_through(through)?;
            self.trimmed_outbox_through = through;
        }
        if self.forward_raw {
            let raw_delivered = self.raw_cursors.iter().map(|cursor| cursor.load(Ordering::Acquire)).min();
            let raw_through = raw_delivered.unwrap_or(u64::MAX).min(self.next_raw_seq - 1);
            if raw_through > self.trimmed_raw_through {
                self.store.trim_lane_through(Lane::Raw, raw_through)?;
                self.trimmed_raw_through = raw_through;
            }
        }
        Ok(())
    }
}

/// Reports the stored entries a restore skipped (they are deleted by the next commit).
fn log_skipped(report: &RestoreReport) {
    for (key, reason) in &report.skipped {
        tracing::error!(key = %String::from_utf8_lossy(key), %reason, "Skipped an engine state entry.");
    }
}

/// Publishes how much state the engine holds (per commit and once every page is loaded).
fn publish_state_size(engine: &Engine, stats: &AggregateStats) {
    let engine_stats = engine.stats();
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    stats.sensors.store(count(engine_stats.sensors), Ordering::Relaxed);
    stats.open_windows.store(count(engine_stats.open_windows), Ordering::Relaxed);
    stats.sensors_forgotten_total.store(engine_stats.sensors_forgotten_total, Ordering::Relaxed);
}

/// Publishes the engine's future-outlier counters (cheap: per chunk and tick).
fn publish_outliers(engine: &Engine, stats: &AggregateStats) {
    let outliers = engine.future_outliers();
    stats.future_outliers_total.store(outliers.total, Ordering::Relaxed);
    stats.count_by_overflow_total.store(engine.count_by_overflow_total(), Ordering::Relaxed);
    // The first publication (at recovery, line ~104) only seeds the counter.
    let before = stats.future_outliers_dropped_total.swap(outliers.dropped_total, Ordering::Relaxed);
    if outliers.dropped_total > before && stats.outliers_published.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            dropped = outliers.dropped_total - before,
            dropped_total = outliers.dropped_total,
            "Dropped readings held for being far ahead of their sensor's clock, never confirmed \
             (the sensor went idle first, or held too many); see eddy status for sensor clocks."
        );
    }
    stats.future_outliers_held.store(u64::try_from(outliers.held).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// Publishes the sensors whose clocks are furthest off (a pass over all sensors: per commit).
fn publish_sensor_clocks(engine: &Engine, stats: &AggregateStats) {
    let clocks = engine
        .sensor_clocks(SENSOR_CLOCKS_LISTED, SENSOR_CLOCK_THRESHOLD)
        .into_iter()
        .map(|clock| SensorClockStatus {
            sensor: clock.sensor.to_string(),
            offset_ms: clock.offset_ms,
            offset_from_median_ms: clock.offset_from_median_ms,
        })
        .collect();
    if let Ok(mut published) = stats.sensor_clocks.lock() {
        *published = clocks;
    }
}
