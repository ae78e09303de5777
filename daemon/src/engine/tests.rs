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
    Reading {
        sensor: Arc::from(sensor),
        ts_ms,
        values: smallvec::smallvec![temp_c, None],
        tags: smallvec::smallvec![None],
    }
}

fn tagged(sensor: &str, ts_ms: i64, temp_c: f64, mode: Option<&str>) -> Reading {
    Reading {
        sensor: Arc::from(sensor),
        ts_ms,
        values: smallvec::smallvec![Some(temp_c), None],
        tags: smallvec::smallvec![mode.map(Arc::from)],
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
        count_by_max_values: EngineSpec::DEFAULT_COUNT_BY_MAX_VALUES,
        tag_values_listed: Vec::new(),
        forget_after: None,
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
            let mut counts: Vec<String> =
                record.counts.iter().map(|(value, n)| format!("{value}={n}")).collect();
            if record.other > 0 {
                counts.push(format!("(other)={}", record.other));
            }
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
    let with_humidity = Reading {
        sensor: Arc::from("a"),
        ts_ms: 1,
        values: smallvec::smallvec![None, Some(50.0)],
        tags: smallvec::smallvec![None],
    };
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

/// A 10 s tumbling event-time window named `name` that counts by the first tag, no fields.
pub(crate) fn count_by_window(name: &str) -> WindowSpec {
    WindowSpec::new(
        name,
        Duration::from_secs(10),
        Duration::from_secs(10),
        TimeDomain::Event,
        Duration::ZERO,
        vec![],
        vec![],
        vec![0],
    )
    .unwrap()
}

fn capped_spec(count_by_max_values: usize, tag_values_listed: bool) -> Arc<EngineSpec> {
    let mut spec = (*engine_spec(vec![count_by_window("modes")], IDLE_MS)).clone();
    spec.count_by_max_values = count_by_max_values;
    spec.tag_values_listed = vec![tag_values_listed];
    Arc::new(spec)
}

/// Issue #14: invented tag values fill at most the cap per window; the rest is `other`.
fn capped_steps() -> Vec<Step> {
    let modes = ["heat", "cool", "fan", "heat", "dry", "auto", "cool"];
    let readings = modes
        .iter()
        .enumerate()
        .map(|(n, mode)| tagged("s", i64::try_from(n).unwrap(), 1.0, Some(mode)))
        .collect();
    vec![
        Step::Chunk(0, readings),
        Step::Chunk(100, vec![tagged("s", 8, 1.0, Some("eco")), tagged("s", 9, 1.0, Some("heat"))]),
        Step::Chunk(200, vec![tagged("s", 12_000, 1.0, Some("eco")), tagged("s", 12_001, 1.0, Some("x"))]),
        Step::Tick(FAR_MS),
    ]
}

#[test]
fn count_by_keeps_at_most_its_cap_of_values_per_window_and_counts_the_rest_as_other_issue_14() {
    let (engine, lines) = run(capped_spec(2, false), &capped_steps());
    let lines: Vec<String> = lines.into_iter().filter(|line| !line.starts_with("batch ")).collect();
    assert_eq!(
        lines,
        [
            // The first two values to arrive keep their counts; fan, dry, auto, eco go to other.
            "modes s mode [0,10000) cool=2,heat=3,(other)=4",
            // Each window has its own room.
            "modes s mode [10000,20000) eco=1,x=1",
        ]
    );
    assert_eq!(engine.stats().count_by_overflow_total, 4);
}

#[test]
fn count_by_of_a_tag_with_listed_values_has_no_cap() {
    let (engine, lines) = run(capped_spec(2, true), &capped_steps());
    assert!(
        lines.contains(&"modes s mode [0,10000) auto=1,cool=2,dry=1,eco=1,fan=1,heat=3".to_owned()),
        "{lines:?}"
    );
    assert_eq!(engine.stats().count_by_overflow_total, 0);
}

#[test]
fn stored_counts_out_of_order_restore_sorted_and_a_duplicate_counts_once() {
    use crate::engine::state::{self, Name, OpenWindowV3, WindowEnvelope, WindowHeadV3, WindowSensorV3};
    // eddy writes counts in value order, each value once; a store written otherwise (by hand,
    // by a future version's bug) still restores to what a map of the same entries held: in
    // order, the last count of a value kept.
    let name = |text: &'static str| Name::borrowed(text);
    let entry = WindowEnvelope::V3(WindowSensorV3 {
        head: WindowHeadV3 {
            length_ms: 10_000,
            slide_ms: 10_000,
            processing_time: false,
            max_ts_ms: Some(5),
            floor_ms: None,
            last_activity_ms: Some(0),
            late_seq: 0,
        },
        open: vec![OpenWindowV3 {
            start_ms: 0,
            fields: vec![],
            counts: vec![(name("mode"), vec![(name("heat"), 2), (name("cool"), 1), (name("heat"), 5)])],
            other: vec![],
        }],
    });
    let spec = engine_spec(vec![count_by_window("modes")], IDLE_MS);
    let stored = vec![(state::window_key("modes", "s"), state::encode(&entry))];
    let (mut engine, report) = Engine::restore(spec, stored);
    assert!(report.skipped.is_empty(), "{report:?}");
    let mut out = Vec::new();
    // A new value after the restore goes in its place among them.
    run_step(&mut engine, &Step::Chunk(0, vec![tagged("s", 6, 1.0, Some("dry"))]), &mut out);
    run_step(&mut engine, &Step::Tick(FAR_MS), &mut out);
    let lines: Vec<String> = out.iter().map(summary).filter(|line| !line.starts_with("batch ")).collect();
    assert_eq!(lines, ["modes s mode [0,10000) cool=1,dry=1,heat=5"]);
}

#[test]
fn count_by_other_buckets_and_their_counter_survive_a_restore_at_any_split() {
    let steps = capped_steps();
    let (uninterrupted_engine, uninterrupted) = run(capped_spec(2, false), &steps);
    for split in 0..steps.len() {
        let mut engine = Engine::new(capped_spec(2, false));
        let mut out = Vec::new();
        let mut stored = std::collections::BTreeMap::new();
        for step in &steps[..split] {
            run_step(&mut engine, step, &mut out);
            store(&mut stored, engine.take_dirty());
        }
        let (mut engine, report) = Engine::restore(capped_spec(2, false), stored);
        assert!(report.skipped.is_empty(), "{report:?}");
        for step in &steps[split..] {
            run_step(&mut engine, step, &mut out);
        }
        let lines: Vec<String> = out.iter().map(summary).collect();
        assert_eq!(lines, uninterrupted, "split at {split}");
        assert_eq!(
            engine.stats().count_by_overflow_total,
            uninterrupted_engine.stats().count_by_overflow_total
        );
    }
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

/// Forget after (issue #14), in the forgetting tests.
const FORGET_MS: i64 = 60_000;

fn forgetting_spec(windows: Vec<WindowSpec>) -> Arc<EngineSpec> {
    let mut spec = (*engine_spec(windows, IDLE_MS)).clone();
    spec.forget_after = Some(Duration::from_millis(u64::try_from(FORGET_MS).unwrap()));
    Arc::new(spec)
}

fn forgetting_windows() -> Vec<WindowSpec> {
    vec![event("w", 10_000, 5000, 0), window("p", 4000, 2000, 0, TimeDomain::Processing)]
}

/// Junk sensors that go silent, a sensor that stays, and one that comes back after it was
/// forgotten (with a reading older than its last emitted window, and a new one).
fn forgetting_steps(with_ticks: bool) -> Vec<Step> {
    let junk: Vec<Reading> = (0..20).map(|n| reading(&format!("junk-{n:02}"), 1000 + n, Some(1.0))).collect();
    let mut steps = vec![
        Step::Chunk(100, junk),
        Step::Chunk(200, vec![reading("back", 3000, Some(2.0)), reading("stay", 3000, Some(3.0))]),
        Step::Chunk(30_000, vec![reading("stay", 30_000, Some(4.0))]),
    ];
    if with_ticks {
        steps.push(Step::Tick(60_150));
        steps.push(Step::Tick(60_300));
    }
    steps.extend([
        Step::Chunk(70_000, vec![reading("stay", 70_000, Some(5.0))]),
        Step::Chunk(80_000, vec![reading("back", 2000, Some(6.0)), reading("back", 80_000, Some(7.0))]),
        Step::Tick(FAR_MS),
    ]);
    steps
}

#[test]
fn silent_sensors_are_forgotten_after_their_windows_closed_and_their_state_is_deleted_issue_14() {
    let mut engine = Engine::new(forgetting_spec(forgetting_windows()));
    let mut out = Vec::new();
    let mut stored = std::collections::BTreeMap::new();
    for step in &forgetting_steps(true)[..4] {
        run_step(&mut engine, step, &mut out);
        store(&mut stored, engine.take_dirty());
    }
    // At 60,150 the junk sensors and `back` (last seen at 100 and 200) are forgotten; their
    // windows were emitted by the idle close at 30,100 and 30,200 first.
    let lines: Vec<String> = out.iter().map(summary).collect();
    assert!(lines.contains(&"w junk-00 temp_c [0,10000) n=1 sum=1".to_owned()), "{lines:?}");
    let forgotten = engine.take_forgotten();
    assert_eq!(forgotten.len(), 20);
    assert!(forgotten.iter().all(|name| name.starts_with("junk-")));
    let stats = engine.stats();
    assert_eq!((stats.sensors, stats.sensors_forgotten_total), (2, 20));
    // At 60,300 `back` goes too; only `stay`'s entries are left in the store.
    run_step(&mut engine, &Step::Tick(60_300), &mut out);
    store(&mut stored, engine.take_dirty());
    assert_eq!(engine.take_forgotten(), vec![Arc::<str>::from("back")]);
    // Of the others, only their tombstones are left.
    let sensors_in_store: std::collections::BTreeSet<String> = stored
        .keys()
        .filter(|key| key.first() != Some(&b'e') && key.first() != Some(&b't'))
        .map(|key| String::from_utf8_lossy(key).to_string())
        .filter(|key| !key.contains("stay"))
        .collect();
    assert!(sensors_in_store.is_empty(), "{sensors_in_store:?}");
    assert_eq!(stored.keys().filter(|key| key.first() == Some(&b't')).count(), 21);
    assert_eq!((engine.stats().sensors, engine.stats().tombstones), (1, 21));
}

#[test]
fn forgetting_does_not_depend_on_ticks_and_survives_a_restore_at_any_split_issue_14() {
    let (_, without_ticks) = run(forgetting_spec(forgetting_windows()), &forgetting_steps(false));
    let steps = forgetting_steps(true);
    let (_, uninterrupted) = run(forgetting_spec(forgetting_windows()), &steps);
    // A replay sees no ticks: the chunks alone forget the same sensors at the same point.
    assert_eq!(without_ticks, uninterrupted);
    for split in 0..steps.len() {
        let mut engine = Engine::new(forgetting_spec(forgetting_windows()));
        let mut out = Vec::new();
        let mut stored = std::collections::BTreeMap::new();
        for step in &steps[..split] {
            run_step(&mut engine, step, &mut out);
            store(&mut stored, engine.take_dirty());
        }
        let (mut engine, report) = Engine::restore(forgetting_spec(forgetting_windows()), stored);
        assert!(report.skipped.is_empty(), "{report:?}");
        for step in &steps[split..] {
            run_step(&mut engine, step, &mut out);
        }
        let lines: Vec<String> = out.iter().map(summary).collect();
        assert_eq!(lines, uninterrupted, "split at {split}");
    }
}

#[test]
fn a_forgotten_sensor_that_comes_back_keeps_its_watermark_from_its_tombstone() {
    let (engine, lines) = run(forgetting_spec(forgetting_windows()), &forgetting_steps(true));
    let back: Vec<&String> =
        lines.iter().filter(|line| line.starts_with("w back ") || line.starts_with("late w back")).collect();
    // Its window [0, 10000) was emitted at its idle close; forgotten and back, the old reading
    // at 2000 is late for it, as if it had never been forgotten.
    assert_eq!(
        back,
        [
            "w back temp_c [-5000,5000) n=1 sum=2",
            "w back temp_c [0,10000) n=1 sum=2",
            "late w back ts=2000 wm=10000 #0",
            "w back temp_c [75000,85000) n=1 sum=7",
            "w back temp_c [80000,90000) n=1 sum=7",
        ]
    );
    // Its tombstone was used up; the junk ones expired another forget_after later.
    assert_eq!(engine.stats().tombstones, 0);
}

#[test]
fn a_sensor_back_after_its_tombstone_expired_starts_afresh() {
    let steps = [
        Step::Chunk(100, vec![reading("back", 3000, Some(2.0))]),
        // Forgotten at 60,100, its tombstone kept until 120,100.
        Step::Tick(130_000),
        Step::Chunk(140_000, vec![reading("back", 2000, Some(6.0))]),
        Step::Tick(FAR_MS),
    ];
    let (_, lines) = run(forgetting_spec(vec![event("w", 10_000, 10_000, 0)]), &steps);
    let lines: Vec<String> = lines.into_iter().filter(|line| !line.starts_with("batch ")).collect();
    // Documented: with no watermark left, the window is emitted a second time, same id.
    assert_eq!(lines, ["w back temp_c [0,10000) n=1 sum=2", "w back temp_c [0,10000) n=1 sum=6"]);
}

#[test]
fn tombstones_are_bounded_the_oldest_forgotten_going_first() {
    let many: Vec<Reading> = (0..crate::engine::MAX_TOMBSTONES + 10)
        .map(|n| reading(&format!("junk-{n:05}"), 1000, Some(1.0)))
        .collect();
    let steps = [
        Step::Chunk(100, vec![reading("real", 1000, Some(1.0))]),
        Step::Chunk(200, many),
        Step::Tick(60_250),
    ];
    let (mut engine, _) = run(forgetting_spec(vec![event("w", 10_000, 10_000, 0)]), &steps);
    assert_eq!(engine.stats().tombstones, crate::engine::MAX_TOMBSTONES);
    // `real` (forgotten first) and the first junk ids by name were pushed out.
    let entries = engine.take_dirty();
    let tombstone = |name: &str| {
        let key = crate::engine::state::tombstone_key(name);
        entries.iter().any(|(entry_key, value)| *entry_key == key && value.is_some())
    };
    assert!(!tombstone("real") && !tombstone("junk-00000") && !tombstone("junk-00009"));
    assert!(tombstone("junk-00010") && tombstone("junk-04105"));
}

#[test]
fn a_sensor_forgotten_and_back_before_the_commit_keeps_its_new_state_in_the_store() {
    let mut engine = Engine::new(forgetting_spec(forgetting_windows()));
    let mut out = Vec::new();
    let mut stored = std::collections::BTreeMap::new();
    run_step(&mut engine, &Step::Chunk(100, vec![reading("s", 1000, Some(1.0))]), &mut out);
    store(&mut stored, engine.take_dirty());
    // One chunk forgets `s` (its advance) and then brings it back.
    run_step(&mut engine, &Step::Chunk(70_000, vec![reading("s", 70_000, Some(2.0))]), &mut out);
    assert_eq!(engine.take_forgotten(), vec![Arc::<str>::from("s")]);
    store(&mut stored, engine.take_dirty());
    let (restored, report) = Engine::restore(forgetting_spec(forgetting_windows()), stored);
    assert!(report.skipped.is_empty(), "{report:?}");
    assert_eq!((restored.stats().sensors, restored.stats().open_windows), (1, engine.stats().open_windows));
}

/// Restoring in parts keeps the sensor table in id order whatever the sizes of the parts: a few
/// names into many, many into few and into none.
#[test]
fn the_sensor_table_stays_in_order_across_restore_parts_of_any_size() {
    let mut table = crate::engine::SensorTable::default();
    let mut all: Vec<String> = Vec::new();
    // Pseudo-random ids (a fixed LCG), so that each part interleaves with the table.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next_name = || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        format!("t-{:016x}", state >> 7)
    };
    for part in [5_000, 3, 1, 40, 700, 2, 9_000, 64, 1] {
        let sorted_len = table.sorted.len();
        for _ in 0..part {
            let name = next_name();
            table.intern_unsorted(&name);
            all.push(name);
        }
        // A known name again changes nothing.
        table.intern_unsorted(&all[0]);
        table.sort(sorted_len);
        all.sort();
        let names: Vec<&str> = table.sorted.iter().map(|&sensor| &*table.names[sensor]).collect();
        assert_eq!(names, all, "after a part of {part}");
    }
}

#[test]
fn every_state_entry_of_a_sensor_lies_in_one_store_page() {
    // A restart loads the page of a sensor's first reading: one page, not one per key.
    let engine = Engine::new(engine_spec(
        vec![
            event("env_10m", 600_000, 300_000, 0),
            event("five", 5_000, 5_000, 1_000),
            count_by_window("modes"),
        ],
        60_000,
    ));
    let mut pages_used = std::collections::BTreeSet::new();
    for idx in 0..1_000 {
        let sensor = format!("t-{idx:05}");
        let keys = engine.state_keys_of(&sensor);
        assert_eq!(keys.len(), 6, "micro-batch, clock, tombstone and one per window");
        // The page a lazy restart loads for the sensor's first reading.
        let page = crate::storage::state_page_of_sensor(&sensor);
        for key in &keys {
            assert_eq!(crate::storage::state_page_of(key), page, "{sensor}: {key:?}");
        }
        pages_used.insert(page);
    }
    // Sensors still spread over the pages.
    assert!(pages_used.len() > 120, "{} pages", pages_used.len());
}
