//! Benchmark: `Engine::apply_chunk` throughput on one core, 1000 sensors, two event-time windows
//! (10 s sliding by 5 s, and 5 s tumbling) over two fields, plus 2 s micro-batches, with the
//! state taken out (`take_dirty`) once per second of ingest time as the daemon's commits do.
//!
//! `cargo bench -p eddy --bench engine`
//! Environment: `EDDY_BENCH_READINGS` (readings per run, default 1,000,000), `EDDY_BENCH_SENSORS`
//! (default 1000), `EDDY_BENCH_RUNS` (default 5).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy::engine::{Aggregate, Engine, EngineSpec, TimeDomain, WindowSpec};
use eddy_sensors::Reading;

/// Readings handed over in one chunk, as a busy source's batch.
const CHUNK: usize = 256;
/// Readings per second over all sensors (20 per sensor and second with 1000 sensors).
const RATE_PER_SENSOR_HZ: i64 = 20;
const START_MS: i64 = 1_700_000_000_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn spec() -> Arc<EngineSpec> {
    let aggregates = vec![Aggregate::Count, Aggregate::Sum, Aggregate::Min, Aggregate::Max, Aggregate::Mean];
    let window = |name: &str, length_secs: u64, slide_secs: u64| {
        WindowSpec::new(
            name,
            Duration::from_secs(length_secs),
            Duration::from_secs(slide_secs),
            TimeDomain::Event,
            Duration::from_secs(10),
            vec![0, 1],
            aggregates.clone(),
            vec![],
        )
        .expect("valid bench window")
    };
    Arc::new(EngineSpec {
        device_id: "gw-bench".into(),
        field_names: vec!["temp_c".into(), "humidity".into()],
        tag_names: vec![],
        batch_interval: Duration::from_secs(2),
        windows: vec![window("temp_10s", 10, 5), window("temp_5s", 5, 5)],
        idle_timeout: Duration::from_secs(60),
        outlier_after: Some(EngineSpec::DEFAULT_OUTLIER_AFTER),
        outlier_confirm: EngineSpec::DEFAULT_OUTLIER_CONFIRM,
        count_by_max_values: EngineSpec::DEFAULT_COUNT_BY_MAX_VALUES,
        tag_values_listed: Vec::new(),
        forget_after: None,
    })
}

/// Readings in arrival order: each sensor reports every 1/RATE s with up to 300 ms of jitter
/// (so some arrive out of order), 80 % of them with a humidity.
fn readings(n_readings: usize, n_sensors: usize) -> Vec<Reading> {
    let sensors: Vec<Arc<str>> = (0..n_sensors).map(|idx| Arc::from(format!("t-{idx:04}"))).collect();
    let mut rng = fastrand_lite(42);
    let n_sensors_i64 = i64::try_from(n_sensors).expect("sensor count fits i64");
    (0..n_readings)
        .map(|reading_idx| {
            let reading_idx = i64::try_from(reading_idx).expect("reading count fits i64");
            let sensor = usize::try_from(reading_idx % n_sensors_i64).expect("index fits usize");
            let tick = reading_idx / n_sensors_i64;
            let jitter = i64::try_from(rng() % 300).expect("small");
            let ts_ms = START_MS + tick * 1000 / RATE_PER_SENSOR_HZ + jitter;
            let temp = 15.0 + f64::from(u32::try_from(rng() % 1000).expect("small")) / 100.0;
            let humidity =
                (rng() % 5 != 0).then(|| 40.0 + f64::from(u32::try_from(rng() % 400).expect("small")) / 10.0);
            Reading {
                sensor: sensors[sensor].clone(),
                ts_ms,
                values: smallvec::smallvec![Some(temp), humidity],
                tags: smallvec::smallvec![],
            }
        })
        .collect()
}

/// A tiny xorshift generator: the bench needs no dependency for its input.
fn fastrand_lite(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

fn main() {
    let n_readings = env_usize("EDDY_BENCH_READINGS", 1_000_000);
    let n_sensors = env_usize("EDDY_BENCH_SENSORS", 1000);
    let n_runs = env_usize("EDDY_BENCH_RUNS", 5);
    let readings = readings(n_readings, n_sensors);
    let spec = spec();
    println!("engine bench: {n_readings} readings, {n_sensors} sensors, chunks of {CHUNK}, {n_runs} runs");
    let mut rates = Vec::new();
    for run in 0..n_runs {
        let mut engine = Engine::new(spec.clone());
        let mut out = Vec::new();
        let (mut n_outputs, mut n_state_entries, mut state_bytes) = (0usize, 0usize, 0usize);
        let mut next_commit_ms = START_MS;
        let started = Instant::now();
        for chunk in readings.chunks(CHUNK) {
            // Processing time follows event time: the gateway ingests as the sensors send.
            let ingest_ms = chunk[0].ts_ms;
            let batch = u64::try_from(ingest_ms / 2000).expect("positive");
            engine.apply_chunk(ingest_ms, batch, chunk, &mut out);
            n_outputs += out.len();
            out.clear();
            if ingest_ms >= next_commit_ms {
                let dirty = engine.take_dirty();
                n_state_entries += dirty.len();
                state_bytes += dirty
                    .iter()
                    .map(|(key, value)| key.len() + value.as_ref().map_or(0, Vec::len))
                    .sum::<usize>();
                black_box(dirty);
                next_commit_ms = ingest_ms + 1000;
            }
        }
        let elapsed = started.elapsed();
        let rate = f64::from(u32::try_from(n_readings).unwrap_or(u32::MAX)) / elapsed.as_secs_f64();
        rates.push(rate);
        let stats = engine.stats();
        println!(
            "run {run}: {:.0} ms, {:.2} M readings/s; {n_outputs} outputs, {n_state_entries} state entries ({:.1} MB), {} late, {} open windows",
            elapsed.as_secs_f64() * 1000.0,
            rate / 1e6,
            f64::from(u32::try_from(state_bytes).unwrap_or(u32::MAX)) / 1e6,
            stats.late_readings_total,
            stats.open_windows,
        );
    }
    rates.sort_by(f64::total_cmp);
    println!("median: {:.2} M readings/s per core", rates[rates.len() / 2] / 1e6);
}
