//! A lazy restart against an eager one: random readings and ticks, a commit, a "restart" on two
//! copies of the store — one loading state pages lazily (by the sensors of each chunk, a few
//! more at random moments, all of them when a deadline is reached), one loading every page at
//! once — then the same further readings and ticks: the outboxes (every result and late
//! notice, with its seq, id and bytes) and the stored state must be identical.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::Reading;
use proptest::prelude::*;

use crate::engine::{Aggregate, EngineSpec, TimeDomain, WindowSpec};
use crate::pipeline::aggregate::Aggregator;
use crate::stats::AggregateStats;
use crate::storage::power_loss_tests::copy_dir;
use crate::storage::{Lane, LogChunk, StateEntry, Store, STATE_PAGES};

const BATCH_INTERVAL_MS: i64 = 1_000;
const FIRST_INGEST_MS: i64 = 1_700_000_000_000;
const N_SENSORS: usize = 60;

fn spec() -> Arc<EngineSpec> {
    let window = |name: &str, length_s: u64, slide_s: u64, time: TimeDomain, count_by: Vec<usize>| {
        WindowSpec::new(
            name,
            Duration::from_secs(length_s),
            Duration::from_secs(slide_s),
            time,
            Duration::from_secs(2),
            vec![0, 1],
            vec![Aggregate::Count, Aggregate::Sum, Aggregate::Min, Aggregate::Max],
            count_by,
        )
        .expect("valid window")
    };
    Arc::new(EngineSpec {
        device_id: "gw-lazy".into(),
        field_names: vec!["v".into(), "w".into()],
        tag_names: vec!["mode".into()],
        batch_interval: Duration::from_millis(u64::try_from(BATCH_INTERVAL_MS).unwrap()),
        windows: vec![
            window("ev10s", 10, 5, TimeDomain::Event, vec![0]),
            window("pt4s", 4, 4, TimeDomain::Processing, vec![]),
        ],
        idle_timeout: Duration::from_secs(8),
        outlier_after: Some(Duration::from_secs(30)),
        outlier_confirm: EngineSpec::DEFAULT_OUTLIER_CONFIRM,
        count_by_max_values: EngineSpec::DEFAULT_COUNT_BY_MAX_VALUES,
        tag_values_listed: vec![true],
        forget_after: Some(Duration::from_secs(20)),
    })
}

fn open(dir: &Path) -> Store {
    Store::open(dir, 8 << 20, vec!["v".into(), "w".into()], vec!["mode".into()]).expect("the store opens")
}

/// One input: a chunk of readings (sensor, event-time offset from the ingest time in ms,
/// value) ingested `after_ms` after the previous input, or a tick `after_ms` later; and how
/// many state pages a lazy aggregator loads in the background before it.
#[derive(Debug, Clone)]
enum Input {
    Chunk { after_ms: i64, readings: Vec<(usize, i64, i32)> },
    Tick { after_ms: i64 },
}

fn input_strategy() -> impl Strategy<Value = (Input, usize)> {
    let reading = (0..N_SENSORS, -15_000i64..3_000, -50i32..50);
    let chunk = (0i64..3_000, prop::collection::vec(reading, 1..12))
        .prop_map(|(after_ms, readings)| Input::Chunk { after_ms, readings });
    // Mostly short steps; now and then long enough for idle closes and forgetting.
    let tick =
        prop_oneof![4 => 0i64..2_000, 1 => 5_000i64..30_000].prop_map(|after_ms| Input::Tick { after_ms });
    let background = prop_oneof![3 => Just(0usize), 1 => 1usize..6];
    (prop_oneof![3 => chunk, 1 => tick], background)
}

/// Feeds `inputs` to `aggregator` from `*clock_ms` on (log keys after `*key`), committing
/// every few inputs as the checkpoint ticker would; `background` pages are loaded first
/// where the input says.
async fn feed(aggregator: &mut Aggregator, inputs: &[(Input, usize)], clock_ms: &mut i64, key: &mut u64) {
    for (input_idx, (input, background)) in inputs.iter().enumerate() {
        if *background > 0 {
            aggregator.load_pages(*background).unwrap();
        }
        match input {
            Input::Chunk { after_ms, readings } => {
                *clock_ms += after_ms;
                *key += 1;
                let chunk = LogChunk {
                    key: *key,
                    ingest_ms: *clock_ms,
                    batch: u64::try_from(*clock_ms / BATCH_INTERVAL_MS).unwrap(),
                    readings: readings
                        .iter()
                        .map(|(sensor, offset_ms, value)| Reading {
                            sensor: Arc::from(format!("sensor-{sensor:03}")),
                            ts_ms: *clock_ms + offset_ms,
                            values: smallvec::smallvec![
                                Some(f64::from(*value)),
                                (*value % 3 == 0).then_some(0.5)
                            ],
                            tags: smallvec::smallvec![Some(Arc::from(
                                ["heat", "cool", "off"][usize::try_from(value.rem_euclid(3)).unwrap()],
                            ))],
                        })
                        .collect(),
                    marks: Vec::new(),
                };
                aggregator.load_state_for(&chunk).unwrap();
                aggregator.apply_chunk(&chunk);
                aggregator.seal_full_pages().unwrap();
            }
            Input::Tick { after_ms } => {
                *clock_ms += after_ms;
                if aggregator.engine.needs_all_state(*clock_ms) {
                    aggregator.load_pages(usize::MAX).unwrap();
                }
                aggregator.clock_ms = aggregator.clock_ms.max(*clock_ms);
                aggregator.engine.tick(*clock_ms, &mut aggregator.outputs);
                aggregator.take_outputs();
                aggregator.seal_full_pages().unwrap();
            }
        }
        if input_idx % 5 == 4 {
            aggregator.commit().await.unwrap();
        }
    }
    aggregator.commit().await.unwrap();
}

fn recover(store: &Store, lazy: bool) -> Aggregator {
    let (aggregator, _) = Aggregator::recover_with(
        store.clone(),
        spec(),
        Duration::from_millis(100),
        // One sink that never delivers: the outbox is kept whole for the comparison.
        Arc::new(vec![AtomicU64::new(0)]),
        Arc::new(AggregateStats::default()),
        lazy,
    )
    .expect("the engine recovers");
    aggregator
}

/// The outbox and the stored state of `store`.
/// Outbox entries as compared: seq, kind, group, payload.
type OutboxEntries = Vec<(u64, String, String, Vec<u8>)>;

fn stored(store: &Store) -> (OutboxEntries, Vec<StateEntry>) {
    let outbox = store
        .read_lane_after(Lane::Results, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(seq, entry)| (seq, entry.kind, entry.group, entry.payload))
        .collect();
    let mut state = store.load_engine().unwrap().entries;
    state.sort();
    (outbox, state)
}

/// The first difference between the lazy store's contents and the eager one's, readable.
fn difference(lazy: &Store, eager: &Store) -> Option<String> {
    let ((lazy_outbox, lazy_state), (eager_outbox, eager_state)) = (stored(lazy), stored(eager));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    for idx in 0..lazy_outbox.len().max(eager_outbox.len()) {
        let (lazy_entry, eager_entry) = (lazy_outbox.get(idx), eager_outbox.get(idx));
        if lazy_entry != eager_entry {
            let show = |entry: Option<&(u64, String, String, Vec<u8>)>| {
                entry.map(|(seq, _, _, payload)| format!("{seq} {}", text(payload)))
            };
            return Some(format!(
                "outbox entry {idx} of {}/{}: lazy {:?}, eager {:?}",
                lazy_outbox.len(),
                eager_outbox.len(),
                show(lazy_entry),
                show(eager_entry)
            ));
        }
    }
    for idx in 0..lazy_state.len().max(eager_state.len()) {
        let (lazy_entry, eager_entry) = (lazy_state.get(idx), eager_state.get(idx));
        if lazy_entry != eager_entry {
            let show =
                |entry: Option<&(Vec<u8>, Vec<u8>)>| entry.map(|(key, value)| (text(key), value.clone()));
            return Some(format!(
                "state entry {idx} of {}/{}: lazy {:?}, eager {:?}",
                lazy_state.len(),
                eager_state.len(),
                show(lazy_entry),
                show(eager_entry)
            ));
        }
    }
    None
}

fn lazy_and_eager_restarts_agree(
    before: &[(Input, usize)],
    after: &[(Input, usize)],
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut clock_ms = FIRST_INGEST_MS;
        let mut key = 0;
        {
            let store = open(&data);
            let mut first = recover(&store, true);
            feed(&mut first, before, &mut clock_ms, &mut key).await;
        }
        let (lazy_dir, eager_dir) = (tmp.path().join("lazy"), tmp.path().join("eager"));
        copy_dir(&data, &lazy_dir);
        copy_dir(&data, &eager_dir);
        let (lazy_store, eager_store) = (open(&lazy_dir), open(&eager_dir));
        let mut lazy = recover(&lazy_store, true);
        let mut eager = recover(&eager_store, false);
        prop_assert!(!eager.is_loading());
        let lazily = lazy.is_loading();
        let (mut lazy_clock_ms, mut lazy_key) = (clock_ms, key);
        feed(&mut lazy, after, &mut lazy_clock_ms, &mut lazy_key).await;
        let (mut eager_clock_ms, mut eager_key) = (clock_ms, key);
        feed(&mut eager, after, &mut eager_clock_ms, &mut eager_key).await;
        prop_assert_eq!(difference(&lazy_store, &eager_store), None, "lazily: {}", lazily);
        // And once the lazy one has the rest, a further commit changes nothing of that.
        lazy.load_pages(usize::MAX).unwrap();
        prop_assert!(!lazy.is_loading());
        prop_assert_eq!(lazy.engine.stats(), eager.engine.stats());
        lazy.commit().await.unwrap();
        eager.commit().await.unwrap();
        prop_assert_eq!(difference(&lazy_store, &eager_store), None);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_lazy_restart_emits_and_stores_exactly_what_an_eager_one_does(
        before in prop::collection::vec(input_strategy(), 1..40),
        after in prop::collection::vec(input_strategy(), 1..40),
    ) {
        lazy_and_eager_restarts_agree(&before, &after)?;
    }
}

/// The lazy path is taken at all: with state in many pages and a state index, a restart
/// loads only the pages of the meta entry and of micro-batch entries.
#[test]
fn a_restart_with_a_state_index_loads_pages_lazily() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let mut first = recover(&store, true);
        let readings = (0..N_SENSORS).map(|sensor| (sensor, 0, 1)).collect();
        let inputs = [
            (Input::Chunk { after_ms: 0, readings }, 0),
            // The micro-batch closes: no batch entries are left to load at start.
            (Input::Tick { after_ms: 1_500 }, 0),
        ];
        let (mut clock_ms, mut key) = (FIRST_INGEST_MS, 0);
        feed(&mut first, &inputs, &mut clock_ms, &mut key).await;
        drop(first);
        let restarted = recover(&store, true);
        assert!(restarted.is_loading());
        assert_eq!(restarted.n_unloaded_pages, usize::from(STATE_PAGES) - 1, "only the meta page loads");
    });
}
