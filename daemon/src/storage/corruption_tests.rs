//! A store holding one undecodable record of every stored kind — log chunk, outbox page, engine
//! state page or delta, meta value — still opens, recovers and runs: each is skipped, counted and
//! reported, never a crash (a crash at start-up would be a restart loop under systemd).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::Reading;
use tokio::sync::mpsc;

use crate::engine::{Aggregate, EngineSpec, TimeDomain, WindowSpec};
use crate::pipeline::aggregate::Aggregator;
use crate::pipeline::ingest::EngineInput;
use crate::stats::AggregateStats;
use crate::storage::{Lane, LogChunk, Store, META_LOG_POS, META_NEXT_SEQ, OUTBOX, STATE, STATE_DELTA};

/// Bytes no stored format decodes: an unknown envelope variant.
const GARBAGE: &[u8] = &[0xff, 0x13, 0x00, 0x07];

fn spec() -> Arc<EngineSpec> {
    let window = WindowSpec::new(
        "w1s",
        Duration::from_secs(1),
        Duration::from_secs(1),
        TimeDomain::Event,
        Duration::ZERO,
        vec![0],
        vec![Aggregate::Count],
        vec![],
    )
    .expect("valid window");
    Arc::new(EngineSpec {
        device_id: "gw-torn".into(),
        field_names: vec!["v".into()],
        tag_names: vec![],
        batch_interval: Duration::from_millis(100),
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

/// Chunk `key`: 40 sensors, one reading each, one second of event time per chunk.
fn chunk(key: u64) -> LogChunk {
    let ts_ms = 1_600_000_000_000 + i64::try_from(key).unwrap() * 1000;
    let readings = (0..40)
        .map(|sensor| Reading {
            sensor: Arc::from(format!("s{sensor:02}")),
            ts_ms,
            values: smallvec::smallvec![Some(1.0)],
            tags: smallvec::smallvec![],
        })
        .collect();
    let ingest_ms = 1_700_000_000_000 + i64::try_from(key).unwrap() * 150;
    LogChunk { key, ingest_ms, batch: u64::try_from(ingest_ms / 100).unwrap(), readings, marks: Vec::new() }
}

/// Recovers, replays, then runs chunks `keys` (appended to the log first, as the ingest does)
/// and a last tick.
async fn run(store: &Store, keys: std::ops::RangeInclusive<u64>) {
    let (mut aggregator, _) = Aggregator::recover(
        store.clone(),
        spec(),
        Duration::from_millis(2),
        Arc::new(vec![AtomicU64::new(0)]),
        Arc::new(AggregateStats::default()),
    )
    .expect("the engine recovers");
    let last_key = store.last_log_key().unwrap().unwrap_or(0);
    aggregator.replay(last_key).await.expect("the log replays");
    let (tx, rx) = mpsc::channel(64);
    let running = tokio::spawn(aggregator.run(rx));
    for key in keys {
        let chunk = chunk(key);
        store.append_log(std::slice::from_ref(&chunk)).unwrap();
        store.flush().await.unwrap();
        tx.send(EngineInput::Chunk(chunk, tokio::time::Instant::now())).await.unwrap();
    }
    drop(tx);
    running.await.unwrap().expect("the aggregator commits");
}

fn counter(value: &AtomicU64) -> u64 {
    value.load(Ordering::Relaxed)
}

#[tokio::test]
async fn an_undecodable_record_of_every_kind_is_skipped_counted_and_eddy_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut torn_state = 0;
    {
        let store = open(dir.path());
        run(&store, 1..=5).await;
        // A torn chunk past the committed position, as a power cut mid-append leaves it.
        store.log.insert(6u64.to_be_bytes(), GARBAGE).unwrap();
        store.flush().await.unwrap();
    }
    {
        // Tear the first outbox page, one state page and one state delta (those there are) and
        // two meta values.
        let store = open(dir.path());
        let first_page = store.main.scan_prefix([OUTBOX]).keys().next().unwrap().unwrap();
        store.main.insert(first_page, GARBAGE).unwrap();
        for prefix in [STATE, STATE_DELTA] {
            if let Some(key) = store.main.scan_prefix([prefix]).keys().next() {
                store.main.insert(key.unwrap(), GARBAGE).unwrap();
                torn_state += 1;
            }
        }
        assert!(torn_state > 0, "the engine stored state");
        store.main.insert(META_NEXT_SEQ, &[0x01, 0x02, 0x03][..]).unwrap();
        store.main.insert(META_LOG_POS, &[0x09; 5][..]).unwrap();
        store.flush().await.unwrap();
    }
    let store = open(dir.path());
    let results_before = store.read_lane_after(Lane::Results, 0, usize::MAX).unwrap();
    assert_eq!(counter(&store.stats().corrupt_outbox_entries), 1, "the torn outbox page is skipped");
    let last_seq_before = store.lane_end(Lane::Results).unwrap() - 1;
    assert!(!results_before.is_empty());

    run(&store, 7..=9).await;
    let stats = store.stats();
    assert_eq!(counter(&stats.corrupt_log_chunks), 1, "the torn log chunk");
    assert_eq!(counter(&stats.corrupt_state_pages), torn_state, "the torn state delta and page");
    assert_eq!(counter(&stats.corrupt_meta), 2, "the log position and the next seq");
    // The new results continue after the outbox: nothing a sink has not seen is overwritten.
    let results_after = store.read_lane_after(Lane::Results, last_seq_before, usize::MAX).unwrap();
    assert!(!results_after.is_empty(), "the engine produced results after recovering");
    let still_there = store.read_lane_after(Lane::Results, 0, usize::MAX).unwrap();
    assert_eq!(&still_there[..results_before.len()], &results_before[..]);
    // The meta values were rewritten by the next commit: a restart finds them whole.
    drop(store);
    let store = open(dir.path());
    let snapshot = store.load_engine().unwrap();
    assert_eq!(snapshot.log_pos, 9);
    assert_eq!(counter(&store.stats().corrupt_meta), 0);
}

#[test]
fn an_undecodable_cursor_reads_as_zero_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.set_cursor("hub", 41).unwrap();
    assert_eq!(store.cursor("hub").unwrap(), 41);
    store.main.insert(crate::storage::outbox::cursor_key("hub"), &[0x01][..]).unwrap();
    // The sink gets the outbox again from its start: duplicates with the same ids, no loss.
    assert_eq!(store.cursor("hub").unwrap(), 0);
    assert_eq!(counter(&store.stats().corrupt_meta), 1);
}
