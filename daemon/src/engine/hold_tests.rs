//! Unit tests of the hold of future outliers (issue #13): a reading far ahead of its sensor's
//! clock is held, confirmed, released, forced out or applied at idle; sensor clock offsets.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::engine::state::{self, MetaEnvelope, MetaV1};
use crate::engine::tests::{
    engine_spec, engine_spec_holding, reading, run_step, store, summary, window, Step,
};
use crate::engine::{Engine, EngineSpec, Output, TimeDomain, WindowSpec};

/// Idle timeout of these specs.
const IDLE_MS: i64 = 30_000;
/// Far enough in processing time that every sensor is idle.
const FAR_MS: i64 = 10_000_000;

fn tumbling() -> Vec<WindowSpec> {
    vec![window("w", 10_000, 10_000, 0, TimeDomain::Event)]
}

fn run(spec: &std::sync::Arc<EngineSpec>, steps: &[Step]) -> (Engine, Vec<String>) {
    let mut engine = Engine::new(spec.clone());
    let mut out = Vec::new();
    for step in steps {
        run_step(&mut engine, step, &mut out);
    }
    let lines = out.iter().map(summary).filter(|line| !line.starts_with("batch ")).collect();
    (engine, lines)
}

/// Sensor `s` reporting each second from `from_s` to `to_s` (exclusive), on time, value 1.
fn on_time(from_s: i64, to_s: i64) -> Vec<Step> {
    (from_s..to_s)
        .map(|second| Step::Chunk(second * 1000, vec![reading("s", second * 1000, Some(1.0))]))
        .collect()
}

#[test]
fn one_reading_four_minutes_ahead_neither_closes_windows_nor_makes_readings_late() {
    let clean: Vec<Step> = on_time(0, 300).into_iter().chain([Step::Tick(FAR_MS)]).collect();
    let mut wild = clean.clone();
    // At 12 s, a reading stamped 4 minutes ahead, between the on-time readings of that second.
    wild.insert(13, Step::Chunk(12_000, vec![reading("s", 252_000, Some(100.0))]));

    let (_, clean_lines) = run(&engine_spec(tumbling(), IDLE_MS), &clean);
    let (engine, wild_lines) = run(&engine_spec(tumbling(), IDLE_MS), &wild);
    // The same windows, except that the wild reading counts in its own window once the
    // sensor's clock reached it.
    let expected: Vec<String> = clean_lines
        .iter()
        .map(|line| {
            if line == "w s temp_c [250000,260000) n=10 sum=10" {
                "w s temp_c [250000,260000) n=11 sum=110".to_owned()
            } else {
                line.clone()
            }
        })
        .collect();
    assert_eq!(clean_lines.len(), 30);
    assert_eq!(wild_lines, expected);
    let stats = engine.stats();
    assert_eq!(
        (stats.future_outliers_total, stats.future_outliers_dropped_total, stats.future_outliers_held),
        (1, 0, 0)
    );
    assert_eq!(stats.late_readings_total, 0);

    // Without the hold, the same reading closes [10 s, 20 s) early and makes the next four
    // minutes of readings late: the behaviour this replaces.
    let no_hold = engine_spec_holding(tumbling(), IDLE_MS, None, 3);
    let (engine, lines) = run(&no_hold, &wild);
    assert_eq!(lines[1], "w s temp_c [10000,20000) n=3 sum=3");
    assert_eq!(engine.stats().late_readings_total, 237);
}

#[test]
fn three_consecutive_consistent_outliers_confirm_a_clock_jump_and_apply_in_order() {
    let spec = engine_spec(vec![window("w", 10_000, 10_000, 0, TimeDomain::Event)], IDLE_MS);
    let mut engine = Engine::new(spec);
    let mut out = Vec::new();
    for step in on_time(0, 21) {
        run_step(&mut engine, &step, &mut out);
    }
    out.clear();
    // The sensor's clock jumps 10 minutes ahead.
    engine.apply_chunk(21_000, 21, &[reading("s", 621_000, Some(2.0))], &mut out);
    engine.apply_chunk(22_000, 22, &[reading("s", 621_500, Some(4.0))], &mut out);
    assert!(out.iter().all(|output| !matches!(output, Output::Late(_))));
    assert_eq!(
        out.iter().map(summary).filter(|line| !line.starts_with("batch ")).count(),
        0,
        "held: nothing closes"
    );
    assert_eq!(engine.stats().future_outliers_held, 2);
    engine.apply_chunk(23_000, 23, &[reading("s", 622_000, Some(8.0))], &mut out);
    // Confirmed: applied in arrival order, so [20 s, 30 s) closes (its one reading) and the
    // jumped readings share their window; the next reading is no outlier any more.
    engine.apply_chunk(24_000, 24, &[reading("s", 623_000, Some(16.0))], &mut out);
    engine.tick(FAR_MS, &mut out);
    let lines: Vec<String> = out.iter().map(summary).filter(|line| !line.starts_with("batch ")).collect();
    assert_eq!(lines, ["w s temp_c [20000,30000) n=1 sum=1", "w s temp_c [620000,630000) n=4 sum=30"]);
    let stats = engine.stats();
    assert_eq!(
        (stats.future_outliers_total, stats.future_outliers_dropped_total, stats.future_outliers_held),
        (3, 0, 0)
    );
}

#[test]
fn outliers_going_back_in_time_do_not_confirm() {
    let mut steps = on_time(0, 5);
    for (idx, ts_s) in [(5, 600), (6, 599), (7, 598)] {
        steps.push(Step::Chunk(idx * 1000, vec![reading("s", ts_s * 1000, Some(1.0))]));
    }
    let (engine, lines) = run(&engine_spec(tumbling(), IDLE_MS), &steps);
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(engine.stats().future_outliers_held, 3);
}

#[test]
fn a_sensor_resuming_after_ten_minutes_of_silence_is_not_an_outlier() {
    let mut steps = on_time(0, 5);
    steps.extend(on_time(605, 607));
    steps.push(Step::Tick(FAR_MS));
    let (engine, lines) = run(&engine_spec(tumbling(), IDLE_MS), &steps);
    assert_eq!(lines, ["w s temp_c [0,10000) n=5 sum=5", "w s temp_c [600000,610000) n=2 sum=2"]);
    assert_eq!(engine.stats().future_outliers_total, 0);
}

#[test]
fn a_full_hold_drops_its_oldest_reading_and_counts_it() {
    let mut steps = vec![Step::Chunk(10_000, vec![reading("s", 10_000, Some(1.0))])];
    // Five wild readings going back in time: never confirmed, one more than the hold keeps.
    for (idx, ts_s) in [500, 400, 300, 200, 190].into_iter().enumerate() {
        let ingest_ms = 11_000 + i64::try_from(idx).unwrap() * 1000;
        steps.push(Step::Chunk(ingest_ms, vec![reading("s", ts_s * 1000, Some(2.0))]));
    }
    let (engine, lines) = run(&engine_spec(tumbling(), IDLE_MS), &steps[..5]);
    assert!(lines.is_empty(), "four held, nothing applied: {lines:?}");
    assert_eq!(engine.stats().future_outliers_held, 4);

    steps.push(Step::Tick(FAR_MS));
    let (engine, lines) = run(&engine_spec(tumbling(), IDLE_MS), &steps);
    // The oldest held (500 s) is dropped when the fifth arrives; at the idle close, far later,
    // the sensor's predicted clock has reached the others: applied in arrival order, the first
    // moves the watermark and the rest are late.
    assert_eq!(
        lines,
        [
            "w s temp_c [10000,20000) n=1 sum=1",
            "late w s ts=300000 wm=400000 #0",
            "late w s ts=200000 wm=400000 #1",
            "late w s ts=190000 wm=400000 #2",
            "w s temp_c [400000,410000) n=1 sum=2",
        ]
    );
    let stats = engine.stats();
    assert_eq!(
        (stats.future_outliers_total, stats.future_outliers_dropped_total, stats.future_outliers_held),
        (5, 1, 0)
    );
}

#[test]
fn at_an_idle_close_a_held_reading_is_applied_if_its_sensor_reached_it_and_dropped_if_not() {
    const IDLE_2M: i64 = 120_000;
    let spec = engine_spec(tumbling(), IDLE_2M);
    let steps = [
        Step::Chunk(0, vec![reading("s", 5000, Some(1.0))]),
        // 94 s ahead of the sensor's clock (held: over the default 60 s)…
        Step::Chunk(1000, vec![reading("s", 100_000, Some(2.0))]),
        // … and one 20 years ahead, as a gateway with an untrusted clock lets through.
        Step::Chunk(2000, vec![reading("s", 5000 + 20 * 365 * 86_400_000, Some(4.0))]),
        // The held readings kept the sensor active: not idle yet at 0 + IDLE_2M.
        Step::Tick(IDLE_2M),
    ];
    let (mut engine, lines) = run(&spec, &steps);
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(engine.stats().future_outliers_held, 2);
    // A lower bound of the idle close (the first held reading's arrival + idle_timeout).
    assert!(engine.next_deadline_ms().is_some_and(|at| at <= 2000 + IDLE_2M));
    let mut out = Vec::new();
    engine.tick(2000 + IDLE_2M, &mut out);
    let lines: Vec<String> = out.iter().map(summary).collect();
    // At the idle close the sensor's clock is predicted at 5 s + 122 s: the first held reading
    // is reached and applied before the windows close; the wild one is dropped, counted.
    assert_eq!(lines, ["w s temp_c [0,10000) n=1 sum=1", "w s temp_c [100000,110000) n=1 sum=2"]);
    let stats = engine.stats();
    assert_eq!((stats.future_outliers_held, stats.future_outliers_dropped_total), (0, 1));
    assert_eq!(stats.open_windows, 0);
}

#[test]
fn processing_time_windows_and_micro_batches_take_a_held_reading_at_once() {
    let spec = engine_spec(
        vec![
            window("p", 10_000, 10_000, 0, TimeDomain::Processing),
            window("w", 10_000, 10_000, 0, TimeDomain::Event),
        ],
        IDLE_MS,
    );
    let mut engine = Engine::new(spec);
    let mut out = Vec::new();
    engine.apply_chunk(0, 0, &[reading("s", 0, Some(1.0))], &mut out);
    engine.apply_chunk(500, 0, &[reading("s", 400_000, Some(2.0))], &mut out);
    engine.tick(10_000, &mut out);
    let lines: Vec<String> = out.iter().map(summary).collect();
    assert_eq!(lines, ["batch 0 s temp_c [0,1000) n=2 sum=3", "p s temp_c [0,10000) n=2 sum=3"]);
    assert_eq!(engine.stats().future_outliers_held, 1);
}

/// A stream with a held outlier, a confirmed jump and a forced one, over two sensors.
fn eventful_steps() -> Vec<Step> {
    let mut steps = Vec::new();
    for second in 0..40 {
        let ingest_ms = second * 1000;
        let mut readings = vec![reading("a", ingest_ms, Some(1.0)), reading("b", ingest_ms - 500, Some(2.0))];
        match second {
            5 => readings.push(reading("a", 30_000 + 90_000, Some(4.0))),
            10..=12 => readings.push(reading("b", 600_000 + second * 10, Some(8.0))),
            20..=24 => readings.push(reading("a", 900_000 - second * 1000, Some(16.0))),
            _ => {}
        }
        steps.push(Step::Chunk(ingest_ms, readings));
        if second % 7 == 0 {
            steps.push(Step::Tick(ingest_ms + 300));
        }
    }
    steps.push(Step::Tick(FAR_MS));
    steps
}

#[test]
fn a_restored_engine_holds_and_releases_like_an_uninterrupted_one() {
    let spec = engine_spec(tumbling(), IDLE_MS);
    let steps = eventful_steps();
    let (uninterrupted, uninterrupted_lines) = run(&spec, &steps);
    assert!(uninterrupted.stats().future_outliers_dropped_total > 0);
    assert!(uninterrupted.stats().future_outliers_total > 5);
    for split in 0..steps.len() {
        let mut engine = Engine::new(spec.clone());
        let mut out = Vec::new();
        let mut stored = BTreeMap::new();
        for step in &steps[..split] {
            run_step(&mut engine, step, &mut out);
            store(&mut stored, engine.take_dirty());
        }
        let (mut engine, report) = Engine::restore(spec.clone(), stored);
        assert!(report.skipped.is_empty(), "{report:?}");
        for step in &steps[split..] {
            run_step(&mut engine, step, &mut out);
        }
        let lines: Vec<String> = out.iter().map(summary).filter(|line| !line.starts_with("batch ")).collect();
        assert_eq!(lines, uninterrupted_lines, "split at {split}");
        assert_eq!(engine.stats(), uninterrupted.stats(), "split at {split}");
    }
}

#[test]
fn a_snapshot_from_before_sensor_clocks_restores_and_its_sensors_start_afresh() {
    let spec = engine_spec(tumbling(), IDLE_MS);
    let mut engine = Engine::new(spec.clone());
    let mut out = Vec::new();
    engine.apply_chunk(0, 0, &[reading("s", 1000, Some(1.0))], &mut out);
    let mut stored = BTreeMap::new();
    store(&mut stored, engine.take_dirty());
    // What the previous eddy stored: a version 1 engine entry, no sensor clock entries.
    stored.retain(|key, _| key.first() != Some(&b'c'));
    let old_meta = MetaEnvelope::V1(MetaV1 {
        clock_ms: Some(0),
        batch_floor: 0,
        late_readings_total: 7,
        late_by_window: vec![("w".into(), 7)],
        results_emitted_total: 3,
        batch_readings_deferred_total: 0,
    });
    stored.insert(state::META_KEY.to_vec(), state::encode(&old_meta));

    let (mut restored, report) = Engine::restore(spec, stored);
    assert!(report.skipped.is_empty(), "{report:?}");
    let stats = restored.stats();
    assert_eq!(
        (stats.late_readings_total, stats.results_emitted_total, stats.future_outliers_total),
        (7, 3, 0)
    );
    // No reference yet: the next reading is judged like a first one, then the hold works.
    restored.apply_chunk(1000, 1, &[reading("s", 2000, Some(1.0))], &mut out);
    restored.apply_chunk(2000, 2, &[reading("s", 500_000, Some(1.0))], &mut out);
    assert_eq!(restored.stats().future_outliers_held, 1);
    // The entries written next are the current versions.
    let entries = restored.take_dirty();
    let meta = entries.iter().find(|(key, _)| key == state::META_KEY).and_then(|(_, value)| value.clone());
    assert!(matches!(state::decode::<MetaEnvelope>(&meta.unwrap()), Ok(MetaEnvelope::V3(_))));
    assert!(entries.iter().any(|(key, value)| key == b"cs" && value.is_some()));
}

#[test]
fn the_hold_can_be_turned_off() {
    let steps = [
        Step::Chunk(0, vec![reading("s", 0, Some(1.0))]),
        Step::Chunk(1000, vec![reading("s", 400_000, Some(2.0))]),
    ];
    let (engine, lines) = run(&engine_spec_holding(tumbling(), IDLE_MS, None, 3), &steps);
    assert_eq!(lines, ["w s temp_c [0,10000) n=1 sum=1"]);
    assert_eq!(engine.stats().future_outliers_total, 0);
    // A held reading stored by a run with the hold is applied once the hold is off.
    let holding = engine_spec(tumbling(), IDLE_MS);
    let mut engine = Engine::new(holding);
    let mut out = Vec::new();
    let mut stored = BTreeMap::new();
    for step in &steps {
        run_step(&mut engine, step, &mut out);
    }
    store(&mut stored, engine.take_dirty());
    let (mut restored, _) = Engine::restore(engine_spec_holding(tumbling(), IDLE_MS, None, 3), stored);
    restored.apply_chunk(2000, 2, &[reading("s", 2000, Some(4.0))], &mut out);
    let lines: Vec<String> = out.iter().map(summary).filter(|line| !line.starts_with("batch ")).collect();
    assert_eq!(lines, ["w s temp_c [0,10000) n=1 sum=1", "late w s ts=2000 wm=400000 #0"]);
    assert_eq!(restored.stats().future_outliers_held, 0);
}

#[test]
fn sensor_clocks_list_the_sensors_furthest_off_against_the_gateway_and_the_median() {
    let spec = engine_spec(tumbling(), IDLE_MS);
    let mut engine = Engine::new(spec);
    let mut out = Vec::new();
    let offsets =
        [("on-time", 0), ("ahead", 45_000), ("behind", -20_000), ("close", 2000), ("delayed", -300)];
    for second in 0..3 {
        let ingest_ms = 1_000_000 + second * 1000;
        let readings: Vec<_> = offsets
            .iter()
            .map(|(sensor, offset_ms)| reading(sensor, ingest_ms + offset_ms, Some(1.0)))
            .collect();
        engine.apply_chunk(ingest_ms, 0, &readings, &mut out);
    }
    // Network delay lowers ts - ingest; the estimate keeps the largest.
    engine.apply_chunk(1_004_000, 0, &[reading("ahead", 1_004_000 + 40_000, Some(1.0))], &mut out);
    let clocks: Vec<(String, i64, i64)> = engine
        .sensor_clocks(20, Duration::from_secs(5))
        .into_iter()
        .map(|clock| (clock.sensor.to_string(), clock.offset_ms, clock.offset_from_median_ms))
        .collect();
    // Median of 45000, -20000, 2000, -300, 0: 0.
    assert_eq!(clocks, [("ahead".to_owned(), 45_000, 45_000), ("behind".to_owned(), -20_000, -20_000)]);
    assert_eq!(engine.sensor_clocks(1, Duration::from_secs(5)).len(), 1);
    assert!(engine.sensor_clocks(20, Duration::from_secs(60)).is_empty());
    // Two periods without a reading of a sensor: it is no longer listed.
    engine.apply_chunk(
        1_004_000 + 1_300_000,
        0,
        &[reading("behind", 2_304_000 - 20_000, Some(1.0))],
        &mut out,
    );
    let clocks: Vec<String> = engine
        .sensor_clocks(20, Duration::from_secs(5))
        .into_iter()
        .map(|clock| clock.sensor.to_string())
        .collect();
    assert_eq!(clocks, ["behind"]);
}

#[test]
fn sensor_clocks_limited_lists_the_head_of_the_full_ranking_ties_by_sensor_id() {
    let spec = engine_spec(tumbling(), IDLE_MS);
    let mut engine = Engine::new(spec);
    let mut out = Vec::new();
    let ingest_ms = 1_000_000;
    // 200 sensors in a scrambled id order, offsets in 9 steps of 10 s either way: many ties
    // in rank, which the sensor id must break the same way however many are asked for.
    let readings: Vec<_> = (0..200_i64)
        .map(|n| {
            let id = (n * 73) % 200;
            let offset_ms = ((id * 37) % 9 - 4) * 10_000;
            (format!("s-{id:03}"), offset_ms)
        })
        .collect();
    for (sensor, offset_ms) in &readings {
        engine.apply_chunk(ingest_ms, 0, &[reading(sensor, ingest_ms + offset_ms, Some(1.0))], &mut out);
    }
    let threshold = Duration::from_secs(5);
    let all = engine.sensor_clocks(usize::MAX, threshold);
    // Every sensor but those on time is more than 5 s off (the median is 0).
    assert!(all.len() > 100, "{}", all.len());
    let rank = |clock: &crate::engine::SensorClockOffset| {
        clock.offset_ms.saturating_abs().max(clock.offset_from_median_ms.saturating_abs())
    };
    for pair in all.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(rank(a) > rank(b) || (rank(a) == rank(b) && a.sensor < b.sensor), "{a:?} before {b:?}");
    }
    for limit in [0, 1, 2, 7, 20, all.len() - 1, all.len(), all.len() + 5] {
        let listed = engine.sensor_clocks(limit, threshold);
        assert_eq!(listed, all[..limit.min(all.len())], "limit {limit}");
    }
}
