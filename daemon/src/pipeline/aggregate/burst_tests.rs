//! A window-close burst that reaches the engine as several chunks of one ingest group is
//! committed once, with `result_commit_delay = "0s"`: the group's chunks already waiting join
//! the commit the first one asked for, instead of each waiting for the commits of those before
//! it; chunks of later groups do not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::Reading;
use tokio::sync::mpsc;

use crate::engine::{Aggregate, EngineSpec, TimeDomain, WindowSpec};
use crate::pipeline::aggregate::Aggregator;
use crate::pipeline::ingest::EngineInput;
use crate::stats::AggregateStats;
use crate::storage::{Lane, LogChunk, Store};

const INGEST_MS: i64 = 1_700_000_000_000;

fn spec() -> Arc<EngineSpec> {
    let window = WindowSpec::new(
        "t1s",
        Duration::from_secs(1),
        Duration::from_secs(1),
        TimeDomain::Event,
        Duration::ZERO,
        vec![0],
        vec![Aggregate::Count, Aggregate::Max],
        vec![],
    )
    .expect("valid window");
    Arc::new(EngineSpec {
        device_id: "gw-burst".into(),
        field_names: vec!["v".into()],
        tag_names: vec![],
        batch_interval: Duration::from_secs(60),
        windows: vec![window],
        idle_timeout: Duration::from_secs(3600),
        outlier_after: None,
        outlier_confirm: EngineSpec::DEFAULT_OUTLIER_CONFIRM,
        count_by_max_values: EngineSpec::DEFAULT_COUNT_BY_MAX_VALUES,
        tag_values_listed: vec![],
        forget_after: None,
    })
}

/// A chunk (log key `key`) with one reading at event time `ts_ms` from each of `sensors`, of
/// the ingest group received at `received`.
fn chunk(
    key: u64,
    sensors: std::ops::Range<usize>,
    ts_ms: i64,
    received: tokio::time::Instant,
) -> EngineInput {
    let readings = sensors
        .map(|sensor| Reading {
            sensor: Arc::from(format!("t-{sensor:03}")),
            ts_ms,
            values: smallvec::smallvec![Some(20.0)],
            tags: smallvec::smallvec![],
        })
        .collect();
    let chunk = LogChunk {
        key,
        ingest_ms: INGEST_MS + i64::try_from(key).unwrap(),
        batch: u64::try_from(INGEST_MS / 60_000).unwrap(),
        readings,
        marks: Vec::new(),
    };
    EngineInput::Chunk(chunk, received)
}

/// Runs an aggregator (`result_commit_delay` 0 s, an hour's checkpoint) over `inputs`, all
/// queued before it starts; returns its commits and the results in the outbox.
async fn run(inputs: Vec<EngineInput>) -> (u64, usize) {
    let (commits, results) = run_reading(inputs).await;
    (commits, results.len())
}

/// [`run`], returning the outbox's results themselves.
async fn run_reading(inputs: Vec<EngineInput>) -> (u64, Vec<(u64, crate::storage::OutboxEntry)>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8 << 20, vec!["v".into()], vec![]).expect("the store opens");
    let stats = Arc::new(AggregateStats::default());
    let (aggregator, _) = Aggregator::recover(
        store.clone(),
        spec(),
        Duration::from_secs(3600),
        Arc::new(vec![AtomicU64::new(0)]),
        stats.clone(),
    )
    .expect("the engine recovers");
    let aggregator = aggregator.committing_results_within(Some(Duration::ZERO));
    let (tx, rx) = mpsc::channel(16);
    for input in inputs {
        tx.send(input).await.unwrap();
    }
    drop(tx);
    aggregator.run(rx).await.expect("the aggregator runs");
    let results = store.read_lane_after(Lane::Results, 0, usize::MAX).unwrap();
    (stats.commits_total.load(Ordering::Relaxed), results)
}

#[tokio::test]
async fn a_burst_in_several_chunks_of_one_group_is_committed_once() {
    // 40 sensors open a window; then one ingest group of two chunks, each moving half of them
    // past its end.
    let (opened, closed) =
        (tokio::time::Instant::now(), tokio::time::Instant::now() + Duration::from_millis(5));
    let inputs = vec![
        chunk(1, 0..40, INGEST_MS, opened),
        chunk(2, 0..20, INGEST_MS + 5_000, closed),
        chunk(3, 20..40, INGEST_MS + 5_000, closed),
    ];
    let (commits, results) = run(inputs).await;
    // One result (count and max of the field) for each of the 40 sensors' closed windows.
    assert_eq!(results, 40, "every closed window's result is committed");
    assert_eq!(commits, 1, "the two closing chunks of one group were waiting together: one commit");
}

#[tokio::test]
async fn chunks_of_a_later_group_wait_for_the_commit() {
    // The same closes in two groups: the second group's chunk is waiting already, but joining
    // would hold the first group's results back; each group gets its commit.
    let now = tokio::time::Instant::now();
    let inputs = vec![
        chunk(1, 0..40, INGEST_MS, now),
        chunk(2, 0..20, INGEST_MS + 5_000, now + Duration::from_millis(5)),
        chunk(3, 20..40, INGEST_MS + 5_000, now + Duration::from_millis(7)),
    ];
    let (commits, results) = run(inputs).await;
    assert_eq!((commits, results), (2, 40));
}

#[tokio::test]
async fn a_closing_chunk_alone_is_committed_at_once() {
    // One closing chunk, the last input: nothing joins its commit, which comes at once (not at
    // the end of the run: the run's final commit finds nothing left and writes nothing).
    let now = tokio::time::Instant::now();
    let inputs = vec![chunk(1, 0..40, INGEST_MS, now), chunk(2, 0..20, INGEST_MS + 5_000, now)];
    let (commits, results) = run(inputs).await;
    assert_eq!((commits, results), (1, 20));
}

#[tokio::test]
async fn a_burst_of_several_outbox_pages_keeps_every_result_once_in_order() {
    // 1,000 windows close in one chunk: three full pages of 256 sealed as they fill, the rest
    // pending until the commit. Every result is stored once, numbered without a gap, in
    // sensor order (the engine's), whatever page it went into.
    let now = tokio::time::Instant::now();
    let inputs = vec![chunk(1, 0..1000, INGEST_MS, now), chunk(2, 0..1000, INGEST_MS + 5_000, now)];
    let (commits, results) = run_reading(inputs).await;
    assert_eq!((commits, results.len()), (1, 1000));
    for (n, (seq, entry)) in results.iter().enumerate() {
        assert_eq!(*seq, u64::try_from(n).unwrap() + 1, "numbered in order, no gap");
        let payload = std::str::from_utf8(&entry.payload).expect("JSON");
        assert!(
            payload.contains(&format!("\"sensor\":\"t-{n:03}\"")),
            "result {n} is sensor {n}'s: {payload}"
        );
    }
}
