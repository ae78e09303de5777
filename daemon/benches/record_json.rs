//! Benchmark: a window-close burst's records to JSON (`ResultRecord::to_json`), the step the
//! aggregator takes for every result before sealing it into the outbox: 1,000 sensors, two
//! windows with three fields (count, mean, min, max) and counts by one tag, and the 2 s
//! micro-batch of the same sensors — the latency bench's close burst (#18, goal 4).
//!
//! `cargo bench -p eddy --bench record_json`
//! Environment: `EDDY_BENCH_SENSORS` (default 1000), `EDDY_BENCH_RUNS` (default 5). Prints
//! records per second and ns per record for each run; deterministic, so
//! `valgrind --tool=callgrind` on it (`EDDY_BENCH_RUNS=1`) counts what a change saves.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use eddy::engine::record::{BatchRecord, FieldStats, ResultRecord, WindowCountsRecord, WindowRecord};
use eddy::engine::Aggregate;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// The records of one close burst: per sensor, both windows' three fields and their counts,
/// then the micro-batch's three fields.
fn burst(n_sensors: usize) -> Vec<ResultRecord> {
    let device: Arc<str> = Arc::from("gw-bench-01");
    let windows: [Arc<str>; 2] = [Arc::from("temp_10s"), Arc::from("temp_1m")];
    let fields: [Arc<str>; 3] = [Arc::from("temp_c"), Arc::from("humidity"), Arc::from("setpoint_c")];
    let tag: Arc<str> = Arc::from("mode");
    let modes: [Arc<str>; 3] = [Arc::from("cool"), Arc::from("heat"), Arc::from("off")];
    let aggregates: Arc<[Aggregate]> =
        Arc::from(vec![Aggregate::Count, Aggregate::Mean, Aggregate::Min, Aggregate::Max]);
    let start_ms = 1_764_000_000_000_i64;
    let mut records = Vec::new();
    for sensor_idx in 0..n_sensors {
        let sensor: Arc<str> = Arc::from(format!("t-{sensor_idx:05}"));
        // Values as thermostats give them: one decimal; sums and means of 19 of them with
        // the long tails of binary fractions (20.873684210526317).
        let wobble = f64::from(u32::try_from(sensor_idx % 97).unwrap_or(0)) / 10.0;
        let stats = |base: f64| FieldStats {
            count: 19,
            sum: (0..19).map(|n| base + f64::from(n % 5) / 10.0).sum(),
            min: base,
            max: base + 0.4,
            mean: (0..19).map(|n| base + f64::from(n % 5) / 10.0).sum::<f64>() / 19.0,
            stddev: None,
            first: base,
            last: base,
        };
        for window in &windows {
            for (field, base) in fields.iter().zip([20.5 + wobble, 41.0 + wobble, 21.0]) {
                records.push(ResultRecord::Window(WindowRecord {
                    window: window.clone(),
                    device: device.clone(),
                    sensor: sensor.clone(),
                    field: field.clone(),
                    start_ms,
                    end_ms: start_ms + 10_000,
                    aggregates: aggregates.clone(),
                    stats: stats(base),
                }));
            }
            records.push(ResultRecord::WindowCounts(WindowCountsRecord {
                window: window.clone(),
                device: device.clone(),
                sensor: sensor.clone(),
                tag: tag.clone(),
                start_ms,
                end_ms: start_ms + 10_000,
                counts: modes.iter().zip([7, 12, 1]).map(|(mode, n)| (mode.clone(), n)).collect(),
                other: 0,
            }));
        }
        for (field, base) in fields.iter().zip([20.5 + wobble, 41.0 + wobble, 21.0]) {
            records.push(ResultRecord::Batch(BatchRecord {
                batch: 882_000_000,
                device: device.clone(),
                sensor: sensor.clone(),
                field: field.clone(),
                start_ms,
                end_ms: start_ms + 2000,
                stats: stats(base),
            }));
        }
    }
    records
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let n_sensors = env_usize("EDDY_BENCH_SENSORS", 1000);
    let runs = env_usize("EDDY_BENCH_RUNS", 5);
    let records = burst(n_sensors);
    println!("record_json: {} records of a close burst ({n_sensors} sensors)", records.len());
    for run in 0..runs {
        let started = Instant::now();
        let mut bytes = 0usize;
        for record in &records {
            bytes += black_box(record.to_json()).len();
        }
        let elapsed = started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let n = records.len() as f64;
        println!(
            "  run {run}: {:.0} records/s, {:.0} ns per record, {:.0} bytes per record",
            n / elapsed,
            elapsed * 1e9 / n,
            bytes as f64 / n
        );
    }
}
