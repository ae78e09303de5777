//! Benchmark: window result latency — from the ingest task's receipt of the reading that moves
//! a sensor's watermark past a window's end to the result committed in the outbox (durable,
//! visible to the sinks) — at a steady paced load, for several `engine.checkpoint_interval`
//! and `ingest.flush_interval` settings, with the fsyncs per second each setting costs.
//!
//! eddy measures the latency itself (`/status` `engine.result_p50_ms`, `result_p99_ms`,
//! `result_max_ms`; `/metrics` `eddy_window_result_latency_seconds`): per window result, the
//! time from the receipt of the group holding the closing reading to the end of the commit's
//! fsync. The load is `eddy simulate --tcp --ack --rate` from 1000 thermostats with event
//! time = wall clock, two windows (10 s sliding by 5 s, 5 s tumbling, lateness 5 s) and 2 s
//! micro-batches (the two-window configuration of `ingest_tcp`).
//!
//! `cargo build --release -p eddy && cargo bench -p eddy-tests --bench latency`
//! Environment: `EDDY_BENCH_RATES` (readings/s, default `10000,100000`), `EDDY_BENCH_SECONDS`
//! (per run, default 25), `EDDY_BENCH_SENSORS` (default 1000), `EDDY_BENCH_SETTINGS`
//! (`checkpoint/flush[/result_commit_delay]`, comma-separated, default
//! `1s/10ms,100ms/10ms,10ms/10ms,5ms/2ms,1s/10ms/0s,1s/2ms/0s`), `EDDY_BIN` (another eddy
//! binary).

use std::process::Command;
use std::time::{Duration, Instant};

use eddy_tests::config::throughput_bench_windows;
use eddy_tests::{eddy_binary, simulate_binary, Eddy};

struct Run {
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    results: u64,
    fsyncs_per_s: f64,
    commits_per_s: f64,
    cpu_share: f64,
    peak_rss: u64,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn run(rate: u64, sensors: u64, seconds: u64, checkpoint: &str, flush: &str, delay: Option<&str>) -> Run {
    let mut config = throughput_bench_windows(2).table("engine").key("checkpoint_interval", checkpoint);
    if let Some(delay) = delay {
        config = config.key("result_commit_delay", delay);
    }
    let config = config
        .table("ingest")
        .key("flush_interval", flush)
        .tcp_source("in")
        .key("ack", true)
        .table("api")
        .key("listen", "127.0.0.1:0")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let address = eddy.tcp_address("in").expect("address");
    let before = eddy.status_json().expect("/status");
    let cpu_before = eddy.cpu_seconds().expect("eddy's CPU time");
    let per_sensor = (rate / sensors).max(1);
    let started = Instant::now();
    let output = Command::new(simulate_binary())
        .args(["simulate", "--tcp", &address.to_string(), "--ack"])
        .args(["--count", &(rate * seconds).to_string(), "--sensors", &sensors.to_string()])
        .args(["--rate", &per_sensor.to_string()])
        .output()
        .expect("eddy simulate runs");
    assert!(
        output.status.success(),
        "simulate failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last commit happen.
    std::thread::sleep(Duration::from_millis(1500));
    let cpu = eddy.cpu_seconds().expect("eddy's CPU time") - cpu_before;
    let after = eddy.status_json().expect("/status");
    let peak_rss = eddy.proc_status_kib("VmHWM:").unwrap_or(0);
    assert!(eddy.stop().expect("eddy stops").success());
    let engine = &after["engine"];
    let delta =
        |doc: &serde_json::Value, pointer: &str| doc.pointer(pointer).and_then(serde_json::Value::as_u64);
    let counted = |pointer: &str| {
        let now = delta(&after, pointer).unwrap_or_else(|| panic!("{pointer} in /status: {after}"));
        now - delta(&before, pointer).unwrap_or(0)
    };
    let span = elapsed + 1.5;
    #[allow(clippy::cast_precision_loss)]
    Run {
        p50: engine["result_p50_ms"].as_f64(),
        p99: engine["result_p99_ms"].as_f64(),
        max: engine["result_max_ms"].as_f64(),
        results: engine["result_latency_count"].as_u64().unwrap_or(0),
        fsyncs_per_s: counted("/store/flushes") as f64 / span,
        commits_per_s: counted("/engine/commits") as f64 / span,
        cpu_share: cpu / span,
        peak_rss,
    }
}

fn main() {
    // `cargo test` runs benches without `--bench`: one short run.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let rates: Vec<u64> = env_or("EDDY_BENCH_RATES", if quick { "2000" } else { "10000,100000" })
        .split(',')
        .map(|rate| rate.trim().parse().expect("EDDY_BENCH_RATES: readings/s, comma-separated"))
        .collect();
    let seconds: u64 = env_or("EDDY_BENCH_SECONDS", if quick { "12" } else { "25" })
        .parse()
        .expect("EDDY_BENCH_SECONDS: whole seconds");
    let sensors: u64 = env_or("EDDY_BENCH_SENSORS", "1000").parse().expect("EDDY_BENCH_SENSORS: a count");
    let settings = env_or(
        "EDDY_BENCH_SETTINGS",
        if quick { "1s/2ms/0s" } else { "1s/10ms,100ms/10ms,10ms/10ms,5ms/2ms,1s/10ms/0s,1s/2ms/0s" },
    );
    let show = |ms: Option<f64>| ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms}"));
    println!(
        "latency: {sensors} sensors, 2 windows + 2 s batches, ack after fsync, {seconds} s per run, binary {}",
        eddy_binary().display()
    );
    println!(
        "latency: readings/s | checkpoint/flush/result_commit_delay | results | p50 ms | p99 ms | max ms | fsyncs/s | commits/s | eddy CPU | peak RSS KiB"
    );
    for rate in &rates {
        for setting in settings.split(',') {
            let mut parts = setting.trim().split('/');
            let (Some(checkpoint), Some(flush)) = (parts.next(), parts.next()) else {
                panic!("EDDY_BENCH_SETTINGS: checkpoint/flush[/result_commit_delay], not `{setting}`")
            };
            let delay = parts.next();
            let run = run(*rate, sensors, seconds, checkpoint, flush, delay);
            assert!(run.results > 0, "no window result measured at {rate}/s with {setting}");
            println!(
                "latency: {rate} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} % | {}",
                setting.trim(),
                run.results,
                show(run.p50),
                show(run.p99),
                show(run.max),
                run.fsyncs_per_s,
                run.commits_per_s,
                run.cpu_share * 100.0,
                run.peak_rss
            );
        }
    }
}
