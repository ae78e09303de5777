//! Property tests: the engine against a naive recomputation of the window and late rules, and
//! a restored engine against an uninterrupted one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::Reading;
use proptest::prelude::*;

use crate::engine::record::ResultRecord;
use crate::engine::tests::{engine_spec, engine_spec_holding, run_step, store, Step};
use crate::engine::{Aggregate, Engine, Output, TimeDomain, WindowSpec};

const SENSORS: [&str; 3] = ["a", "b", "c"];

/// What both the engine and the naive model emit, comparable exactly except for the
/// standard deviation (Welford's method against a two-pass formula).
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Window {
        window: String,
        sensor: String,
        start_ms: i64,
        end_ms: i64,
        count: u64,
        sum: f64,
        min: f64,
        max: f64,
        first: f64,
        last: f64,
        stddev: Option<f64>,
    },
    Late {
        window: String,
        sensor: String,
        ts_ms: i64,
        watermark_ms: i64,
        seq: u64,
    },
}

fn same(a: &Event, b: &Event) -> bool {
    match (a, b) {
        (Event::Window { stddev: stddev_a, .. }, Event::Window { stddev: stddev_b, .. }) => {
            let stddev_close = match (stddev_a, stddev_b) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                (x, y) => x == y,
            };
            let strip = |event: &Event| match event {
                Event::Window {
                    stddev: _,
                    window,
                    sensor,
                    start_ms,
                    end_ms,
                    count,
                    sum,
                    min,
                    max,
                    first,
                    last,
                } => (
                    window.clone(),
                    sensor.clone(),
                    *start_ms,
                    *end_ms,
                    *count,
                    *sum,
                    *min,
                    *max,
                    *first,
                    *last,
                ),
                Event::Late { .. } => unreachable!("windows only"),
            };
            stddev_close && strip(a) == strip(b)
        }
        _ => a == b,
    }
}

fn from_output(output: &Output) -> Option<Event> {
    match output {
        Output::Result(ResultRecord::Window(record)) => Some(Event::Window {
            window: record.window.to_string(),
            sensor: record.sensor.to_string(),
            start_ms: record.start_ms,
            end_ms: record.end_ms,
            count: record.stats.count,
            sum: record.stats.sum,
            min: record.stats.min,
            max: record.stats.max,
            first: record.stats.first,
            last: record.stats.last,
            stddev: record.stats.stddev,
        }),
        Output::Late(late) => Some(Event::Late {
            window: late.window.to_string(),
            sensor: late.sensor.to_string(),
            ts_ms: late.ts_ms,
            watermark_ms: late.watermark_ms,
            seq: late.seq,
        }),
        Output::Result(_) => None,
    }
}

/// Open windows by start, each with its (ts, value) list.
type OpenWindows = BTreeMap<i64, Vec<(i64, Option<f64>)>>;

/// The window rules written as plainly as possible: every reading scans a generous range of
/// candidate starts, watermarks are recomputed from all readings seen.
#[derive(Debug)]
struct NaiveWindow {
    name: String,
    length_ms: i64,
    slide_ms: i64,
    lateness_ms: i64,
    /// Per sensor: event times seen, late readings so far, open windows by start with their
    /// (ts, value) list.
    sensors: BTreeMap<String, (Vec<i64>, u64, OpenWindows)>,
}

impl NaiveWindow {
    fn apply(&mut self, reading: &Reading, events: &mut Vec<Event>) {
        let (seen, late_seq, open) = self.sensors.entry(reading.sensor.to_string()).or_default();
        let watermark = seen.iter().max().map(|max_ts| max_ts - self.lateness_ms);
        let mut late = false;
        let first_k = (reading.ts_ms - self.length_ms) / self.slide_ms - 2;
        let last_k = reading.ts_ms / self.slide_ms + 2;
        for k in first_k..=last_k {
            let start_ms = k * self.slide_ms;
            let end_ms = start_ms + self.length_ms;
            if !(start_ms <= reading.ts_ms && reading.ts_ms < end_ms) {
                continue;
            }
            if watermark.is_some_and(|watermark| end_ms <= watermark) {
                late = true;
            } else {
                open.entry(start_ms).or_default().push((reading.ts_ms, reading.values[0]));
            }
        }
        if late {
            events.push(Event::Late {
                window: self.name.clone(),
                sensor: reading.sensor.to_string(),
                ts_ms: reading.ts_ms,
                watermark_ms: watermark.expect("late needs a watermark"),
                seq: *late_seq,
            });
            *late_seq += 1;
        }
        seen.push(reading.ts_ms);
        let watermark = seen.iter().max().expect("just pushed") - self.lateness_ms;
        let due: Vec<i64> =
            open.keys().copied().filter(|start_ms| start_ms + self.length_ms <= watermark).collect();
        for start_ms in due {
            let values = open.remove(&start_ms).expect("due key exists");
            events.extend(window_event(&self.name, self.length_ms, &reading.sensor, start_ms, &values));
        }
    }

    fn flush(&mut self, events: &mut Vec<Event>) {
        for (sensor, (_, _, open)) in std::mem::take(&mut self.sensors) {
            for (start_ms, values) in open {
                events.extend(window_event(&self.name, self.length_ms, &sensor, start_ms, &values));
            }
        }
    }
}

fn window_event(
    name: &str,
    length_ms: i64,
    sensor: &str,
    start_ms: i64,
    values: &[(i64, Option<f64>)],
) -> Option<Event> {
    let present: Vec<(i64, f64)> =
        values.iter().filter_map(|(ts, value)| value.map(|value| (*ts, value))).collect();
    if present.is_empty() {
        return None;
    }
    let count = present.len();
    let sum = present.iter().fold(0.0, |sum, (_, value)| sum + value);
    let n = f64::from(u32::try_from(count).expect("few values"));
    let mean = sum / n;
    let stddev = (count >= 2)
        .then(|| (present.iter().map(|(_, v)| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt());
    let first = present.iter().enumerate().min_by_key(|(idx, (ts, _))| (*ts, *idx)).expect("non-empty").1 .1;
    let last = present.iter().enumerate().max_by_key(|(idx, (ts, _))| (*ts, *idx)).expect("non-empty").1 .1;
    Some(Event::Window {
        window: name.to_owned(),
        sensor: sensor.to_owned(),
        start_ms,
        end_ms: start_ms + length_ms,
        count: u64::try_from(count).expect("few values"),
        sum,
        min: present.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min),
        max: present.iter().map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max),
        first,
        last,
        stddev,
    })
}

fn all_aggregates() -> Vec<Aggregate> {
    Aggregate::ALL.to_vec()
}

fn window_strategy(name: &'static str) -> impl Strategy<Value = (String, i64, i64, i64)> {
    (prop::sample::select(vec![1000i64, 2000, 3000, 5000]), 1i64..=4, 0i64..30).prop_map(
        move |(slide_ms, ratio, lateness_halves)| {
            (name.to_owned(), slide_ms * ratio, slide_ms, lateness_halves * 500)
        },
    )
}

fn reading_strategy() -> impl Strategy<Value = Reading> {
    (0usize..SENSORS.len(), -20_000i64..60_000, any::<bool>(), prop::option::weighted(0.9, -20i32..40))
        .prop_map(
            // Half of the times on a 500 ms grid, so that readings hit window ends and watermarks
            // exactly.
            |(sensor, ts_ms, on_grid, value)| Reading {
                sensor: Arc::from(SENSORS[sensor]),
                ts_ms: if on_grid { ts_ms - ts_ms.rem_euclid(500) } else { ts_ms },
                values: smallvec::smallvec![value.map(f64::from), None],
                tags: smallvec::smallvec![None],
            },
        )
}

fn to_spec(name: &str, length_ms: i64, slide_ms: i64, lateness_ms: i64, time: TimeDomain) -> WindowSpec {
    let ms = |ms: i64| Duration::from_millis(u64::try_from(ms).expect("positive"));
    WindowSpec::new(
        name,
        ms(length_ms),
        ms(slide_ms),
        time,
        ms(lateness_ms),
        vec![0],
        all_aggregates(),
        vec![],
    )
    .expect("valid generated window")
}

/// A chunk (ingest time, readings) or a tick; ingest times mostly grow, sometimes fall behind
/// a tick.
fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0i64..2500, prop::collection::vec(reading_strategy(), 0..6)).prop_map(|(at, readings)| Step::Chunk(at, readings)),
        1 => (0i64..2500).prop_map(Step::Tick),
    ]
}

/// A reading whose event time is relative to its chunk's ingest time: mostly close (a little
/// behind or ahead), sometimes far ahead (a wild clock or a jump), sometimes far behind.
fn clocked_reading_strategy() -> impl Strategy<Value = (usize, i64, Option<i32>)> {
    let offset_ms = prop_oneof![
        8 => -3000i64..1000,
        2 => 5000i64..300_000,
        1 => -60_000i64..-5000,
    ];
    (0usize..SENSORS.len(), offset_ms, prop::option::weighted(0.9, -20i32..40))
}

/// Chunks and ticks whose readings' event times follow the processing clock, with outliers.
fn clocked_steps_strategy() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        4 => (0i64..2500, prop::collection::vec(clocked_reading_strategy(), 0..6))
            .prop_map(|(advance_ms, readings)| (advance_ms, Some(readings))),
        1 => (0i64..2500).prop_map(|ahead_ms| (ahead_ms, None)),
    ];
    prop::collection::vec(step, 0..60).prop_map(|steps| {
        let mut clock_ms = 1_000_000;
        steps
            .into_iter()
            .map(|(advance_ms, readings)| match readings {
                Some(readings) => {
                    clock_ms += advance_ms;
                    let readings = readings
                        .into_iter()
                        .map(|(sensor, offset_ms, value)| Reading {
                            sensor: Arc::from(SENSORS[sensor]),
                            ts_ms: clock_ms + offset_ms,
                            values: smallvec::smallvec![value.map(f64::from), None],
                            tags: smallvec::smallvec![None],
                        })
                        .collect();
                    Step::Chunk(clock_ms, readings)
                }
                None => Step::Tick(clock_ms + advance_ms),
            })
            .collect()
    })
}

/// Outputs as their JSON lines (ids and contents).
fn json(outputs: &[Output]) -> Vec<Vec<u8>> {
    outputs
        .iter()
        .map(|output| match output {
            Output::Result(record) => record.to_json(),
            Output::Late(late) => late.to_json(),
        })
        .collect()
}

/// Turns relative step times into a processing time line.
fn timeline(steps: Vec<Step>) -> Vec<Step> {
    let mut clock_ms = 0;
    steps
        .into_iter()
        .map(|step| match step {
            Step::Chunk(advance_ms, readings) => {
                clock_ms += advance_ms;
                Step::Chunk(clock_ms, readings)
            }
            // A tick may run ahead of the next chunk's ingest time.
            Step::Tick(ahead_ms) => Step::Tick(clock_ms + ahead_ms),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn engine_windows_and_late_readings_equal_a_naive_recomputation(
        windows in prop::collection::vec(window_strategy("w"), 1..3),
        readings in prop::collection::vec(reading_strategy(), 0..60),
        chunk_sizes in prop::collection::vec(1usize..5, 60),
    ) {
        let windows: Vec<(String, i64, i64, i64)> =
            windows.into_iter().enumerate().map(|(idx, (name, l, s, late))| (format!("{name}{idx}"), l, s, late)).collect();
        let specs = windows.iter().map(|(name, l, s, late)| to_spec(name, *l, *s, *late, TimeDomain::Event)).collect();
        // Processing time stands still, so only the final tick idles the sensors out. The
        // naive model has no hold of future outliers (with processing time standing still,
        // any jump over a minute would be held).
        let mut engine = Engine::new(engine_spec_holding(specs, 1_000_000, None, 3));
        let mut out = Vec::new();
        let mut rest = &readings[..];
        for size in chunk_sizes {
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            engine.apply_chunk(0, 0, chunk, &mut out);
            rest = tail;
        }
        engine.apply_chunk(0, 0, rest, &mut out);
        engine.tick(10_000_000, &mut out);
        let got: Vec<Event> = out.iter().filter_map(from_output).collect();

        let mut naive: Vec<NaiveWindow> = windows
            .iter()
            .map(|(name, length_ms, slide_ms, lateness_ms)| NaiveWindow {
                name: name.clone(),
                length_ms: *length_ms,
                slide_ms: *slide_ms,
                lateness_ms: *lateness_ms,
                sensors: BTreeMap::new(),
            })
            .collect();
        let mut want = Vec::new();
        for reading in &readings {
            for window in &mut naive {
                window.apply(reading, &mut want);
            }
        }
        for window in &mut naive {
            window.flush(&mut want);
        }
        prop_assert_eq!(got.len(), want.len(), "got {:?}\nwant {:?}", got, want);
        for (got, want) in got.iter().zip(&want) {
            prop_assert!(same(got, want), "got {:?}\nwant {:?}", got, want);
        }
        let n_late = want.iter().filter(|event| matches!(event, Event::Late { .. })).count();
        prop_assert_eq!(engine.stats().late_readings_total, u64::try_from(n_late).unwrap());
        prop_assert_eq!(engine.stats().open_windows, 0);
    }

    #[test]
    fn restored_engine_emits_exactly_what_an_uninterrupted_engine_emits(
        event_window in window_strategy("event"),
        processing_window in window_strategy("processing"),
        idle_ms in 1000i64..20_000,
        steps in prop::collection::vec(step_strategy(), 0..40),
        split in any::<prop::sample::Index>(),
        checkpoints in prop::collection::vec(any::<bool>(), 40),
    ) {
        let specs = || {
            let (name, l, s, late) = &event_window;
            let (p_name, p_l, p_s, _) = &processing_window;
            vec![
                to_spec(name, *l, *s, *late, TimeDomain::Event),
                to_spec(p_name, *p_l, *p_s, 0, TimeDomain::Processing),
            ]
        };
        let mut steps = timeline(steps);
        steps.push(Step::Tick(100_000_000));
        let split = split.index(steps.len());

        let mut engine = Engine::new(engine_spec(specs(), idle_ms));
        let mut uninterrupted = Vec::new();
        for step in &steps {
            run_step(&mut engine, step, &mut uninterrupted);
        }

        let mut engine = Engine::new(engine_spec(specs(), idle_ms));
        let mut out = Vec::new();
        let mut stored = BTreeMap::new();
        for (step, checkpoint) in steps[..split].iter().zip(&checkpoints) {
            run_step(&mut engine, step, &mut out);
            if *checkpoint {
                store(&mut stored, engine.take_dirty());
            }
        }
        store(&mut stored, engine.take_dirty());
        let (mut restored, report) = Engine::restore(engine_spec(specs(), idle_ms), stored);
        prop_assert!(report.skipped.is_empty(), "{:?}", report);
        for step in &steps[split..] {
            run_step(&mut restored, step, &mut out);
        }
        prop_assert_eq!(json(&out), json(&uninterrupted));
        prop_assert_eq!(restored.stats(), engine_after(&steps, specs(), idle_ms));
    }

    #[test]
    fn restored_engine_holds_and_releases_future_outliers_like_an_uninterrupted_one(
        event_window in window_strategy("event"),
        processing_window in window_strategy("processing"),
        idle_ms in 2000i64..40_000,
        outlier_after_ms in 1000u64..20_000,
        outlier_confirm in 1u32..5,
        steps in clocked_steps_strategy(),
        split in any::<prop::sample::Index>(),
        checkpoints in prop::collection::vec(any::<bool>(), 60),
    ) {
        let spec = || {
            let (name, l, s, late) = &event_window;
            let (p_name, p_l, p_s, _) = &processing_window;
            let windows = vec![
                to_spec(name, *l, *s, *late, TimeDomain::Event),
                to_spec(p_name, *p_l, *p_s, 0, TimeDomain::Processing),
            ];
            engine_spec_holding(windows, idle_ms, Some(Duration::from_millis(outlier_after_ms)), outlier_confirm)
        };
        let mut steps = steps;
        steps.push(Step::Tick(200_000_000));
        let split = split.index(steps.len());

        let mut engine = Engine::new(spec());
        let mut uninterrupted = Vec::new();
        for step in &steps {
            run_step(&mut engine, step, &mut uninterrupted);
        }
        let uninterrupted_stats = engine.stats();
        prop_assert_eq!(uninterrupted_stats.future_outliers_held, 0, "idle applies everything held");
        prop_assert_eq!(uninterrupted_stats.open_windows, 0);

        let mut engine = Engine::new(spec());
        let mut out = Vec::new();
        let mut stored = BTreeMap::new();
        for (step, checkpoint) in steps[..split].iter().zip(&checkpoints) {
            run_step(&mut engine, step, &mut out);
            if *checkpoint {
                store(&mut stored, engine.take_dirty());
            }
        }
        store(&mut stored, engine.take_dirty());
        let (mut restored, report) = Engine::restore(spec(), stored);
        prop_assert!(report.skipped.is_empty(), "{:?}", report);
        for step in &steps[split..] {
            run_step(&mut restored, step, &mut out);
        }
        prop_assert_eq!(json(&out), json(&uninterrupted));
        prop_assert_eq!(restored.stats(), uninterrupted_stats);
    }

    #[test]
    fn every_reading_is_counted_once_in_event_windows_or_dropped_as_unconfirmed(
        outlier_after_ms in 1000u64..20_000,
        outlier_confirm in 1u32..5,
        steps in clocked_steps_strategy(),
    ) {
        // One window long enough, and a lateness and idle timeout long enough, that no reading
        // can be late: each reading is in exactly one window result, so nothing held may be
        // lost or counted twice. The final tick idles every sensor out.
        let windows = vec![to_spec("all", 1_000_000, 1_000_000, 100_000_000, TimeDomain::Event)];
        let spec = engine_spec_holding(windows, 100_000_000, Some(Duration::from_millis(outlier_after_ms)), outlier_confirm);
        let mut engine = Engine::new(spec);
        let mut out = Vec::new();
        let mut steps = steps;
        steps.push(Step::Tick(200_000_000));
        for step in &steps {
            run_step(&mut engine, step, &mut out);
        }
        let n_values: usize = steps
            .iter()
            .map(|step| match step {
                Step::Chunk(_, readings) => readings.iter().filter(|reading| reading.values[0].is_some()).count(),
                Step::Tick(_) => 0,
            })
            .sum();
        let counted: u64 = out
            .iter()
            .filter_map(|output| match output {
                Output::Result(ResultRecord::Window(record)) => Some(record.stats.count),
                _ => None,
            })
            .sum();
        // Nothing counted twice; nothing missing but what was dropped as unconfirmed (and
        // counted): with no drop, every reading is in exactly one result.
        let n_values = u64::try_from(n_values).unwrap();
        let dropped = engine.stats().future_outliers_dropped_total;
        prop_assert!(counted <= n_values, "{} counted of {}", counted, n_values);
        prop_assert!(counted + dropped >= n_values, "{} counted + {} dropped < {}", counted, dropped, n_values);
        if dropped == 0 {
            prop_assert_eq!(counted, n_values);
        }
        prop_assert_eq!(engine.stats().future_outliers_held, 0);
    }

    /// Issue #14: forgetting silent sensors (their state deleted, their indexes reused) keeps
    /// restores exact, wherever the split and whichever commits were taken.
    #[test]
    fn restored_engine_forgets_sensors_like_an_uninterrupted_one(
        event_window in window_strategy("event"),
        processing_window in window_strategy("processing"),
        idle_ms in 1000i64..20_000,
        extra_ms in 0i64..10_000,
        steps in prop::collection::vec(step_strategy(), 0..40),
        split in any::<prop::sample::Index>(),
        checkpoints in prop::collection::vec(any::<bool>(), 40),
    ) {
        let forget_ms = idle_ms.max(processing_window.1).max(1000) + extra_ms;
        let spec = || {
            let (name, l, s, late) = &event_window;
            let (p_name, p_l, p_s, _) = &processing_window;
            let windows = vec![
                to_spec(name, *l, *s, *late, TimeDomain::Event),
                to_spec(p_name, *p_l, *p_s, 0, TimeDomain::Processing),
            ];
            let mut spec = (*engine_spec(windows, idle_ms)).clone();
            spec.forget_after = Some(Duration::from_millis(u64::try_from(forget_ms).unwrap()));
            Arc::new(spec)
        };
        let mut steps = timeline(steps);
        steps.push(Step::Tick(100_000_000));
        let split = split.index(steps.len());

        let mut engine = Engine::new(spec());
        let mut uninterrupted = Vec::new();
        for step in &steps {
            run_step(&mut engine, step, &mut uninterrupted);
        }
        let uninterrupted_stats = engine.stats();
        prop_assert_eq!(uninterrupted_stats.sensors, 0, "everything is forgotten in the end");

        let mut engine = Engine::new(spec());
        let mut out = Vec::new();
        let mut stored = BTreeMap::new();
        for (step, checkpoint) in steps[..split].iter().zip(&checkpoints) {
            run_step(&mut engine, step, &mut out);
            if *checkpoint {
                store(&mut stored, engine.take_dirty());
            }
        }
        store(&mut stored, engine.take_dirty());
        let (mut restored, report) = Engine::restore(spec(), stored);
        prop_assert!(report.skipped.is_empty(), "{:?}", report);
        for step in &steps[split..] {
            run_step(&mut restored, step, &mut out);
        }
        prop_assert_eq!(json(&out), json(&uninterrupted));
        // Only the count of forgotten sensors is per run (not stored).
        let restored_stats = crate::engine::EngineStats { sensors_forgotten_total: 0, ..restored.stats() };
        let uninterrupted_stats = crate::engine::EngineStats { sensors_forgotten_total: 0, ..uninterrupted_stats };
        prop_assert_eq!(restored_stats, uninterrupted_stats);
        restored.take_dirty();
        prop_assert!(restored.take_dirty().is_empty());
    }
}

/// Stats of an uninterrupted engine after all `steps`.
fn engine_after(steps: &[Step], specs: Vec<WindowSpec>, idle_ms: i64) -> crate::engine::EngineStats {
    let mut engine = Engine::new(engine_spec(specs, idle_ms));
    let mut out = Vec::new();
    for step in steps {
        run_step(&mut engine, step, &mut out);
    }
    engine.stats()
}
