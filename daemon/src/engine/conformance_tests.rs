//! Conformance with Apache Spark: the engine's windows over the shared thermostat sample must
//! equal the results Spark computed (`shared/conformance/`, see its README.md).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::Reading;
use serde_json::Value;

use crate::engine::record::ResultRecord;
use crate::engine::{Aggregate, Engine, EngineSpec, Output, TimeDomain, WindowSpec};

const CONFORMANCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/conformance/");

/// Every chunk is ingested at this time, so processing time never moves and no sensor idles.
const INGEST_MS: i64 = 1_800_000_000_000;
const DAY_MS: i64 = 86_400_000;

fn read_conformance_file(name: &str) -> String {
    let path = format!("{CONFORMANCE_DIR}{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!("conformance file {path} is missing ({error}); it comes with the shared/ folder beside the repository")
    })
}

/// The validity rule of `readings.py`: `None` for a malformed line.
fn parse_valid(line: &str) -> Option<Reading> {
    let object = serde_json::from_str::<Value>(line).ok()?;
    let object = object.as_object()?;
    let sensor = object.get("sensor")?.as_str().filter(|sensor| !sensor.is_empty())?;
    let ts_ms = object.get("ts")?.as_i64().filter(|ts| (0..1i64 << 53).contains(ts))?;
    let temp_c = object.get("temp_c")?.as_f64().filter(|temp| (-50.0..=100.0).contains(temp))?;
    let humidity = match object.get("humidity") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_f64().filter(|humidity| (0.0..=100.0).contains(humidity))?),
    };
    Some(Reading {
        sensor: Arc::from(sensor),
        ts_ms,
        values: smallvec::smallvec![Some(temp_c), humidity],
        tags: smallvec::smallvec![],
    })
}

fn window_spec(name: &str, length_ms: u64, slide_ms: u64, lateness: Duration) -> WindowSpec {
    WindowSpec::new(
        name,
        Duration::from_millis(length_ms),
        Duration::from_millis(slide_ms),
        TimeDomain::Event,
        lateness,
        vec![0],
        vec![Aggregate::Count, Aggregate::Sum, Aggregate::Min, Aggregate::Max, Aggregate::Mean],
        vec![],
    )
    .expect("valid conformance window")
}

/// One window result: (end, count, min, max, avg, sum), keyed by (sensor, start).
type Results = BTreeMap<(String, i64), (i64, u64, f64, f64, f64, f64)>;

/// Runs the sample through the engine with windows 10 s/5 s and 5 s/5 s; returns each
/// window's results and late readings (sensor, ts).
fn run_sample(lateness: Duration) -> Vec<(Results, Vec<(String, i64)>)> {
    let spec = Arc::new(EngineSpec {
        device_id: "gw".into(),
        field_names: vec!["temp_c".into(), "humidity".into()],
        tag_names: vec![],
        batch_interval: Duration::from_secs(1),
        windows: vec![
            window_spec("sliding", 10_000, 5000, lateness),
            window_spec("tumbling", 5000, 5000, lateness),
        ],
        idle_timeout: Duration::from_millis(u64::try_from(DAY_MS).unwrap()),
        // Spark's watermark has no hold, and every chunk here shares one ingest time.
        outlier_after: None,
        outlier_confirm: EngineSpec::DEFAULT_OUTLIER_CONFIRM,
        count_by_max_values: EngineSpec::DEFAULT_COUNT_BY_MAX_VALUES,
        tag_values_listed: Vec::new(),
        forget_after: None,
    });
    let mut engine = Engine::new(spec);
    let mut out = Vec::new();
    let batch = u64::try_from(INGEST_MS / 1000).unwrap();
    let sample = read_conformance_file("readings_sample.jsonl");
    let mut n_valid = 0;
    // Chunks of up to three lines, like a source handing over what one read returned.
    let lines: Vec<&str> = sample.lines().collect();
    for group in lines.chunks(3) {
        let readings: Vec<Reading> = group.iter().filter_map(|line| parse_valid(line)).collect();
        n_valid += readings.len();
        engine.apply_chunk(INGEST_MS, batch, &readings, &mut out);
    }
    assert_eq!(n_valid, 6012, "valid lines of the sample, per its meta file");
    engine.tick(INGEST_MS + 2 * DAY_MS, &mut out);
    assert_eq!(engine.stats().open_windows, 0);

    let mut per_window = vec![(Results::new(), Vec::new()), (Results::new(), Vec::new())];
    for output in out {
        match output {
            Output::Result(ResultRecord::Window(record)) => {
                let results = &mut per_window[usize::from(&*record.window == "tumbling")].0;
                let stats = record.stats;
                let previous = results.insert(
                    (record.sensor.to_string(), record.start_ms),
                    (record.end_ms, stats.count, stats.min, stats.max, stats.mean, stats.sum),
                );
                assert!(previous.is_none(), "window emitted twice: {record:?}");
            }
            Output::Late(late) => {
                per_window[usize::from(&*late.window == "tumbling")]
                    .1
                    .push((late.sensor.to_string(), late.ts_ms));
            }
            Output::Result(_) => {}
        }
    }
    per_window
}

fn expected(name: &str) -> Results {
    read_conformance_file(name)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let row: Value = serde_json::from_str(line).expect("expected files are JSON lines");
            let int = |key: &str| row[key].as_i64().unwrap_or_else(|| panic!("{key} in {line}"));
            let float = |key: &str| row[key].as_f64().unwrap_or_else(|| panic!("{key} in {line}"));
            let sensor = row["sensor"].as_str().expect("sensor").to_owned();
            let count = u64::try_from(int("count")).expect("count");
            (
                (sensor, int("window_start_ms")),
                (int("window_end_ms"), count, float("min"), float("max"), float("avg"), float("sum")),
            )
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn check(got: &Results, expected_file: &str) {
    let want = expected(expected_file);
    let got_keys: Vec<_> = got.keys().collect();
    let want_keys: Vec<_> = want.keys().collect();
    assert_eq!(got_keys, want_keys, "windows differ from {expected_file}");
    for (key, (end, count, min, max, avg, sum)) in &want {
        let (got_end, got_count, got_min, got_max, got_avg, got_sum) = got[key];
        assert_eq!((got_end, got_count), (*end, *count), "{key:?} in {expected_file}");
        for (what, a, b) in
            [("min", got_min, *min), ("max", got_max, *max), ("avg", got_avg, *avg), ("sum", got_sum, *sum)]
        {
            assert!(close(a, b), "{what} of {key:?} in {expected_file}: {a} vs {b}");
        }
    }
}

fn very_late_readings() -> Vec<(String, i64)> {
    let meta: Value =
        serde_json::from_str(&read_conformance_file("readings_sample.jsonl.meta.json")).expect("meta");
    let mut readings: Vec<(String, i64)> = meta["very_late_readings"]
        .as_array()
        .expect("very_late_readings")
        .iter()
        .map(|pair| (pair[0].as_str().expect("sensor").to_owned(), pair[1].as_i64().expect("ts")))
        .collect();
    readings.sort();
    readings
}

#[test]
fn streaming_windows_with_ten_second_lateness_match_spark() {
    let per_window = run_sample(Duration::from_secs(10));
    check(&per_window[0].0, "expected_stream_wm10s_w10000ms_s5000ms.jsonl");
    check(&per_window[1].0, "expected_stream_wm10s_w5000ms_s5000ms.jsonl");
    for (_, late) in &per_window {
        let mut late = late.clone();
        late.sort();
        assert_eq!(late, very_late_readings(), "exactly the five very late readings are late");
    }
}

#[test]
fn windows_without_lateness_limit_match_spark_batch_results() {
    let per_window = run_sample(Duration::from_millis(u64::try_from(DAY_MS).unwrap()));
    check(&per_window[0].0, "expected_batch_w10000ms_s5000ms.jsonl");
    check(&per_window[1].0, "expected_batch_w5000ms_s5000ms.jsonl");
    assert!(per_window.iter().all(|(_, late)| late.is_empty()));
}
