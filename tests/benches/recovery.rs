//! Benchmark: recovery time after `kill -9` with 100,000 open keys. 12,500 thermostats each
//! have two open windows (10 min sliding by 5 min) over three fields and the `mode` counts:
//! 12,500 × 2 × (3 + 1) = 100,000 open (sensor, field, window) keys, as the engine counts them
//! (`open_keys` in eddy's "Engine state restored." line). eddy is killed with SIGKILL right
//! after the last reading was acked (so a tail of the log is replayed too), restarted, and timed
//! from process start to "eddy is ready." (state loaded, log replayed, sources up) and to the
//! first window result in the file sink (a reading that closes one sensor's windows is sent as
//! soon as eddy is ready; `checkpoint_interval` is 100 ms).
//!
//! `cargo build --release -p eddy && cargo bench -p eddy-tests --bench recovery`
//! Environment: `EDDY_BENCH_SENSORS` (default 12500), `EDDY_BENCH_RESTARTS` (default 5).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_tests::config::ConfigToml;
use eddy_tests::{eddy_binary, send_with_acks, Eddy};

fn config() -> String {
    ConfigToml::new("gw-recovery")
        .table("ingest")
        .key("flush_interval", "10ms")
        .key("max_sensors", 100_000)
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .key("idle_timeout", "1h")
        .tcp_source("in")
        .key("ack", true)
        .window("env_10m", "10m")
        .key("slide", "5m")
        .key("lateness", "0s")
        .key("fields", ["temp_c", "humidity", "setpoint_c"])
        .key("aggregates", ["count", "mean", "min", "max"])
        .key("count_by", ["mode"])
        .file_sink("results", "{dir}/results.jsonl")
        .key("records", ["window"])
        .to_toml()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn line_count(path: &Path) -> usize {
    std::fs::read(path).map(|bytes| bytes.iter().filter(|byte| **byte == b'\n').count()).unwrap_or(0)
}

/// A field of eddy's log line containing `marker`, e.g. `open_keys`.
fn log_field(log: &str, marker: &str, key: &str) -> Option<String> {
    let wanted = format!(" {key}=");
    let line = log.lines().rfind(|line| line.contains(marker) && line.contains(&wanted))?;
    line.split_whitespace().find_map(|word| word.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

struct Restart {
    ready: Duration,
    first_result: Duration,
    log: String,
}

/// Starts eddy on `dir` (config already written), timing readiness with a 1 ms poll, sends
/// `closing` and times the first new result; leaves eddy running in `child`.
fn restart(dir: &Path, closing: &str) -> (Child, Restart) {
    let log_path = dir.join("bench-stderr.log");
    let results = dir.join("results.jsonl");
    let results_before = line_count(&results);
    let started = Instant::now();
    let child = Command::new(eddy_binary())
        .args(["run", "--config"])
        .arg(dir.join("eddy.toml"))
        .current_dir(dir)
        .env("EDDY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("eddy starts");
    let deadline = started + Duration::from_secs(60);
    while !std::fs::read_to_string(&log_path).unwrap_or_default().contains("eddy is ready.") {
        assert!(Instant::now() < deadline, "eddy not ready in 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let ready = started.elapsed();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let address = log_field(&log, "TCP source listening.", "address").expect("listening address");
    let mut stream = TcpStream::connect(address.as_str()).expect("connect");
    stream.write_all(closing.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    let mut ack = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut ack).unwrap();
    assert!(ack.starts_with("ack 1"), "{ack}");
    while line_count(&results) <= results_before {
        assert!(Instant::now() < deadline, "no result in 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    let first_result = started.elapsed();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    (child, Restart { ready, first_result, log })
}

fn main() {
    let sensors = env_usize("EDDY_BENCH_SENSORS", 12_500);
    let restarts = env_usize("EDDY_BENCH_RESTARTS", 5);
    // A 5-minute slot an hour ago: every reading lies in it, so both windows holding it stay
    // open until a reading 10 minutes later arrives.
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let slot = (now - 3_600_000) / 300_000 * 300_000;
    let modes = ["heat", "cool", "off", "auto"];

    let mut eddy = Eddy::start(&config()).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let mut lines = Vec::new();
    for round in 0..2i64 {
        for sensor in 0..sensors {
            let wobble = f64::from(u32::try_from(sensor % 40).unwrap()) / 10.0;
            lines.push(format!(
                r#"{{"sensor":"t-{sensor:05}","ts":{},"temp_c":{:.1},"humidity":{:.1},"setpoint_c":21.0,"mode":"{}"}}"#,
                slot + round * 1000 + i64::try_from(sensor % 1000).unwrap(),
                19.0 + wobble,
                40.0 + wobble,
                modes[sensor % 4]
            ));
        }
    }
    let filled = Instant::now();
    for batch in lines.chunks(20_000) {
        let refs: Vec<&[u8]> = batch.iter().map(String::as_bytes).collect();
        let replies = send_with_acks(address, &refs, Duration::from_secs(120)).expect("acked");
        assert_eq!(replies.acked, u64::try_from(batch.len()).unwrap());
    }
    // Killed right after the last ack: the newest readings are only in the log.
    eddy.kill();
    eddy.wait(Duration::from_secs(10)).unwrap();
    println!(
        "recovery: {} readings from {sensors} sensors acked in {:.1} s, then kill -9",
        lines.len(),
        filled.elapsed().as_secs_f64()
    );

    let dir = eddy.dir.clone();
    let mut readies = Vec::new();
    let mut firsts = Vec::new();
    for run in 0..restarts {
        // Each restart closes the windows of one more sensor (its watermark moves 10 min on).
        let closing = format!(
            r#"{{"sensor":"t-{run:05}","ts":{},"temp_c":20.0,"humidity":40.0,"setpoint_c":21.0,"mode":"heat"}}"#,
            slot + 600_000
        );
        let (mut child, timing) = restart(&dir, &closing);
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "  restart {run}: ready {:.0} ms, first result {:.0} ms (open_keys={} state entries={} \
             replayed chunks={} replay {} ms)",
            timing.ready.as_secs_f64() * 1000.0,
            timing.first_result.as_secs_f64() * 1000.0,
            log_field(&timing.log, "Engine state restored.", "open_keys").unwrap_or_default(),
            log_field(&timing.log, "Engine state restored.", "entries").unwrap_or_default(),
            log_field(&timing.log, "Log replayed.", "chunks").unwrap_or_default(),
            log_field(&timing.log, "Log replayed.", "elapsed_ms").unwrap_or_default(),
        );
        readies.push(timing.ready.as_secs_f64() * 1000.0);
        firsts.push(timing.first_result.as_secs_f64() * 1000.0);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "recovery: median of {restarts} restarts: ready {:.0} ms, first result {:.0} ms",
        median(&mut readies),
        median(&mut firsts)
    );
}
