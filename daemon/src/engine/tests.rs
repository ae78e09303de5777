//! Unit tests of the engine's rules: window assignment, watermarks and lateness, idle and
//! processing-time closes, micro-batches, aggregates, count_by, state and restore.

use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::Reading;

use crate::engine::record::ResultRecord;
use crate::engine::{Aggregate, Engine, EngineSpec, Output, TimeDomain, WindowSpec};

/// Batch interval of the test specs.
const INTERVAL_MS: i64 = 1000;
/// Idle timeout of the test specs.
const IDLE_MS: i64 = 30_000;

/// One input of a test script.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// A chunk ingested at this time (batch number `ingest / INTERVAL_MS`).
    Chunk(i64, Vec<Reading>),
    Tick(i64),
}

pub(crate) fn reading(sensor: &str, ts_ms: i64, temp_c: Option<f64>) -> Reading {
    Reading { sensor: Arc::from(sensor), ts_ms, values: vec![temp_c, None], tags: vec![None] }
}

fn tagged(sensor: &str, ts_ms: i64, temp_c: f64, mode: Option<&str>) -> Reading {
    Reading {
        sensor: Arc::from(sensor),
        ts_ms,
        values: vec![Some(temp_c), None],
        tags: vec![mode.map(Arc::from)],
    }
}

pub(crate) fn window(
    name: &str,
    length_ms: u64,
    slide_ms: u64,
    lateness_ms: u64,
    time: TimeDomain,
) -> WindowSpec {
    WindowSpec::new(
        name,
        Duration::from_millis(length_ms),
        Duration::from_millis(slide_ms),
        time,
        Duration::from_millis(lateness_ms),
        vec![0],
        vec![Aggregate::Count, Aggregate::Sum],
        vec![],
    )
    .unwrap()
}

/// A spec with the default hold of future outliers.
pub(crate) fn engine_spec(windows: Vec<WindowSpec>, idle_ms: i64) -> Arc<EngineSpec> {
    engine_spec_holding(
        windows,
        idle_ms,
        Some(EngineSpec::DEFAULT_OUTLIER_AFTER),
        EngineSpec::DEFAULT_OUTLIER_CONFIRM,
    )
}

/// A spec holding readings more than `outlier_after` ahead (None: no hold).
pub(crate) fn engine_spec_holding(
    windows: Vec<WindowSpec>,
    idle_ms: i64,
    outlier_after: Option<Duration>,
    outlier_confirm: u32,
) -> Arc<EngineSpec> {
    Arc::new(EngineSpec {
        device_id: "gw".into(),
        field_names: vec!["temp_c".into(), "humidity".into()],
        tag_names: vec!["mode".into()],
        batch_interval: Duration::from_millis(u64::try_from(INTERVAL_MS).unwrap()),
        windows,
        idle_timeout: Duration::from_millis(u64::try_from(idle_ms).unwrap()),
        outlier_after,
        outlier_confirm,
    })
}

pub(crate) fn run_step(engine: &mut Engine, step: &Step, out: &mut Vec<Output>) {
    match step {
        Step::Chunk(ingest_ms, readings) => {
            let batch = u64::try_from(ingest_ms.div_euclid(INTERVAL_MS)).unwrap();
            engine.apply_chunk(*ingest_ms, batch, readings, out);
        }
        Step::Tick(now_ms) => engine.tick(*now_ms, out),
    }
}

/// A one-line summary of an output, for comparing with expected lines.
pub(crate) fn summary(output: &Output) -> String {
    match output {
        Output::Result(ResultRecord::Window(record)) => format!(
            "{} {} {} [{},{}) n={} sum={}",
            record.window,
            record.sensor,
            record.field,
            record.start_ms,
            record.end_ms,
            record.stats.count,
            record.stats.sum
        ),
        Output::Result(ResultRecord::WindowCounts(record)) => {
            let counts: Vec<String> = record.counts.iter().map(|(value, n)| format!("{value}={n}")).collect();
            format!(
                "{} {} {} [{},{}) {}",
                record.window,
                record.sensor,
                record.tag,
                record.start_ms,
                record.end_ms,
                counts.join(",")
            )
        }
        Output::Result(ResultRecord::Batch(record)) => format!(
            "batch {} {} {} [{},{}) n={} sum={}",
            record.batch,
            record.sensor,
            record.field,
            record.start_ms,
            record.end_ms,
            record.stats.count,
            record.stats.sum
        ),
        Output::Late(late) => {
            format!(
                "late {} {} ts={} wm={} #{}",
                late.window, late.sensor, late.ts_ms, late.watermark_ms, late.seq
            )
        }
    }
}

fn run(spec: Arc<EngineSpec>, steps: &[Step]) -> (Engine, Vec<String>) {
    let mut engine = Engine::new(spec);
    let mut out = Vec::new();
    for step in steps {
        run_step(&mut engine, step, &mut out);
    }
    (engine, out.iter().map(summary).collect())
}

/// Runs the steps and compares the window and late outputs (batch results left out).
fn check(windows: Vec<WindowSpec>, steps: &[Step], expected: &[&str]) {
    let (_, lines) = run(engine_spec(windows, IDLE_MS), steps);
    let lines: Vec<String> = lines.into_iter().filter(|line| !line.starts_with("batch ")).collect();
    assert_eq!(lines, expected);
}

/// Runs the steps with no windows configured and compares the batch outputs.
fn check_batches(steps: &[Step], expected: &[&str]) {
    let (_, lines) = run(engine_spec(vec![], IDLE_MS), steps);
    assert_eq!(lines, expected);
}

fn event(name: &str, length_ms: u64, slide_ms: u64, lateness_ms: u64) -> WindowSpec {
    window(name, length_ms, slide_ms, lateness_ms, TimeDomain::Event)
}

/// Far enough in processing time that every sensor is idle.
const FAR_MS: i64 = 10_000_000;

#[test]
fn reading_at_window_end_belongs_to_the_next_window() {
    check(
        vec![event("w", 10_000, 10_000, 0)],
        &[
            Step::Chunk(0, vec![reading("s", 0, Some(1.0)), reading("s", 9999, Some(2.0))]),
            Step::Chunk(0, vec![reading("s", 10_000, Some(4.0))]),
            Step::Tick(FAR_MS),
        ],
        &["w s temp_c [0,10000) n=2 sum=3", "w s temp_c [10000,20000) n=1 sum=4"],
    );
}

#[test]
fn sliding_window_reading_lands_in_length_over_slide_windows() {
    check(
        vec![event("w", 10_000, 5000, 0)],
        &[Step::Chunk(0, vec![reading("s", 7000, Some(1.0))]), Step::Tick(FAR_MS)],
        &["w s temp_c [0,10000) n=1 sum=1", "w s temp_c [5000,15000) n=1 sum=1"],
    );
}

#[test]
fn early_timestamps_fall_in_windows_with_zero_and_negative_starts() {
    check(
        vec![event("w", 10_000, 5000, 100_000)],
        &[
            Step::Chunk(0, vec![reading("s", 3000, Some(1.0)), reading("s", -1, Some(2.0))]),
            Step::Tick(FAR_MS),
        ],
        &[
            "w s temp_c [-10000,0) n=1 sum=2",
            "w s temp_c [-5000,5000) n=2 sum=3",
            "w s temp_c [0,10000) n=1 sum=1",
        ],
    );
}

#[test]
fn window_closes_when_the_watermark_reaches_its_end() {
    check(
        vec![event("w", 10_000, 10_000, 2000)],
        &[
            Step::Chunk(0, vec![reading("s", 5000, Some(1.0)), reading("s", 11_999, Some(2.0))]),
            Step::Tick(1),
        ],
        &[],
    );
    check(
        vec![event("w", 10_000, 10_000, 2000)],
        &[Step::Chunk(
            0,
            vec![
                reading("s", 5000, Some(1.0)),
                reading("s", 11_999, Some(2.0)),
                reading("s", 12_000, Some(3.0)),
            ],
        )],
        &["w s temp_c [0,10000) n=1 sum=1"],
    );
}

#[test]
fn reading_exactly_at_the_lateness_boundary_is_late() {
    check(
        vec![event("w", 10_000, 10_000, 2000)],
        &[
            Step::Chunk(0, vec![reading("s", 5000, Some(1.0)), reading("s", 12_000, Some(2.0))]),
            // Watermark 10000: window [0, 10000) is closed, [10000, 20000) is open.
            Step::Chunk(0, vec![reading("s", 9999, Some(4.0)), reading("s", 10_000, Some(8.0))]),
            Step::Tick(FAR_MS),
        ],
        &[
            "w s temp_c [0,10000) n=1 sum=1",
            "late w s ts=9999 wm=10000 #0",
            "w s temp_c [10000,20000) n=2 sum=10",
        ],
    );
}

#[test]
fn reading_late_for_two_windows_is_counted_once_and_still_fills_open_ones() {
    let steps = [
        Step::Chunk(0, vec![reading("s", 20_000, Some(1.0))]),
        Step::Chunk(0, vec![reading("s", 14_000, Some(2.0)), reading("s", 16_000, Some(4.0))]),
        Step::Tick(FAR_MS),
    ];
    check(
        vec![event("w", 10_000, 5000, 0)],
        &steps,
        &[
            "late w s ts=14000 wm=20000 #0",
            "late w s ts=16000 wm=20000 #1",
            "w s temp_c [15000,25000) n=2 sum=5",
            "w s temp_c [20000,30000) n=1 sum=1",
        ],
    );
    let (engine, _) = run(engine_spec(vec![event("w", 10_000, 5000, 0)], IDLE_MS), &steps);
    assert_eq!(engine.stats().late_readings_total, 2);
    assert_eq!(engine.stats().late_readings_by_window, vec![("w".to_owned(), 2)]);
}

#[test]
fn late_reading_is_counted_once_per_window_spec() {
    check(
        vec![event("a", 10_000, 10_000, 0), event("b", 5000, 5000, 0)],
        &[Step::Chunk(0, vec![reading("s", 20_000, Some(1.0)), reading("s", 1000, Some(2.0))])],
        &["late a s ts=1000 wm=20000 #0", "late b s ts=1000 wm=20000 #0"],
    );
}

#[test]
fn several_windows_close_in_start_order() {
    check(
        vec![event("w", 10_000, 5000, 10_000)],
        &[Step::Chunk(
            0,
            vec![
                reading("s", 12_000, Some(1.0)),
                reading("s", 3000, Some(2.0)),
                reading("s", 40_000, Some(4.0)),
            ],
        )],
        &[
            "w s temp_c [-5000,5000) n=1 sum=2",
            "w s temp_c [0,10000) n=1 sum=2",
            "w s temp_c [5000,15000) n=1 sum=1",
            "w s temp_c [10000,20000) n=1 sum=1",
        ],
    );
}

#[test]
fn watermarks_are_per_sensor() {
    check(
        vec![event("w", 10_000, 10_000, 0)],
        &[
            Step::Chunk(0, vec![reading("slow", 1000, Some(1.0)), reading("fast", 100_000, Some(2.0))]),
            Step::Chunk(0, vec![reading("slow", 2000, Some(4.0))]),
            Step::Tick(FAR_MS),
        ],
        &["w fast temp_c [100000,110000) n=1 sum=2", "w slow temp_c [0,10000) n=2 sum=5"],
    );
}

#[test]
fn idle_sensor_windows_close_after_the_idle_timeout_and_later_readings_are_late() {
    check(
        vec![event("w", 10_000, 10_000, 60_000)],
        &[
            Step::Chunk(0, vec![reading("s", 5000, Some(1.0))]),
            Step::Tick(IDLE_MS - 1),
            Step::Chunk(IDLE_MS - 1, vec![reading("other", 5000, Some(2.0))]),
            Step::Tick(IDLE_MS),
            Step::Chunk(IDLE_MS + 1000, vec![reading("s", 6000, Some(4.0)), reading("s", 10_000, Some(8.0))]),
            Step::Tick(FAR_MS),
        ],
        &[
            "w s temp_c [0,10000) n=1 sum=1",
            "late w s ts=6000 wm=10000 #0",
            "w other temp_c [0,10000) n=1 sum=2",
            "w s temp_c [10000,20000) n=1 sum=8",
        ],
    );
}

#[test]
fn idle_close_follows_chunk_ingest_time_before_the_chunk_is_applied() {
    check(
        vec![event("w", 10_000, 10_000, 60_000)],
        &[
            Step::Chunk(0, vec![reading("s", 5000, Some(1.0))]),
            Step::Chunk(IDLE_MS, vec![reading("s", 7000, Some(2.0))]),
        ],
        &["w s temp_c [0,10000) n=1 sum=1", "late w s ts=7000 wm=10000 #0"],
    );
}

#[test]
fn processing_time_windows_use_ingest_time_and_close_on_tick() {
    check(
        vec![window("p", 10_000, 5000, 0, TimeDomain::Processing)],
        &[
            Step::Chunk(12_000, vec![reading("s", 1, Some(1.0))]),
            Step::Tick(14_999),
            Step::Chunk(14_999, vec![reading("s", 99_999, Some(2.0))]),
            Step::Tick(15_000),
            Step::Tick(20_000),
        ],
        &["p s temp_c [5000,15000) n=2 sum=3", "p s temp_c [10000,20000) n=2 sum=3"],
    );
}

#[test]
fn processing_time_reading_ingested_before_the_clock_is_late_for_closed_windows() {
    check(
        vec![window("p", 10_000, 10_000, 0, TimeDomain::Processing)],
        &[
            Step::Tick(20_000),
            Step::Chunk(15_000, vec![reading("s", 1, Some(1.0))]),
            Step::Chunk(25_000, vec![reading("s", 2, Some(2.0))]),
            Step::Tick(30_000),
        ],
        &["late p s ts=1 wm=20000 #0", "p s temp_c [20000,30000) n=1 sum=2"],
    );
}

#[test]
fn micro_batch_closes_when_the_clock_reaches_its_end() {
    check_batches(
        &[
            Step::Chunk(1500, vec![reading("b", 1, Some(1.0)), reading("a", 1, Some(2.0))]),
            Step::Chunk(1999, vec![reading("a", 1, Some(4.0))]),
            Step::Tick(1999),
            Step::Tick(2000),
        ],
        &["batch 1 a temp_c [1000,2000) n=2 sum=6", "batch 1 b temp_c [1000,2000) n=1 sum=1"],
    );
}

#[test]
fn micro_batch_closes_when_a_later_batch_arrives() {
    check_batches(
        &[
            Step::Chunk(1500, vec![reading("a", 1, Some(1.0))]),
            Step::Chunk(5500, vec![reading("a", 1, Some(2.0))]),
        ],
        &["batch 1 a temp_c [1000,2000) n=1 sum=1"],
    );
}

#[test]
fn micro_batch_emits_only_present_fields() {
    let with_humidity =
        Reading { sensor: Arc::from("a"), ts_ms: 1, values: vec![None, Some(50.0)], tags: vec![None] };
    check_batches(
        &[
            Step::Chunk(0, vec![with_humidity, reading("b", 1, None), reading("a", 2, Some(1.0))]),
            Step::Tick(1000),
        ],
        &["batch 0 a temp_c [0,1000) n=1 sum=1", "batch 0 a humidity [0,1000) n=1 sum=50"],
    );
}

#[test]
fn reading_of_an_already_closed_batch_goes_to_the_open_batch_and_is_counted() {
    let spec = engine_spec(vec![], IDLE_MS);
    let mut engine = Engine::new(spec);
    let mut out = Vec::new();
    engine.tick(5000, &mut out);
    engine.apply_chunk(4999, 4, &[reading("a", 1, Some(1.0))], &mut out);
    engine.tick(6000, &mut out);
    let lines: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(lines, ["batch 5 a temp_c [5000,6000) n=1 sum=1"]);
    assert_eq!(engine.stats().batch_readings_deferred_total, 1);
}

#[test]
fn absent_values_are_not_counted_and_empty_fields_not_emitted() {
    check(
        vec![event("w", 10_000, 10_000, 0)],
        &[
            Step::Chunk(0, vec![reading("s", 1, None), reading("t", 1, None), reading("t", 2, Some(3.0))]),
            Step::Tick(FAR_MS),
        ],
        &["w t temp_c [0,10000) n=1 sum=3"],
    );
}

#[test]
fn window_record_carries_stddev_first_and_last() {
    let spec = WindowSpec::new(
        "w",
        Duration::from_secs(10),
        Duration::from_secs(10),
        TimeDomain::Event,
        Duration::ZERO,
        vec![0],
        vec![Aggregate::Last, Aggregate::First, Aggregate::Stddev, Aggregate::Mean],
        vec![],
    )
    .unwrap();
    let mut engine = Engine::new(engine_spec(vec![spec], IDLE_MS));
    let mut out = Vec::new();
    let readings = [reading("s", 300, Some(4.0)), reading("s", 100, Some(2.0)), reading("s", 300, Some(6.0))];
    engine.apply_chunk(0, 0, &readings, &mut out);
    engine.tick(FAR_MS, &mut out);
    let json: Vec<String> = out
        .iter()
        .filter_map(|output| match output {
            Output::Result(record @ ResultRecord::Window(_)) => {
                Some(String::from_utf8(record.to_json()).unwrap())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        json,
        [
            r#"{"type":"window","window":"w","device":"gw","sensor":"s","field":"temp_c","start":0,"end":10000,"mean":4.0,"stddev":2.0,"first":2.0,"last":6.0,"id":"gw/w/s/temp_c/0"}"#
        ]
    );
}

#[test]
fn count_by_counts_tag_values_per_window_and_skips_absent_tags() {
    let spec = WindowSpec::new(
        "modes",
        Duration::from_secs(10),
        Duration::from_secs(10),
        TimeDomain::Event,
        Duration::ZERO,
        vec![],
        vec![],
        vec![0],
    )
    .unwrap();
    check(
        vec![spec],
        &[
            Step::Chunk(
                0,
                vec![
                    tagged("s", 1, 1.0, Some("heat")),
                    tagged("s", 2, 1.0, Some("cool")),
                    tagged("s", 3, 1.0, None),
                    tagged("s", 4, 1.0, Some("heat")),
                    tagged("t", 4, 1.0, None),
                    tagged("s", 12_000, 1.0, Some("heat")),
                ],
            ),
            Step::Tick(FAR_MS),
        ],
        &["modes s mode [0,10000) cool=1,heat=2", "modes s mode [10000,20000) heat=1"],
    );
}

#[test]
fn stats_count_open_windows_keys_sensors_and_results() {
    let (engine, lines) = run(
        engine_spec(vec![event("w", 10_000, 5000, 0)], IDLE_MS),
        &[Step::Chunk(0, vec![reading("s", 7000, Some(1.0)), reading("t", 12_000, Some(1.0))])],
    );
    assert!(lines.is_empty());
    let stats = engine.stats();
    assert_eq!(
        (stats.open_windows, stats.open_keys, stats.sensors, stats.results_emitted_total),
        (4, 4, 2, 0)
    );
    assert_eq!(engine.next_deadline_ms(), Some(1000));
}

/// Applies `entries` to `stored` like a key/value store would.
pub(crate) fn store(
    stored: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) {
    for (key, value) in entries {
        match value {
            Some(value) => stored.insert(key, value),
            None => stored.remove(&key),
        };
    }
}

#[test]
fn restored_engine_continues_like_an_uninterrupted_one() {
    let windows = || vec![event("w", 10_000, 5000, 2000), window("p", 4000, 2000, 0, TimeDomain::Processing)];
    let steps = [
        Step::Chunk(100, vec![reading("s", 1000, Some(1.0)), reading("t", 2000, Some(2.0))]),
        Step::Chunk(1100, vec![reading("s", 9000, Some(3.0)), reading("s", 14_000, Some(4.0))]),
        Step::Tick(2500),
        Step::Chunk(3000, vec![reading("t", 500, Some(5.0)), reading("s", 4000, Some(6.0))]),
        Step::Chunk(3100, vec![reading("s", 30_000, Some(7.0))]),
        Step::Tick(FAR_MS),
    ];
    let (_, uninterrupted) = run(engine_spec(windows(), IDLE_MS), &steps);
    for split in 0..steps.len() {
        let mut engine = Engine::new(engine_spec(windows(), IDLE_MS));
        let mut out = Vec::new();
        let mut stored = std::collections::BTreeMap::new();
        for step in &steps[..split] {
            run_step(&mut engine, step, &mut out);
            store(&mut stored, engine.take_dirty());
        }
        let (mut engine, report) = Engine::restore(engine_spec(windows(), IDLE_MS), stored);
        assert!(report.skipped.is_empty(), "{report:?}");
        for step in &steps[split..] {
            run_step(&mut engine, step, &mut out);
        }
        let lines: Vec<String> = out.iter().map(summary).collect();
        assert_eq!(lines, uninterrupted, "split at {split}");
    }
}

#[test]
fn restore_skips_undecodable_entries_and_reshaped_or_removed_windows() {
    let mut engine = Engine::new(engine_spec(
        vec![event("keep", 10_000, 10_000, 0), event("gone", 10_000, 10_000, 0)],
        IDLE_MS,
    ));
    let mut out = Vec::new();
    engine.apply_chunk(0, 0, &[reading("s", 1000, Some(1.0))], &mut out);
    let mut stored = std::collections::BTreeMap::new();
    store(&mut stored, engine.take_dirty());
    stored.insert(b"wxgarbage".to_vec(), vec![1, 2, 3]);
    stored.insert(b"e".to_vec(), vec![9, 9]);

    let reshaped = vec![event("keep", 20_000, 10_000, 0)];
    let (mut restored, report) = Engine::restore(engine_spec(reshaped, IDLE_MS), stored.clone());
    let mut reasons: Vec<String> = report.skipped.iter().map(|(_, reason)| reason.clone()).collect();
    reasons.sort();
    assert_eq!(report.loaded, 2, "the micro-batch entry and the sensor's clock");
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].starts_with("undecodable"), "{reasons:?}");
    assert_eq!(reasons[1], "window gone is no longer configured");
    assert!(reasons[2].starts_with("window keep changed shape"), "{reasons:?}");
    assert_eq!(reasons[3], "window key too short");
    // The skipped entries are deleted with the next state change.
    let deletes: Vec<Vec<u8>> =
        restored.take_dirty().into_iter().filter(|(_, value)| value.is_none()).map(|(key, _)| key).collect();
    assert_eq!(deletes.len(), 4);

    let (_, report) = Engine::restore(
        engine_spec(vec![event("keep", 10_000, 10_000, 5000), event("gone", 10_000, 10_000, 0)], IDLE_MS),
        stored,
    );
    assert_eq!(report.loaded, 4, "a changed lateness keeps the state: {report:?}");
}

#[test]
fn take_dirty_puts_changed_state_and_deletes_closed_batches() {
    let mut engine = Engine::new(engine_spec(vec![event("w", 10_000, 10_000, 0)], IDLE_MS));
    let mut out = Vec::new();
    assert!(engine.take_dirty().is_empty());
    engine.apply_chunk(0, 0, &[reading("s", 1000, Some(1.0))], &mut out);
    let keys: Vec<(Vec<u8>, bool)> =
        engine.take_dirty().into_iter().map(|(key, value)| (key, value.is_some())).collect();
    assert_eq!(
        keys,
        [(b"bs".to_vec(), true), (b"cs".to_vec(), true), (b"e".to_vec(), true), (b"w\x01ws".to_vec(), true)]
    );
    assert!(engine.take_dirty().is_empty());
    engine.tick(1000, &mut out);
    let keys: Vec<(Vec<u8>, bool)> =
        engine.take_dirty().into_iter().map(|(key, value)| (key, value.is_some())).collect();
    assert_eq!(keys, [(b"bs".to_vec(), false), (b"e".to_vec(), true)]);
}

#[test]
fn the_clock_moving_alone_is_no_change_to_store_but_rides_along_with_the_next() {
    let mut engine = Engine::new(engine_spec(vec![event("w", 10_000, 10_000, 0)], IDLE_MS));
    let mut out = Vec::new();
    engine.apply_chunk(0, 0, &[reading("s", 1000, Some(1.0))], &mut out);
    assert!(engine.has_changes());
    engine.take_dirty();
    engine.tick(500, &mut out);
    assert!(!engine.has_changes(), "an idle tick that emits nothing is not worth a write");
    // The batch of 0 closes at 1000: something was emitted, so the state changed.
    engine.tick(1000, &mut out);
    assert!(engine.has_changes());
    engine.take_dirty();
    // Idle ticks short of the idle timeout: nothing emitted, nothing to store...
    for now_ms in (2000..IDLE_MS).step_by(1000) {
        engine.tick(now_ms, &mut out);
        assert!(!engine.has_changes(), "tick at {now_ms}");
    }
    // ...but whatever is taken next carries the clock the engine reached.
    let keys: Vec<Vec<u8>> = engine.take_dirty().into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, [b"e".to_vec()]);
    // The idle timeout closes the sensor's window: a change.
    engine.tick(1000 + IDLE_MS, &mut out);
    assert!(engine.has_changes());
}

#[test]
fn restore_refuses_window_state_that_lacks_parts_new_aggregates_read() {
    let with = |aggregates: Vec<Aggregate>| {
        WindowSpec::new(
            "w",
            Duration::from_millis(10_000),
            Duration::from_millis(10_000),
            TimeDomain::Event,
            Duration::ZERO,
            vec![0],
            aggregates,
            vec![],
        )
        .unwrap()
    };
    let mut engine = Engine::new(engine_spec(vec![with(vec![Aggregate::Count, Aggregate::Sum])], IDLE_MS));
    let mut out = Vec::new();
    engine.apply_chunk(0, 0, &[reading("s", 1000, Some(1.0)), reading("s", 2000, Some(3.0))], &mut out);
    let mut stored = std::collections::BTreeMap::new();
    store(&mut stored, engine.take_dirty());

    // Fewer aggregates than stored: the state resumes.
    let (_, report) =
        Engine::restore(engine_spec(vec![with(vec![Aggregate::Mean])], IDLE_MS), stored.clone());
    assert!(report.skipped.is_empty(), "{report:?}");
    // A new aggregate whose parts were not stored: that state is skipped, not resumed wrongly.
    let (_, report) =
        Engine::restore(engine_spec(vec![with(vec![Aggregate::Sum, Aggregate::Stddev])], IDLE_MS), stored);
    let reasons: Vec<&str> = report.skipped.iter().map(|(_, reason)| reason.as_str()).collect();
    assert_eq!(reasons, ["stored state has no stddev (aggregates changed since)"]);
}
