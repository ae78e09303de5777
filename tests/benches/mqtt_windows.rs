//! Benchmark: MQTT to windows through a real mosquitto. A backlog of QoS 1 messages (one
//! reading each, or a JSON array of several readings of one thermostat) is queued for eddy's
//! persistent session while eddy is stopped; then the release `eddy` starts and drains it: each
//! message stored (fsync group commit), acknowledged, aggregated into two event-time windows
//! and 2 s micro-batches, results to a file. Reports readings/s from eddy's start to the last
//! reading in the results, the CPU eddy and mosquitto used meanwhile (so that which of them
//! is the limit shows), and eddy's peak RSS.
//!
//! `cargo build --release -p eddy && cargo bench -p eddy-tests --bench mqtt_windows`
//! `EDDY_BENCH_PER_MESSAGE=50 cargo bench -p eddy-tests --bench mqtt_windows` (arrays of 50)
//! Environment: `EDDY_BENCH_COUNT` (readings, default 200,000; 2,000,000 with arrays),
//! `EDDY_BENCH_SENSORS` (default 1000), `EDDY_BENCH_PER_MESSAGE` (readings per message, default
//! 1), `EDDY_BENCH_MAX_IN_FLIGHT` (the source's `max_in_flight`, default 1024, the default of
//! the source), `EDDY_BIN` (another eddy binary).

use std::process::Command;
use std::time::{Duration, Instant};

use eddy_tests::config::throughput_bench;
use eddy_tests::mosquitto::Mosquitto;
use eddy_tests::{batch_count, cpu_seconds, simulate_binary, wait_until, Eddy};

fn config(url: &str, max_in_flight: u64) -> String {
    throughput_bench()
        .mqtt_source("broker", url)
        .key("client_id", "eddy-bench")
        .key("topics", ["sensors/+/reading"])
        .key("sensor_from_topic", 1)
        .key("max_in_flight", max_in_flight)
        .to_toml()
}

fn main() {
    // `cargo test` runs benches without `--bench`: keep that quick.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let per_message: u64 = std::env::var("EDDY_BENCH_PER_MESSAGE")
        .map_or(1, |value| value.parse().expect("EDDY_BENCH_PER_MESSAGE is a whole number"));
    let count: u64 = std::env::var("EDDY_BENCH_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(
        match (quick, per_message) {
            (true, _) => 5_000,
            (false, 1) => 200_000,
            (false, _) => 2_000_000,
        },
    );
    let sensors: u64 = std::env::var("EDDY_BENCH_SENSORS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let broker = Mosquitto::start().expect("mosquitto starts");
    let max_in_flight: u64 = std::env::var("EDDY_BENCH_MAX_IN_FLIGHT")
        .map_or(1024, |value| value.parse().expect("EDDY_BENCH_MAX_IN_FLIGHT is a whole number"));
    let config = config(&broker.url(), max_in_flight);
    let dir = tempfile::tempdir().expect("temp dir");

    // Create the persistent session, then queue the backlog while eddy is away.
    let mut eddy = Eddy::start_in(dir.path(), &config).expect("eddy starts");
    assert!(wait_until(Duration::from_secs(20), || eddy.log().contains("Subscribed.")), "{}", eddy.log());
    assert!(eddy.stop().expect("eddy stops").success());
    let published = Instant::now();
    let output = Command::new(simulate_binary())
        .args(["simulate", "--mqtt", &broker.url(), "--topic", "sensors/{sensor}/reading"])
        .args(["--count", &count.to_string(), "--sensors", &sensors.to_string()])
        .args(["--per-message", &per_message.to_string()])
        .output()
        .expect("eddy simulate runs");
    let publish_secs = published.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "simulate failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let broker_pid = broker.pid().expect("mosquitto runs");
    let broker_cpu_before = cpu_seconds(broker_pid).expect("mosquitto's CPU time");
    let started = Instant::now();
    let eddy = Eddy::start_in(dir.path(), &config).expect("eddy starts again");
    let results = dir.path().join("results.jsonl");
    let drained = wait_until(Duration::from_secs(600), || {
        std::thread::sleep(Duration::from_millis(200));
        batch_count(&results, "temp_c") >= count
    });
    let elapsed = started.elapsed();
    let eddy_cpu = eddy.cpu_seconds().expect("eddy's CPU time");
    let broker_cpu = cpu_seconds(broker_pid).expect("mosquitto's CPU time") - broker_cpu_before;
    assert!(drained, "only {} of {count} readings in the results", batch_count(&results, "temp_c"));
    let peak_rss = eddy.proc_status_kib("VmHWM:").unwrap_or(0);
    let mut eddy = eddy;
    assert!(eddy.stop().expect("eddy stops").success());
    assert_eq!(batch_count(&results, "temp_c"), count, "each reading exactly once");

    let messages = count.div_ceil(per_message);
    #[allow(clippy::cast_precision_loss)]
    let rate = count as f64 / elapsed.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let publish_rate = messages as f64 / publish_secs;
    println!(
        "mqtt_windows: {count} readings in {messages} QoS 1 messages ({per_message} per message), {sensors} sensors, 2 windows + 2 s batches"
    );
    println!("mqtt_windows: backlog published in {publish_secs:.3} s ({publish_rate:.0} messages/s into mosquitto)");
    println!(
        "mqtt_windows: drained in {:.3} s, {rate:.0} readings/s (durable, acked, in the results)",
        elapsed.as_secs_f64()
    );
    let secs = elapsed.as_secs_f64();
    println!(
        "mqtt_windows: CPU during the drain: eddy {eddy_cpu:.2} s ({:.0} % of a core), mosquitto {broker_cpu:.2} s ({:.0} % of a core)",
        eddy_cpu / secs * 100.0,
        broker_cpu / secs * 100.0
    );
    println!("mqtt_windows: eddy peak RSS {peak_rss} KiB");
}
