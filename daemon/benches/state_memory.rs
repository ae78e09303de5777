//! Benchmark: the engine's memory per open window key, measured exactly with a counting global
//! allocator: live heap bytes after N sensors each opened their windows, over the engine's
//! open keys (window × sensor × field, as `open_keys` in eddy's "Engine state restored." line)
//! and over its open windows. Two event-time windows (10 s sliding by 5 s, 5 s tumbling) over
//! the three thermostat fields with count/sum/min/max/mean, and 2 s micro-batches: the
//! two-window configuration of the `ingest_tcp` bench.
//!
//! `cargo bench -p eddy --bench state_memory`
//! Environment: `EDDY_BENCH_SENSORS` (comma-separated, default `100,1000,10000,100000`),
//! `EDDY_BENCH_READINGS_PER_SENSOR` (default 4, all inside the first 5 s so nothing closes),
//! `EDDY_BENCH_COUNT_BY=1` (both windows also count by the thermostat's `mode` tag, which
//! alternates between two listed values, as `count_by = ["mode"]` does).

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use eddy::engine::{Aggregate, Engine, EngineSpec, TimeDomain, WindowSpec};
use eddy_sensors::Reading;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

/// The system allocator, counting (stats_alloc: no unsafe code of ours).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const START_MS: i64 = 1_700_000_000_000;

fn spec(count_by: bool) -> Arc<EngineSpec> {
    let aggregates = vec![Aggregate::Count, Aggregate::Sum, Aggregate::Min, Aggregate::Max, Aggregate::Mean];
    let window = |name: &str, length_secs: u64, slide_secs: u64| {
        WindowSpec::new(
            name,
            Duration::from_secs(length_secs),
            Duration::from_secs(slide_secs),
            TimeDomain::Event,
            Duration::from_secs(5),
            vec![0, 1, 2],
            aggregates.clone(),
            if count_by { vec![0] } else { vec![] },
        )
        .expect("valid bench window")
    };
    Arc::new(EngineSpec {
        device_id: "gw-bench".into(),
        field_names: vec!["temp_c".into(), "humidity".into(), "setpoint_c".into()],
        tag_names: if count_by { vec!["mode".into()] } else { vec![] },
        batch_interval: Duration::from_secs(2),
        windows: vec![window("temp_10s", 10, 5), window("temp_5s", 5, 5)],
        idle_timeout: Duration::from_secs(3600),
        outlier_after: Some(EngineSpec::DEFAULT_OUTLIER_AFTER),
        outlier_confirm: EngineSpec::DEFAULT_OUTLIER_CONFIRM,
        count_by_max_values: EngineSpec::DEFAULT_COUNT_BY_MAX_VALUES,
        tag_values_listed: if count_by { vec![true] } else { Vec::new() },
        forget_after: None,
    })
}

fn main() {
    let counts: Vec<usize> = std::env::var("EDDY_BENCH_SENSORS")
        .unwrap_or_else(|_| "100,1000,10000,100000".to_owned())
        .split(',')
        .map(|n| n.trim().parse().expect("EDDY_BENCH_SENSORS: comma-separated counts"))
        .collect();
    let per_sensor: i64 = std::env::var("EDDY_BENCH_READINGS_PER_SENSOR")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(4);
    // Aligned to a 10 s boundary: the readings fall in [START, START + 4 s), one tumbling and
    // two sliding windows open per sensor and field, none closes.
    let start = START_MS - START_MS.rem_euclid(10_000);
    let count_by = std::env::var("EDDY_BENCH_COUNT_BY").is_ok_and(|value| value == "1");
    // Interned, as the sources hand out a listed tag value.
    let modes: [Arc<str>; 2] = [Arc::from("heat"), Arc::from("cool")];
    println!(
        "state_memory: 2 windows (10 s / 5 s, 5 s) x 3 fields{}, {per_sensor} readings per sensor",
        if count_by { " + count_by mode" } else { "" }
    );
    println!("state_memory: sensors | open windows | open keys | live heap bytes | bytes per open key | bytes per sensor");
    let spec = spec(count_by);
    for n_sensors in counts {
        let names: Vec<Arc<str>> = (0..n_sensors).map(|idx| Arc::from(format!("t-{idx:06}"))).collect();
        let readings: Vec<Reading> = (0..per_sensor)
            .flat_map(|step| {
                let modes = &modes;
                names.iter().map(move |sensor| Reading {
                    sensor: sensor.clone(),
                    ts_ms: start + step * 1000,
                    values: smallvec::smallvec![Some(21.5), Some(45.0), Some(21.0)],
                    tags: if count_by {
                        smallvec::smallvec![Some(modes[usize::try_from(step).unwrap_or(0) % 2].clone())]
                    } else {
                        smallvec::smallvec![]
                    },
                })
            })
            .collect();
        let region = Region::new(GLOBAL);
        let mut engine = Engine::new(spec.clone());
        let mut out = Vec::new();
        for chunk in readings.chunks(256) {
            engine.apply_chunk(chunk[0].ts_ms, 0, chunk, &mut out);
            out.clear();
        }
        // As after a commit: the dirty lists are taken and the state written out.
        drop(engine.take_dirty());
        let change = region.change();
        let live = (change.bytes_allocated + change.bytes_reallocated.max(0).unsigned_abs())
            .saturating_sub(change.bytes_deallocated + change.bytes_reallocated.min(0).unsigned_abs());
        let stats = engine.stats();
        #[allow(clippy::cast_precision_loss)]
        let per_key = live as f64 / stats.open_keys.max(1) as f64;
        #[allow(clippy::cast_precision_loss)]
        let per_sensor_bytes = live as f64 / n_sensors.max(1) as f64;
        println!(
            "state_memory: {n_sensors} | {} | {} | {live} | {per_key:.0} | {per_sensor_bytes:.0}",
            stats.open_windows, stats.open_keys
        );
        drop(engine);
    }
}
