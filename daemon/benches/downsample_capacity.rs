//! Benchmark: how many days of hourly coverage a disk budget holds with `storage.policy =
//! "downsample"` while the hub is away, for 1, 100 and 1000 sensor-fields.
//!
//! A store is filled through the real `Store` API with 1-minute window results (count, sum,
//! min, max, mean; one commit per minute of event time holding every sensor-field's window),
//! one registered sink that delivers nothing, and only the hour level (`downsample_levels =
//! ["1h"]`), so that the first record dropped marks the moment hourly coverage is full. At that
//! moment the store holds every hour since the start: its `used` bytes over the sensor-field-hours
//! covered is the steady cost of one sensor-field-hour (merged records, page overhead, and the
//! last minutes not merged yet), and `budget / (cost × sensor-fields × 24)` the days a budget
//! holds. The fill runs on a smaller budget (`EDDY_BENCH_BUDGET` per 1000 sensor-fields, default
//! 4 MiB, at least 256 KiB) and the days for 100 MB are computed from the measured cost; both are
//! printed.
//!
//! `cargo bench -p eddy --bench downsample_capacity`
//! Environment: `EDDY_BENCH_BUDGET` (bytes of the measured budget), `EDDY_BENCH_SENSOR_FIELDS`
//! (comma-separated, default `1,100,1000`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use eddy::engine::downsample::{Shapes, WindowShape};
use eddy::storage::{BudgetConfig, Commit, OutboxEntry, Policy, Store};

const MINUTE_MS: i64 = 60_000;
/// 2023-11-14 00:00 UTC.
const START_MS: i64 = 1_699_920_000_000;
const TARGET_BYTES: f64 = 100e6;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// The 1-minute window of sensor-field `idx` at `minute`, as the engine writes it.
fn window(idx: u64, minute: i64) -> OutboxEntry {
    let start = START_MS + minute * MINUTE_MS;
    let sensor = idx / 4;
    let field = ["temp_c", "humidity", "pressure_hpa", "co2_ppm"][usize::try_from(idx % 4).unwrap_or(0)];
    // Values that vary like real readings do (12 a minute), so that the JSON is not trivially
    // compressible.
    let base = 20.0 + f64::from(u32::try_from(sensor % 97).unwrap_or(0)) * 0.37;
    let wobble = f64::from(u32::try_from(minute.rem_euclid(1440)).unwrap_or(0)).to_radians().sin() * 3.1;
    let (min, max) = (base + wobble - 0.21, base + wobble + 0.34);
    let mean = base + wobble + 0.0123 * f64::from(u32::try_from(minute.rem_euclid(7)).unwrap_or(0));
    let payload = format!(
        r#"{{"type":"window","window":"w1m","device":"gw-01","sensor":"sensor-{sensor:05}","field":"{field}","start":{start},"end":{},"count":12,"sum":{},"min":{min},"max":{max},"mean":{mean},"id":"gw-01/w1m/sensor-{sensor:05}/{field}/{start}"}}"#,
        start + MINUTE_MS,
        mean * 12.0
    );
    OutboxEntry { kind: "window".into(), group: "Window w1m".into(), payload: payload.into_bytes() }
}

struct Measured {
    hours: f64,
    used: u64,
    merged: u64,
    written: u64,
    elapsed: Duration,
}

/// Fills a store of `budget` bytes with `sensor_fields` windows a minute until the first drop.
fn fill(sensor_fields: u64, budget: u64) -> Measured {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = BudgetConfig {
        max_bytes: Some(budget),
        policy: Policy::Downsample,
        downsample_levels: vec![Duration::from_secs(3600)],
        shapes: Shapes {
            windows: vec![WindowShape { name: "w1m".into(), length_ms: MINUTE_MS, slide_ms: MINUTE_MS }],
        },
        ..BudgetConfig::default()
    };
    let store = Store::open(dir.path(), 64 << 20, vec![], vec![])
        .and_then(|store| store.with_budget(config))
        .expect("the store opens");
    store.register_sink("hub", false, 512);
    let started = Instant::now();
    let (mut next_seq, mut minute) = (1u64, 0i64);
    loop {
        let outbox: Vec<OutboxEntry> = (0..sensor_fields).map(|idx| window(idx, minute)).collect();
        next_seq += sensor_fields;
        minute += 1;
        let clock_ms = START_MS + minute * MINUTE_MS;
        let before = store.used_bytes();
        store
            .commit(&Commit { outbox, log_pos: 0, next_seq, clock_ms, ..Commit::default() })
            .expect("commit");
        store.enforce_budget(clock_ms).expect("the budget is enforced");
        let stats = store.drop_stats();
        if stats.dropped_budget_records.load(Ordering::Relaxed) > 0 {
            // The minute just committed did not fit: the store held everything before it.
            return Measured {
                hours: f64::from(u32::try_from(minute - 1).unwrap_or(u32::MAX)) / 60.0,
                used: before,
                merged: stats.downsample_merged_records.load(Ordering::Relaxed),
                written: stats.downsample_written_records.load(Ordering::Relaxed),
                elapsed: started.elapsed(),
            };
        }
    }
}

fn main() {
    let budget = env_u64("EDDY_BENCH_BUDGET", 4 << 20);
    let sensor_fields: Vec<u64> = std::env::var("EDDY_BENCH_SENSOR_FIELDS")
        .unwrap_or_else(|_| "1,100,1000".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    println!("downsample capacity: 1-minute windows (count, sum, min, max, mean), levels [\"1h\"], budget {budget} bytes per 1000 sensor-fields");
    println!(
        "{:>13} {:>10} {:>10} {:>14} {:>10} {:>9} {:>14} {:>15} {:>7}",
        "sensor-fields",
        "budget",
        "hours held",
        "bytes/sf-hour",
        "merged",
        "written",
        "days (budget)",
        "days in 100 MB",
        "fill s"
    );
    for n in sensor_fields {
        // A budget in proportion to the sensor-fields (at least 256 KiB), so that each fill
        // covers a similar span of time: with one sensor-field, 4 MiB take millions of commits.
        let budget = (budget.saturating_mul(n) / 1000).max(256 << 10);
        let measured = fill(n, budget);
        let sf_hours = measured.hours * n as f64;
        let cost = measured.used as f64 / sf_hours;
        println!(
            "{n:>13} {budget:>10} {:>10.1} {cost:>14.1} {:>10} {:>9} {:>14.1} {:>15.1} {:>7.1}",
            measured.hours,
            measured.merged,
            measured.written,
            measured.hours / 24.0,
            TARGET_BYTES / (cost * n as f64 * 24.0),
            measured.elapsed.as_secs_f64()
        );
    }
}
