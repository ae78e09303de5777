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
//! Environment: `EDDY_BENCH_SENSORS` (default 12500; 125000 gives 1,000,000 open keys),
//! `EDDY_BENCH_RESTARTS` (default 5), `EDDY_BENCH_KILL_AFTER_MS` (default 0: how long after the
//! fill's last ack the kill comes), `EDDY_BENCH_SETTLE_MS` (default 3000: how long eddy runs
//! after its first result before the next kill), `EDDY_BENCH_KEEP_DIR` (copies the killed store
//! there before the restarts), `EDDY_BENCH_RESULT_COMMIT_DELAY` (e.g. `0s`: the first result is
//! committed right after its closing reading, not at the next checkpoint). Each restart also reports eddy's CPU time (user + sys)
//! and peak RSS (`VmHWM`) when the first result is in; the summary gives median, min and max.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_tests::config::ConfigToml;
use eddy_tests::{eddy_binary, send_with_acks, Eddy};

fn config(sensors: usize) -> String {
    // `EDDY_BENCH_RESULT_COMMIT_DELAY` (e.g. `0s`): commit the first window result right after
    // its closing reading instead of at the next 100 ms checkpoint.
    let delay = std::env::var("EDDY_BENCH_RESULT_COMMIT_DELAY").ok();
    let base = ConfigToml::new("gw-recovery");
    let base = match &delay {
        Some(delay) => base.table("engine").key("result_commit_delay", delay.as_str()),
        None => base,
    };
    base.table("ingest")
        .key("flush_interval", "10ms")
        .key("max_sensors", sensors.max(100_000))
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .key("idle_timeout", "1h")
        // The closing reading is 10 minutes ahead of its sensor's clock in event time, but
        // comes seconds to minutes later in processing time: the future-outlier hold (issue
        // #13, newer than this bench) would hold it instead of closing the windows.
        .key("outlier_after", "off")
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
    /// eddy's user + sys CPU time and peak RSS when the first result was in.
    cpu: Duration,
    peak_rss_kib: u64,
    log: String,
}

/// User + sys CPU time of process `pid` (fields 14 and 15 of `/proc/PID/stat`, in clock ticks,
/// 100 a second on Linux).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name.split_whitespace().map(|field| field.parse().unwrap_or(0)).collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn mib(kib: u64) -> f64 {
    f64::from(u32::try_from(kib).unwrap_or(u32::MAX)) / 1024.0
}

/// Peak resident set size of process `pid` (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
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
    let cpu = cpu_time(child.id());
    let peak_rss_kib = peak_rss_kib(child.id());
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    (child, Restart { ready, first_result, cpu, peak_rss_kib, log })
}

fn main() {
    let sensors = env_usize("EDDY_BENCH_SENSORS", 12_500);
    let restarts = env_usize("EDDY_BENCH_RESTARTS", 5);
    // A 5-minute slot an hour ago: every reading lies in it, so both windows holding it stay
    // open until a reading 10 minutes later arrives.
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let slot = (now - 3_600_000) / 300_000 * 300_000;
    let modes = ["heat", "cool", "off", "auto"];

    let mut eddy = Eddy::start(&config(sensors)).expect("eddy starts");
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
    // Killed right after the last ack: the newest readings are only in the log, and every
    // sensor's micro-batch is open. `EDDY_BENCH_KILL_AFTER_MS` waits first (a micro-batch
    // interval and a checkpoint: the batch emitted and committed, the log trimmed).
    std::thread::sleep(Duration::from_millis(
        u64::try_from(env_usize("EDDY_BENCH_KILL_AFTER_MS", 0)).unwrap_or(0),
    ));
    eddy.kill();
    eddy.wait(Duration::from_secs(10)).unwrap();
    println!(
        "recovery: {} readings from {sensors} sensors acked in {:.1} s, then kill -9",
        lines.len(),
        filled.elapsed().as_secs_f64()
    );

    let dir = eddy.dir.clone();
    // A copy of the killed store, to time restarts by hand (perf, other builds).
    if let Ok(keep) = std::env::var("EDDY_BENCH_KEEP_DIR") {
        let copied = Command::new("cp").arg("-a").arg(&dir).arg(&keep).status().expect("cp runs");
        assert!(copied.success(), "cannot copy {} to {keep}", dir.display());
    }
    let mut readies = Vec::new();
    let mut firsts = Vec::new();
    let mut cpus = Vec::new();
    let mut rsss = Vec::new();
    for run in 0..restarts {
        // Each restart closes the windows of one more sensor (its watermark moves 10 min on).
        let closing = format!(
            r#"{{"sensor":"t-{run:05}","ts":{},"temp_c":20.0,"humidity":40.0,"setpoint_c":21.0,"mode":"heat"}}"#,
            slot + 600_000
        );
        let (mut child, timing) = restart(&dir, &closing);
        // Let the background load finish before the kill, so that the next restart finds the
        // state this one committed (a kill mid-load is measured by restart 0 already).
        std::thread::sleep(Duration::from_millis(
            u64::try_from(env_usize("EDDY_BENCH_SETTLE_MS", 3000)).unwrap_or(0),
        ));
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "  restart {run}: ready {:.0} ms, first result {:.0} ms, cpu {:.0} ms, peak RSS {:.1} MiB \
             (open_keys={} state entries={} pages={} pages_later={} replayed chunks={} replay {} ms)",
            timing.ready.as_secs_f64() * 1000.0,
            timing.first_result.as_secs_f64() * 1000.0,
            timing.cpu.as_secs_f64() * 1000.0,
            mib(timing.peak_rss_kib),
            log_field(&timing.log, "Engine state restored.", "open_keys").unwrap_or_default(),
            log_field(&timing.log, "Engine state restored.", "entries").unwrap_or_default(),
            // State pages loaded at open, and left to load as readings and idle steps come.
            log_field(&timing.log, "Engine state restored.", "pages").unwrap_or_default(),
            log_field(&timing.log, "Engine state restored.", "pages_later").unwrap_or_default(),
            log_field(&timing.log, "Log replayed.", "chunks").unwrap_or_default(),
            log_field(&timing.log, "Log replayed.", "elapsed_ms").unwrap_or_default(),
        );
        readies.push(timing.ready.as_secs_f64() * 1000.0);
        firsts.push(timing.first_result.as_secs_f64() * 1000.0);
        cpus.push(timing.cpu.as_secs_f64() * 1000.0);
        rsss.push(mib(timing.peak_rss_kib));
    }
    // Median (the upper one for an even count), min and max.
    let spread = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        (values[values.len() / 2], values[0], values[values.len() - 1])
    };
    let (ready, ready_min, ready_max) = spread(&mut readies);
    let (first, first_min, first_max) = spread(&mut firsts);
    let (cpu, cpu_min, cpu_max) = spread(&mut cpus);
    let (rss, rss_min, rss_max) = spread(&mut rsss);
    println!(
        "recovery: median (min–max) of {restarts} restarts: ready {ready:.0} ms ({ready_min:.0}–{ready_max:.0}), \
         first result {first:.0} ms ({first_min:.0}–{first_max:.0}), cpu {cpu:.0} ms ({cpu_min:.0}–{cpu_max:.0}), \
         peak RSS {rss:.1} MiB ({rss_min:.1}–{rss_max:.1})"
    );
}
