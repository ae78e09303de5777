//! Power loss at the storage level: only readings that were never acknowledged can be lost.
//!
//! # What the test does
//! A writer plays the ingest task against a real [`Store`]: it appends chunks of readings to
//! the log, fsyncs every few chunks with [`Store::flush`] (group commit) and only then counts
//! the readings as acknowledged and hands the chunks to the real aggregator (engine, atomic
//! commits every few milliseconds, log trimming), which runs concurrently on another thread.
//! Meanwhile the data directory is copied, file by file, at two kinds of moment:
//! - right after a `flush` returned, before the writer appends anything else: the copy is what
//!   the disk is guaranteed to hold, as if the power went out then and every later write were
//!   lost (the aggregator may be mid-commit: its unflushed writes are in the copy or not);
//! - between flushes, while appends and commits are under way: the copy holds the flushed state
//!   plus some arbitrary part of the writes not yet flushed, possibly cut in the middle, as if
//!   the power went out while the kernel was writing them back.
//!
//! Each copy is then opened as the store "after the power came back": the aggregator recovers
//! from it and replays its log, and a final tick closes every window and micro-batch. The
//! results must count a prefix of the appended readings (every reading value is its index, so
//! count and sum identify the prefix), in whole chunks, at least every acknowledged reading, and
//! each reading exactly once — both in the micro-batch results and in the window results.
//!
//! # What it does not model
//! A disk or controller that acknowledges an fsync it has not done (the guarantee then rests on
//! the hardware, as for every database); reordering or loss of data that was fsynced; corrupted
//! bytes inside fsynced data (sled's checksums and eddy's undecodable-record handling, tested
//! elsewhere, cover that); and the copy is taken file by file, so the files of one image are not
//! frozen at a single instant (sled keeps nearly everything in one file, `db`). Processes are not
//! killed here: `kill -9` is the crash torture's job (`tests/e2e/crash.rs`).

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::Reading;
use tokio::sync::mpsc;

use crate::engine::{Aggregate, EngineSpec, TimeDomain, WindowSpec};
use crate::pipeline::aggregate::Aggregator;
use crate::pipeline::ingest::EngineInput;
use crate::stats::AggregateStats;
use crate::storage::{Lane, LogChunk, Store};

const READINGS_PER_CHUNK: usize = 16;
const CHUNKS: u64 = 360;
const CHUNKS_PER_FLUSH: u64 = 3;
const BATCH_INTERVAL_MS: i64 = 50;
const FIRST_INGEST_MS: i64 = 1_700_000_000_000;

fn spec() -> Arc<EngineSpec> {
    let window = WindowSpec::new(
        "w1s",
        Duration::from_secs(1),
        Duration::from_secs(1),
        TimeDomain::Event,
        Duration::ZERO,
        vec![0],
        vec![Aggregate::Count, Aggregate::Sum],
        vec![],
    )
    .expect("valid window");
    Arc::new(EngineSpec {
        device_id: "gw-pl".into(),
        field_names: vec!["v".into()],
        tag_names: vec![],
        batch_interval: Duration::from_millis(u64::try_from(BATCH_INTERVAL_MS).unwrap()),
        windows: vec![window],
        idle_timeout: Duration::from_secs(1),
        // Event time runs faster than ingest time in these chunks; the hold is not under test.
        outlier_after: None,
        outlier_confirm: EngineSpec::DEFAULT_OUTLIER_CONFIRM,
        count_by_max_values: EngineSpec::DEFAULT_COUNT_BY_MAX_VALUES,
        tag_values_listed: Vec::new(),
        forget_after: None,
    })
}

fn open(dir: &Path) -> Store {
    Store::open(dir, 8 << 20, vec!["v".into()], vec![]).expect("the store opens")
}

/// Chunk `key` (from 1): readings `(key - 1) * 16 ..`, each valued by its index, on 8 sensors,
/// event time 10 ms per reading.
fn chunk(key: u64) -> LogChunk {
    let first = (key - 1) * u64::try_from(READINGS_PER_CHUNK).unwrap();
    let readings = (first..first + u64::try_from(READINGS_PER_CHUNK).unwrap())
        .map(|idx| Reading {
            sensor: Arc::from(format!("s{}", idx % 8)),
            ts_ms: 1_600_000_000_000 + i64::try_from(idx).unwrap() * 10,
            values: smallvec::smallvec![Some(f64::from(u32::try_from(idx).unwrap()))],
            tags: smallvec::smallvec![],
        })
        .collect();
    let ingest_ms = FIRST_INGEST_MS + i64::try_from(key).unwrap() * 7;
    LogChunk {
        key,
        ingest_ms,
        batch: u64::try_from(ingest_ms / BATCH_INTERVAL_MS).unwrap(),
        readings,
        marks: Vec::new(),
    }
}

/// Copies the directory tree `from` to `to` (also used by the aggregator's recovery tests).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            // A file sled is writing may change under the copy: that is the point.
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of the data directory and what the writer knew when it was taken.
struct Image {
    dir: std::path::PathBuf,
    /// Readings acknowledged (covered by a finished flush).
    acked: u64,
    /// Readings appended (flushed or not).
    appended: u64,
    after_flush: bool,
}

/// Recovers an aggregator from `dir`, replays, closes everything; returns (count, sum) of the
/// micro-batch results and of the window results in the outbox.
async fn recover_and_close(dir: &Path) -> ((u64, f64), (u64, f64)) {
    let store = open(dir);
    // One sink that never delivers: the outbox is kept whole for the count.
    let cursors = Arc::new(vec![AtomicU64::new(0)]);
    let (mut aggregator, _) = Aggregator::recover(
        store.clone(),
        spec(),
        Duration::from_millis(5),
        cursors,
        Arc::new(AggregateStats::default()),
    )
    .expect("the engine recovers");
    let last_key = store.last_log_key().expect("log readable").unwrap_or(0);
    aggregator.replay(last_key).await.expect("the log replays");
    let (tx, rx) = mpsc::channel(4);
    tx.send(EngineInput::Tick { now_ms: FIRST_INGEST_MS + 3_600_000 }).await.unwrap();
    drop(tx);
    aggregator.run(rx).await.expect("the aggregator closes everything");
    let mut totals = [(0u64, 0f64); 2];
    for (_, entry) in store.read_lane_after(Lane::Results, 0, usize::MAX).unwrap() {
        let record: serde_json::Value = serde_json::from_slice(&entry.payload).unwrap();
        let slot = match record["type"].as_str() {
            Some("batch") => 0,
            Some("window") => 1,
            other => panic!("unexpected record {other:?}"),
        };
        totals[slot].0 += record["count"].as_u64().unwrap();
        totals[slot].1 += record["sum"].as_f64().unwrap();
    }
    (totals[0], totals[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_after_or_between_flushes_loses_only_unacknowledged_readings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let store = open(&data);
    let (aggregator, _) = Aggregator::recover(
        store.clone(),
        spec(),
        Duration::from_millis(3),
        Arc::new(vec![AtomicU64::new(0)]),
        Arc::new(AggregateStats::default()),
    )
    .unwrap();
    let (tx, rx) = mpsc::channel(64);
    let aggregating = tokio::spawn(aggregator.run(rx));

    let per_chunk = u64::try_from(READINGS_PER_CHUNK).unwrap();
    let mut images = Vec::new();
    let mut unflushed = Vec::new();
    let mut acked = 0;
    for key in 1..=CHUNKS {
        let chunk = chunk(key);
        store.append_log(std::slice::from_ref(&chunk)).unwrap();
        unflushed.push(chunk);
        let appended = key * per_chunk;
        if key % CHUNKS_PER_FLUSH == 0 {
            store.flush().await.unwrap();
            acked = appended;
            if key % 4 == 0 {
                let dir = tmp.path().join(format!("after-flush-{key}"));
                copy_dir(&data, &dir);
                images.push(Image { dir, acked, appended, after_flush: true });
            }
            // As the ingest task does: chunks go to the engine once durable.
            for chunk in unflushed.drain(..) {
                tx.send(EngineInput::Chunk(chunk, tokio::time::Instant::now())).await.unwrap();
            }
        } else if key % 7 == 1 {
            let dir = tmp.path().join(format!("between-flushes-{key}"));
            copy_dir(&data, &dir);
            images.push(Image { dir, acked, appended, after_flush: false });
        }
    }
    drop(tx);
    aggregating.await.unwrap().unwrap();
    drop(store);
    assert!(images.len() > 40, "{} images", images.len());

    for image in &images {
        let ((batch_count, batch_sum), (window_count, window_sum)) = recover_and_close(&image.dir).await;
        let what = format!(
            "{} (acked {}, appended {}, after flush: {})",
            image.dir.display(),
            image.acked,
            image.appended,
            image.after_flush
        );
        assert!(batch_count >= image.acked, "acknowledged readings lost: {batch_count} counted, {what}");
        assert!(batch_count <= image.appended, "more readings than appended: {batch_count}, {what}");
        assert_eq!(batch_count % per_chunk, 0, "a chunk was half recovered: {batch_count}, {what}");
        if image.after_flush {
            // Nothing was appended after the flush, so nothing unflushed can be in the log.
            assert_eq!(batch_count, image.acked, "{what}");
        }
        // Each of the first n readings exactly once: the values 0..n sum to n(n-1)/2.
        let prefix_sum = f64::from(u32::try_from(batch_count * batch_count.saturating_sub(1) / 2).unwrap());
        assert_eq!(batch_sum, prefix_sum, "micro-batches count a reading twice or skip one: {what}");
        assert_eq!((window_count, window_sum), (batch_count, prefix_sum), "windows: {what}");
    }
}
