//! The ingest task: group commit. Readings from every source are appended to the log, flushed
//! once per `flush_interval`, acknowledged, and only then handed to the engine.
//!
//! A failed write never ends this task. Its group is refused (nacked, counted), and since sled
//! refuses every later write of that handle (see `storage/meters.rs`), the task lets go of the
//! store at once and tells the main loop ([`IngestNotice::StoreFailed`]); until the main loop
//! hands it a store opened again ([`StoreControl::Reopened`]) it refuses every reading, with
//! the reason, without touching the disk. The sources stay up throughout.

use std::time::Duration;

use eddy_sensors::{Durability, IngestBatch, IngestReceiver, Reading};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, sleep_until, Instant, MissedTickBehavior};

use crate::pipeline::clock::{ClockWatch, ProcessingClock};
use crate::pipeline::marks::{change_of, RefusedSessions};
use crate::storage::{Appended, LogChunk, MarkChange, Store, StoreError, StoreMeters, MAX_CHUNK_READINGS};

/// What the engine task receives, in log order.
#[derive(Debug)]
pub(crate) enum EngineInput {
    /// A durable chunk of readings, with the moment the ingest task received the first
    /// readings of its group (the start of the window-result latency).
    Chunk(LogChunk, Instant),
    /// Processing time moved on with no new readings.
    Tick {
        /// Processing time (see `pipeline/clock.rs`), ms; never less than any chunk's
        /// `ingest_ms` before it.
        now_ms: i64,
    },
}

/// What the main loop tells the ingest task about the store.
#[derive(Debug)]
pub(crate) enum StoreControl {
    /// The store failed elsewhere (a commit, a cursor): let go of it and of the engine's
    /// channel, and refuse readings with `reason` until [`StoreControl::Reopened`].
    Release {
        /// Why readings are refused, for the senders.
        reason: String,
    },
    /// The store is open again and the engine recovered on it: take readings again.
    Reopened {
        /// The new handle.
        store: Store,
        /// The recovered engine's input.
        engine: mpsc::Sender<EngineInput>,
        /// Chunk keys go on at or after this (past everything the log holds).
        next_key: u64,
    },
}

/// What the ingest task tells the main loop.
#[derive(Debug)]
pub(crate) enum IngestNotice {
    /// A log write or flush failed: the task has let go of the store and refuses readings.
    StoreFailed {
        /// The store's error.
        error: String,
    },
    /// The task has let go of the store, as [`StoreControl::Release`] asked.
    Released,
}

/// The ingest task's line to the main loop about the store.
#[derive(Debug)]
pub(crate) struct StoreLink {
    /// Orders from the main loop.
    pub(crate) control: mpsc::Receiver<StoreControl>,
    /// Notices to the main loop.
    pub(crate) notices: mpsc::Sender<IngestNotice>,
}

/// Most readings collected into one flush: bounds memory and ack latency under load.
const MAX_GROUP_READINGS: usize = 16 * 1024;

/// How often the engine hears the processing clock when no readings arrive, so micro-batches
/// and processing-time windows close on time.
const TICK_EVERY: Duration = Duration::from_millis(200);

/// While readings keep being refused, the warning is repeated at most this often.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// Refusal warnings, at most one per [`REFUSAL_WARN_EVERY`] with the count since the last.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    last_warned: Option<Instant>,
    /// Readings refused since the last warning.
    unreported: u64,
}

impl RefusalLog {
    fn refused(&mut self, n_readings: usize, reason: &str) {
        self.unreported += u64::try_from(n_readings).unwrap_or(u64::MAX);
        if self.last_warned.is_none_or(|at| at.elapsed() >= REFUSAL_WARN_EVERY) {
            tracing::warn!(readings = self.unreported, %reason, "Readings refused (nacked): the store takes none now.");
            self.unreported = 0;
            self.last_warned = Some(Instant::now());
        }
    }

    fn stored(&mut self) {
        if self.last_warned.take().is_some() {
            tracing::info!(refused_since_last_warning = self.unreported, "Readings are stored again.");
            self.unreported = 0;
        }
    }
}

/// The group-commit component.
#[derive(Debug)]
pub(crate) struct Ingest {
    /// The store; `None` once it failed, until the main loop hands over a reopened one.
    pub(crate) store: Option<Store>,
    /// The store's counters, which outlive a failed handle.
    pub(crate) meters: StoreMeters,
    /// Why readings are refused while there is no store.
    pub(crate) released: Option<String>,
    /// Group-commit interval.
    pub(crate) flush_interval: Duration,
    /// Micro-batch interval in ms.
    pub(crate) batch_interval_ms: u64,
    /// Key of the next chunk.
    pub(crate) next_key: u64,
    /// The processing clock.
    pub(crate) clock: ProcessingClock,
    /// The watch over the wall clock (trust, jumps), run at each tick.
    pub(crate) clock_watch: Option<ClockWatch>,
    /// Latencies and the store's last answer, for `/metrics` and `/health`.
    pub(crate) stats: std::sync::Arc<crate::stats::IngestStats>,
    /// Each source's counters by index: its name is the namespace of its marks in the store,
    /// and the readings the store refuses are counted for it.
    pub(crate) sources: Vec<std::sync::Arc<eddy_sensors::SourceStats>>,
    /// Numbered sessions held back after a refusal (see [`RefusedSessions`]).
    pub(crate) refused_sessions: RefusedSessions,
    /// Rate-limited refusal warnings.
    pub(crate) refusal_log: RefusalLog,
}

impl Ingest {
    /// Runs until every source has dropped its sender, then returns after the last group is
    /// durable and handed to the engine. A group the disk budget does not admit, or whose write
    /// fails (ENOSPC, EIO), is refused (its senders keep the readings) and ingest goes on; after
    /// a failed write it lets go of the store (see the module docs).
    pub(crate) async fn run(
        mut self,
        mut rx: IngestReceiver,
        engine: mpsc::Sender<EngineInput>,
        mut link: StoreLink,
    ) -> Result<(), StoreError> {
        let mut engine = Some(engine);
        let mut ticker = interval(TICK_EVERY);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut committed_since_tick = false;
        let mut control_open = true;
        loop {
            tokio::select! {
                // A change of store comes before the readings waiting behind it.
                biased;
                control = link.control.recv(), if control_open => match control {
                    Some(StoreControl::Release { reason }) => {
                        self.release(reason);
                        engine = None;
                        let _ = link.notices.send(IngestNotice::Released).await;
                    }
                    Some(StoreControl::Reopened { store, engine: new_engine, next_key }) => {
                        tracing::info!(next_key = next_key.max(self.next_key), "Ingest takes readings again: the store is open.");
                        self.store = Some(store);
                        self.released = None;
                        self.next_key = self.next_key.max(next_key);
                        engine = Some(new_engine);
                    }
                    None => control_open = false,
                },
                _ = ticker.tick() => {
                    if let Some(watch) = &mut self.clock_watch {
                        watch.check(Some(self.clock.now_ms()));
                    }
                    if !committed_since_tick {
                        if let Some(sender) = &engine {
                            let now_ms = self.clock.now_ms();
                            if sender.send(EngineInput::Tick { now_ms }).await.is_err() {
                                // The engine stopped: the main loop restarts it, or stops eddy.
                                engine = None;
                            }
                        }
                    }
                    committed_since_tick = false;
                }
                first = rx.recv() => {
                    let Some(first) = first else { break };
                    let received = Instant::now();
                    let (group, closed) = self.gather(first, &mut rx).await;
                    if let Err(error) = self.commit_group(group, received, &mut engine).await {
                        // The store failed: let go of it (and of the engine, which drains and
                        // stops), and say so; readings are refused until it is reopened.
                        self.release(format!("store failed: {error}; eddy opens it again by itself"));
                        engine = None;
                        let _ = link.notices.send(IngestNotice::StoreFailed { error: error.to_string() }).await;
                    }
                    committed_since_tick = true;
                    if closed {
                        break;
                    }
                }
            }
        }
        tracing::info!("Ingest drained: every source has stopped.");
        Ok(())
    }

    /// Lets go of the store: readings are refused with `reason` until it is reopened.
    fn release(&mut self, reason: String) {
        if self.store.take().is_some() {
            tracing::warn!(%reason, "Ingest let go of the store; readings are refused until it is open again.");
        }
        self.released = Some(reason);
    }

    /// Collects batches until the flush interval after the first one ends or the group is
    /// full. The second value is true when the channel closed meanwhile.
    async fn gather(&mut self, first: IngestBatch, rx: &mut IngestReceiver) -> (Vec<IngestBatch>, bool) {
        let deadline = Instant::now() + self.flush_interval;
        let mut n_readings = first.readings.len();
        let mut group = vec![first];
        while n_readings < MAX_GROUP_READINGS {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(batch) => {
                        n_readings += batch.readings.len();
                        group.push(batch);
                    }
                    None => return (group, true),
                },
                _ = sleep_until(deadline) => break,
            }
        }
        (group, false)
    }

    /// Stores one group and answers its senders. An `Err` is a failure of the store itself
    /// (the group is already refused); the caller lets go of the store.
    async fn commit_group(
        &mut self,
        group: Vec<IngestBatch>,
        received: Instant,
        engine: &mut Option<mpsc::Sender<EngineInput>>,
    ) -> Result<(), StoreError> {
        let ingest_ms = self.clock.now_ms();
        let batch = u64::try_from(ingest_ms).unwrap_or(0) / self.batch_interval_ms;
        let mut acks: Vec<oneshot::Sender<Durability>> = Vec::new();
        let mut chunks: Vec<LogChunk> = Vec::new();
        let group_len: usize = group.iter().map(|ingest_batch| ingest_batch.readings.len()).sum();
        let mut current: Vec<Reading> = Vec::with_capacity(group_len.min(MAX_CHUNK_READINGS));
        let mut current_marks: Vec<MarkChange> = Vec::new();
        // Readings of the group already in full chunks.
        let mut n_chunked = 0;
        // The marks of the group's batches, to hold their sessions back if the group is refused.
        let mut group_marks: Vec<(usize, Vec<eddy_sensors::Mark>)> = Vec::new();
        // Readings per source in the group, counted as refused if the group is.
        let mut group_readings: Vec<(usize, usize)> = Vec::new();
        for ingest_batch in group {
            if let Some(reason) = self.refused_sessions.check(ingest_batch.source, &ingest_batch.marks) {
                self.count_refused(ingest_batch.source, ingest_batch.readings.len());
                if let Some(ack) = ingest_batch.durable {
                    let _ = ack.send(Durability::Refused(std::sync::Arc::from(reason.as_str())));
                }
                continue;
            }
            if let Some(ack) = ingest_batch.durable {
                acks.push(ack);
            }
            group_readings.push((ingest_batch.source, ingest_batch.readings.len()));
            for reading in ingest_batch.readings {
                current.push(reading);
                if current.len() == MAX_CHUNK_READINGS {
                    let marks = std::mem::take(&mut current_marks);
                    let rest = group_len.saturating_sub(n_chunked + MAX_CHUNK_READINGS);
                    n_chunked += MAX_CHUNK_READINGS;
                    let full =
                        std::mem::replace(&mut current, Vec::with_capacity(rest.min(MAX_CHUNK_READINGS)));
                    chunks.push(self.chunk(ingest_ms, batch, full, marks));
                }
            }
            if ingest_batch.marks.is_empty() {
                continue;
            }
            // A batch's marks go into the chunk holding its last reading.
            let source_name = self.sources.get(ingest_batch.source).map_or("", |stats| stats.name.as_str());
            let changes = ingest_batch.marks.iter().map(|mark| change_of(source_name, mark));
            match chunks.last_mut() {
                Some(last) if current.is_empty() => last.marks.extend(changes),
                _ => current_marks.extend(changes),
            }
            group_marks.push((ingest_batch.source, ingest_batch.marks));
        }
        if !current.is_empty() || !current_marks.is_empty() {
            chunks.push(self.chunk(ingest_ms, batch, current, current_marks));
        }
        let n_readings: usize = chunks.iter().map(|chunk| chunk.readings.len()).sum();
        let write_started = Instant::now();
        let stored = match (&self.store, chunks.is_empty()) {
            (_, true) => Ok(Appended::Stored),
            (None, false) => {
                // No store (it failed; the main loop is opening it again): nothing is written.
                let refused = u64::try_from(n_readings).unwrap_or(u64::MAX);
                self.meters
                    .drop_stats()
                    .refused_disk_readings
                    .fetch_add(refused, std::sync::atomic::Ordering::Relaxed);
                Ok(Appended::Refused(self.released.clone().unwrap_or_else(|| "store failed".to_owned())))
            }
            (Some(store), false) => match store.append_log(&chunks) {
                Ok(Appended::Stored) => store.flush().await.map(|()| Appended::Stored),
                other => other,
            },
        };
        self.stats.record_write(&stored, write_started.elapsed());
        let (refused, failure) = match stored {
            Ok(Appended::Stored) => {
                self.refusal_log.stored();
                (None, None)
            }
            Ok(Appended::Refused(reason)) => {
                self.refusal_log.refused(n_readings, &reason);
                (Some(reason), None)
            }
            Err(error) => {
                let refused = u64::try_from(n_readings).unwrap_or(u64::MAX);
                self.meters
                    .drop_stats()
                    .refused_disk_readings
                    .fetch_add(refused, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(readings = n_readings, error = %error, "Readings refused: the store write failed.");
                let reason = format!("store failed: {error}");
                // sled refuses every later write of this handle: the caller lets go of it. An
                // encoding error is a bug in this group alone.
                (Some(reason), error.is_runtime_failure().then_some(error))
            }
        };
        if let Some(reason) = refused {
            for (source, marks) in &group_marks {
                self.refused_sessions.refused(*source, marks);
            }
            for (source, n_readings) in group_readings {
                self.count_refused(source, n_readings);
            }
            refuse_all(acks, &reason);
            return failure.map_or(Ok(()), Err);
        }
        for ack in acks {
            // A sender that went away (connection closed) no longer needs the answer.
            let _ = ack.send(Durability::Durable);
        }
        self.stats.ingest_latency.observe(received.elapsed());
        for chunk in chunks {
            let Some(sender) = engine.as_ref() else { break };
            if sender.send(EngineInput::Chunk(chunk, received)).await.is_err() {
                // The engine stopped (the store failed under it); the chunk is durable and
                // will be replayed by the engine recovered on the reopened store.
                *engine = None;
                break;
            }
        }
        Ok(())
    }

    fn count_refused(&self, source: usize, n_readings: usize) {
        if let Some(stats) = self.sources.get(source) {
            stats.add_refused(u64::try_from(n_readings).unwrap_or(u64::MAX));
        }
    }

    fn chunk(
        &mut self,
        ingest_ms: i64,
        batch: u64,
        readings: Vec<Reading>,
        marks: Vec<MarkChange>,
    ) -> LogChunk {
        let key = self.next_key;
        self.next_key += 1;
        LogChunk { key, ingest_ms, batch, readings, marks }
    }
}

/// Answers every sender of a group that was not stored.
fn refuse_all(acks: Vec<oneshot::Sender<Durability>>, reason: &str) {
    let reason: std::sync::Arc<str> = std::sync::Arc::from(reason);
    for ack in acks {
        let _ = ack.send(Durability::Refused(reason.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use eddy_sensors::ingest_channel;

    use super::*;

    fn reading(ts_ms: i64) -> Reading {
        Reading {
            sensor: Arc::from("s"),
            ts_ms,
            values: smallvec::smallvec![Some(20.0)],
            tags: smallvec::smallvec![],
        }
    }

    /// An ingest task on `store` with one source, `in`, flushing every millisecond.
    fn ingest_on(store: &Store) -> Ingest {
        Ingest {
            store: Some(store.clone()),
            meters: store.meters(),
            released: None,
            flush_interval: Duration::from_millis(1),
            batch_interval_ms: 1000,
            next_key: 1,
            clock: ProcessingClock::starting_at(eddy_common::wall_clock_ms()),
            clock_watch: None,
            stats: Arc::default(),
            sources: vec![Arc::new(eddy_sensors::SourceStats::new("in"))],
            refused_sessions: RefusedSessions::default(),
            refusal_log: RefusalLog::default(),
        }
    }

    /// The main loop's side of a running ingest task.
    struct MainLoop {
        control: mpsc::Sender<StoreControl>,
        notices: mpsc::Receiver<IngestNotice>,
    }

    fn link() -> (StoreLink, MainLoop) {
        let (control_tx, control) = mpsc::channel(4);
        let (notices, notices_rx) = mpsc::channel(4);
        (StoreLink { control, notices }, MainLoop { control: control_tx, notices: notices_rx })
    }

    impl MainLoop {
        /// Hands the ingest task `store` again, as after a reopening, with a new engine channel.
        async fn reopen(&self, store: &Store) -> mpsc::Receiver<EngineInput> {
            let (engine, engine_rx) = mpsc::channel(16);
            let reopened = StoreControl::Reopened { store: store.clone(), engine, next_key: 1 };
            self.control.send(reopened).await.unwrap();
            engine_rx
        }
    }

    fn lines(first: u64, last: u64) -> eddy_sensors::Mark {
        eddy_sensors::Mark::Lines { session: Arc::from("s"), first, last, renumbered: false }
    }

    /// A refused batch of a numbered session holds the session's later batches back until the
    /// refused lines are resent, so the stored mark never passes a line that was not stored;
    /// a batch's marks go into the chunk holding its last reading.
    #[tokio::test]
    async fn a_refused_session_batch_holds_later_ones_back_and_marks_ride_with_the_last_reading() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, vec!["temp_c".into()], vec![]).unwrap();
        store.inject_append_failures(1);
        let ingest = ingest_on(&store);
        let (tx, rx) = ingest_channel(4);
        let (engine_tx, _engine_rx) = mpsc::channel(16);
        let (link, mut main_loop) = link();
        let task = tokio::spawn(ingest.run(rx, engine_tx, link));
        let send = |readings: Vec<Reading>, mark| {
            let tx = tx.clone();
            async move { tx.send_marked(0, readings, vec![mark]).await.unwrap().await.unwrap() }
        };
        assert!(matches!(send(vec![reading(1)], lines(1, 1)).await, Durability::Refused(_)));
        assert!(matches!(main_loop.notices.recv().await, Some(IngestNotice::StoreFailed { .. })));
        let _engine_rx = main_loop.reopen(&store).await;
        let held = send(vec![reading(2)], lines(2, 2)).await;
        assert!(
            matches!(&held, Durability::Refused(reason) if reason.contains("line 1 of session s")),
            "{held:?}"
        );
        assert_eq!(send(vec![reading(1)], lines(1, 1)).await, Durability::Durable);
        // 512 readings fill a chunk exactly: the mark is in that chunk, not in an empty one.
        let full: Vec<Reading> = (2..2 + i64::try_from(MAX_CHUNK_READINGS).unwrap()).map(reading).collect();
        assert_eq!(send(full, lines(2, 513)).await, Durability::Durable);
        drop(tx);
        task.await.unwrap().expect("ingest ends cleanly");
        let (logged, _) = store.read_log_after(0, 10).unwrap();
        let marks: Vec<(usize, Vec<MarkChange>)> =
            logged.iter().map(|chunk| (chunk.readings.len(), chunk.marks.clone())).collect();
        assert_eq!(
            marks,
            vec![
                (1, vec![(b"in\0ls".to_vec(), Some(1))]),
                (MAX_CHUNK_READINGS, vec![(b"in\0ls".to_vec(), Some(513))]),
            ]
        );
    }

    /// ENOSPC on a log write refuses that group, and the task lets go of the store: later
    /// groups are refused with the reason, without an error and without touching the disk,
    /// until the main loop hands a reopened store back; then readings are stored again and
    /// reach the new engine. The task never ends on its own.
    #[tokio::test]
    async fn a_failed_log_write_releases_the_store_until_it_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, vec!["temp_c".into()], vec![]).unwrap();
        store.inject_append_failures(1);
        let ingest = ingest_on(&store);
        let stats = ingest.stats.clone();
        let source = ingest.sources[0].clone();
        let (tx, rx) = ingest_channel(4);
        let (engine_tx, mut old_engine) = mpsc::channel(16);
        let (link, mut main_loop) = link();
        let task = tokio::spawn(ingest.run(rx, engine_tx, link));
        let first = tx.send_acked(0, vec![reading(1), reading(2)]).await.unwrap().await.unwrap();
        assert!(
            matches!(&first, Durability::Refused(reason) if reason.contains("no space left")),
            "{first:?}"
        );
        let notice = main_loop.notices.recv().await;
        assert!(
            matches!(&notice, Some(IngestNotice::StoreFailed { error }) if error.contains("no space left")),
            "{notice:?}"
        );
        // Released: refused with the reason, the old engine's channel closed.
        let second = tx.send_acked(0, vec![reading(3)]).await.unwrap().await.unwrap();
        assert!(
            matches!(&second, Durability::Refused(reason) if reason.contains("eddy opens it again by itself")),
            "{second:?}"
        );
        assert!(stats.last_refusal().is_some_and(|refusal| refusal.contains("store failed")));
        while let Some(input) = old_engine.recv().await {
            assert!(matches!(input, EngineInput::Tick { .. }), "no chunk reached the old engine");
        }
        // A Release while released is answered too.
        main_loop.control.send(StoreControl::Release { reason: "again".into() }).await.unwrap();
        assert!(matches!(main_loop.notices.recv().await, Some(IngestNotice::Released)));
        // Reopened: stored again, handed to the new engine.
        let mut engine_rx = main_loop.reopen(&store).await;
        let third = tx.send_acked(0, vec![reading(4)]).await.unwrap().await.unwrap();
        assert_eq!(third, Durability::Durable);
        assert_eq!(stats.last_refusal(), None);
        assert_eq!(store.drop_stats().refused_disk_readings.load(Ordering::Relaxed), 3);
        assert_eq!(source.snapshot().refused, 3);
        drop(tx);
        task.await.unwrap().expect("ingest ends cleanly");
        let mut chunks = Vec::new();
        while let Ok(input) = engine_rx.try_recv() {
            if let EngineInput::Chunk(chunk, _) = input {
                chunks.push(chunk.readings.iter().map(|r| r.ts_ms).collect::<Vec<_>>());
            }
        }
        assert_eq!(chunks, vec![vec![4]]);
        let (logged, _) = store.read_log_after(0, 10).unwrap();
        assert_eq!(
            logged.iter().flat_map(|c| c.readings.iter().map(|r| r.ts_ms)).collect::<Vec<_>>(),
            vec![4]
        );
    }
}
