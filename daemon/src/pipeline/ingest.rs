//! The ingest task: group commit. Readings from every source are appended to the log, flushed
//! once per `flush_interval`, acknowledged, and only then handed to the engine.

use std::time::Duration;

use eddy_common::wall_clock_ms;
use eddy_sensors::{Durability, IngestBatch, IngestReceiver, Reading};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, sleep_until, Instant, MissedTickBehavior};

use crate::pipeline::marks::{change_of, RefusedSessions};
use crate::storage::{Appended, LogChunk, MarkChange, Store, StoreError, MAX_CHUNK_READINGS};

/// What the engine task receives, in log order.
#[derive(Debug)]
pub(crate) enum EngineInput {
    /// A durable chunk of readings.
    Chunk(LogChunk),
    /// Processing time moved on with no new readings.
    Tick {
        /// Gateway time, ms since the epoch; never less than any chunk's `ingest_ms` before it.
        now_ms: i64,
    },
}

/// Groups in a row whose write failed before the ingest task gives up and stops the daemon:
/// sled 0.34 does not recover from a failed fsync in-process, a restart (systemd) does.
const MAX_FAILED_GROUPS: u32 = 3;

/// Most readings collected into one flush: bounds memory and ack latency under load.
const MAX_GROUP_READINGS: usize = 16 * 1024;

/// How often the engine hears the processing clock when no readings arrive, so micro-batches
/// and processing-time windows close on time.
const TICK_EVERY: Duration = Duration::from_millis(200);

/// The gateway's processing clock: wall time in ms, never going backwards (an NTP step back
/// must not reopen closed batches).
#[derive(Debug)]
pub(crate) struct ProcessingClock {
    last_ms: i64,
}

impl ProcessingClock {
    /// A clock that never reads earlier than `floor_ms` (the last ingest time in the log).
    pub(crate) fn new(floor_ms: i64) -> ProcessingClock {
        ProcessingClock { last_ms: floor_ms }
    }

    /// The current time, ms since the epoch.
    pub(crate) fn now_ms(&mut self) -> i64 {
        self.last_ms = self.last_ms.max(wall_clock_ms());
        self.last_ms
    }
}

/// The group-commit component.
#[derive(Debug)]
pub(crate) struct Ingest {
    /// The store.
    pub(crate) store: Store,
    /// Group-commit interval.
    pub(crate) flush_interval: Duration,
    /// Micro-batch interval in ms.
    pub(crate) batch_interval_ms: u64,
    /// Key of the next chunk.
    pub(crate) next_key: u64,
    /// The processing clock.
    pub(crate) clock: ProcessingClock,
    /// Groups in a row whose write failed.
    pub(crate) failed_groups: u32,
    /// Latencies and the store's last answer, for `/metrics` and `/health`.
    pub(crate) stats: std::sync::Arc<crate::stats::IngestStats>,
    /// Each source's counters by index: its name is the namespace of its marks in the store,
    /// and the readings the store refuses are counted for it.
    pub(crate) sources: Vec<std::sync::Arc<eddy_sensors::SourceStats>>,
    /// Numbered sessions held back after a refusal (see [`RefusedSessions`]).
    pub(crate) refused_sessions: RefusedSessions,
}

impl Ingest {
    /// Runs until every source has dropped its sender, then returns after the last group is
    /// durable and handed to the engine. A group the disk budget does not admit, or whose write
    /// fails (ENOSPC), is refused (its senders keep the readings) and ingest goes on; only
    /// [`MAX_FAILED_GROUPS`] failed writes in a row stop the daemon.
    pub(crate) async fn run(
        mut self,
        mut rx: IngestReceiver,
        engine: mpsc::Sender<EngineInput>,
    ) -> Result<(), StoreError> {
        let mut ticker = interval(TICK_EVERY);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut committed_since_tick = false;
        loop {
            tokio::select! {
                first = rx.recv() => {
                    let Some(first) = first else { break };
                    let received = Instant::now();
                    let (group, closed) = self.gather(first, &mut rx).await;
                    self.commit_group(group, received, &engine).await?;
                    committed_since_tick = true;
                    if closed {
                        break;
                    }
                }
                _ = ticker.tick() => {
                    if !committed_since_tick {
                        let now_ms = self.clock.now_ms();
                        if engine.send(EngineInput::Tick { now_ms }).await.is_err() {
                            break;
                        }
                    }
                    committed_since_tick = false;
                }
            }
        }
        tracing::info!("Ingest drained: every source has stopped.");
        Ok(())
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

    async fn commit_group(
        &mut self,
        group: Vec<IngestBatch>,
        received: Instant,
        engine: &mpsc::Sender<EngineInput>,
    ) -> Result<(), StoreError> {
        let ingest_ms = self.clock.now_ms();
        let batch = u64::try_from(ingest_ms).unwrap_or(0) / self.batch_interval_ms;
        let mut acks: Vec<oneshot::Sender<Durability>> = Vec::new();
        let mut chunks: Vec<LogChunk> = Vec::new();
        let mut current: Vec<Reading> = Vec::new();
        let mut current_marks: Vec<MarkChange> = Vec::new();
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
                    chunks.push(self.chunk(ingest_ms, batch, std::mem::take(&mut current), marks));
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
        let stored = if chunks.is_empty() {
            Ok(Appended::Stored)
        } else {
            match self.store.append_log(&chunks) {
                Ok(Appended::Stored) => self.store.flush().await.map(|()| Appended::Stored),
                other => other,
            }
        };
        self.stats.record_write(&stored, write_started.elapsed());
        let refused = match stored {
            Ok(Appended::Stored) => {
                self.failed_groups = 0;
                None
            }
            Ok(Appended::Refused(reason)) => {
                tracing::warn!(readings = n_readings, %reason, "Readings refused: the store is full.");
                Some(reason)
            }
            Err(error) => {
                self.failed_groups += 1;
                let refused = u64::try_from(n_readings).unwrap_or(u64::MAX);
                self.store
                    .drop_stats()
                    .refused_disk_readings
                    .fetch_add(refused, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(readings = n_readings, error = %error, failed_in_a_row = self.failed_groups, "Readings refused: the store write failed.");
                if self.failed_groups >= MAX_FAILED_GROUPS {
                    for (source, n_readings) in group_readings {
                        self.count_refused(source, n_readings);
                    }
                    refuse_all(acks, &format!("store failed: {error}"));
                    return Err(error);
                }
                Some(format!("store failed: {error}"))
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
            return Ok(());
        }
        for ack in acks {
            // A sender that went away (connection closed) no longer needs the answer.
            let _ = ack.send(Durability::Durable);
        }
        self.stats.ingest_latency.observe(received.elapsed());
        for chunk in chunks {
            if engine.send(EngineInput::Chunk(chunk)).await.is_err() {
                // The engine stopped (it failed); the chunk is durable and will be replayed.
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
        Reading { sensor: Arc::from("s"), ts_ms, values: vec![Some(20.0)], tags: vec![] }
    }

    /// An ingest task on `store` with one source, `in`, flushing every millisecond.
    fn ingest_on(store: &Store) -> Ingest {
        Ingest {
            store: store.clone(),
            flush_interval: Duration::from_millis(1),
            batch_interval_ms: 1000,
            next_key: 1,
            clock: ProcessingClock::new(0),
            failed_groups: 0,
            stats: Arc::default(),
            sources: vec![Arc::new(eddy_sensors::SourceStats::new("in"))],
            refused_sessions: RefusedSessions::default(),
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
        let task = tokio::spawn(ingest.run(rx, engine_tx));
        let send = |readings: Vec<Reading>, mark| {
            let tx = tx.clone();
            async move { tx.send_marked(0, readings, vec![mark]).await.unwrap().await.unwrap() }
        };
        assert!(matches!(send(vec![reading(1)], lines(1, 1)).await, Durability::Refused(_)));
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

    /// ENOSPC on a log write refuses that group only; eddy keeps running and stores the next.
    #[tokio::test]
    async fn a_failed_log_write_refuses_its_group_and_ingest_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, vec!["temp_c".into()], vec![]).unwrap();
        store.inject_append_failures(1);
        let ingest = ingest_on(&store);
        let (tx, rx) = ingest_channel(4);
        let (engine_tx, mut engine_rx) = mpsc::channel(16);
        let task = tokio::spawn(ingest.run(rx, engine_tx));
        let first = tx.send_acked(0, vec![reading(1), reading(2)]).await.unwrap().await.unwrap();
        assert!(
            matches!(&first, Durability::Refused(reason) if reason.contains("no space left")),
            "{first:?}"
        );
        let second = tx.send_acked(0, vec![reading(3)]).await.unwrap().await.unwrap();
        assert_eq!(second, Durability::Durable);
        assert_eq!(store.drop_stats().refused_disk_readings.load(Ordering::Relaxed), 2);
        drop(tx);
        task.await.unwrap().expect("ingest ends cleanly");
        // Only the stored group reached the engine and the log.
        let mut chunks = Vec::new();
        while let Ok(input) = engine_rx.try_recv() {
            if let EngineInput::Chunk(chunk) = input {
                chunks.push(chunk.readings.iter().map(|r| r.ts_ms).collect::<Vec<_>>());
            }
        }
        assert_eq!(chunks, vec![vec![3]]);
        let (logged, _) = store.read_log_after(0, 10).unwrap();
        assert_eq!(
            logged.iter().flat_map(|c| c.readings.iter().map(|r| r.ts_ms)).collect::<Vec<_>>(),
            vec![3]
        );
    }
}
