//! Flash wear: an idle eddy (sources up, nothing arriving, every result delivered) writes
//! nothing and makes no fsync, measured on the real binary through `/proc/PID/io`, its own
//! fsync counter and strace (which sees sled's calls too).

use std::process::{Command, Stdio};
use std::time::Duration;

use eddy_tests::config::ConfigToml;
use eddy_tests::{wait_until, Eddy};

use crate::api::{api_address, get};
use crate::uplink::{base_ms, readings, send};

/// How long the idle gateway is watched (the figure).
const IDLE: Duration = Duration::from_secs(60);

/// `write_bytes` of `/proc/PID/io`: what the process caused to be sent to storage.
fn written_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io is readable");
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("a write_bytes line")
}

/// `(store fsyncs, engine commits, results delivered to the sink)` from `/status`.
fn counters(eddy: &Eddy) -> (u64, u64, u64) {
    let (code, body) = get(api_address(eddy), "/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let delivered = status["uplinks"][0]["delivered"].as_u64().expect("delivered");
    (
        status["store"]["flushes"].as_u64().expect("store.flushes"),
        status["engine"]["commits"].as_u64().expect("engine.commits"),
        delivered,
    )
}

/// The file-writing and syncing calls every thread of `pid` makes during `span`, one strace
/// line each (`strace` is installed by scripts/test-all.sh).
fn storage_calls(pid: u32, span: Duration) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("strace.txt");
    let status = Command::new("timeout")
        .args(["-s", "INT", &span.as_secs().to_string(), "strace", "-f", "-qq", "-o"])
        .arg(&out)
        .args(["-e", "trace=pwrite64,pwritev,pwritev2,fsync,fdatasync,sync_file_range,rename,unlink"])
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("strace runs (scripts/test-all.sh installs it: apt-get install strace)");
    // `timeout` ends strace with SIGINT after the span: it detaches and exits 124.
    assert!(
        matches!(status.status.code(), Some(0 | 124)),
        "strace failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    std::fs::read_to_string(&out)
        .expect("strace's output")
        .lines()
        .filter(|line| !line.contains("+++") && !line.contains("---"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_idle_gateway_writes_nothing_and_makes_no_fsync() {
    let config = ConfigToml::new("gw-idle")
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "200ms")
        .key("idle_timeout", "2s")
        .table("batch")
        .key("interval", "1s")
        .table("api")
        .key("listen", "127.0.0.1:0")
        .tcp_source("in")
        .key("ack", true)
        .window("w1s", "1s")
        .key("lateness", "0s")
        .key("fields", ["temp_c"])
        .key("aggregates", ["count", "mean"])
        .file_sink("out", "{dir}/out.jsonl")
        .key("records", ["window", "batch"])
        .to_toml();
    let dir = tempfile::tempdir().expect("temp dir");
    // The periodic counters log goes to a file here (to the journal's pipe under systemd):
    // quiet it, so that what is measured is the store.
    let eddy = Eddy::start_in_with_env(dir.path(), &config, &[("EDDY_LOG", "info,eddy::ops::report=warn")])
        .expect("eddy starts");
    let pid = eddy.pid().expect("running");
    send(&eddy, &readings(base_ms(), 5, 0, 3));

    // Everything closes (watermark, then the idle timeout) and is delivered; then the store
    // has nothing left to do.
    let mut last = counters(&eddy);
    let settled = wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_secs(2));
        let now = counters(&eddy);
        let quiet = now == last && now.2 > 0;
        last = now;
        quiet
    });
    assert!(settled, "the pipeline did not settle: {last:?}\n{}", eddy.log());
    let (fsyncs, commits, delivered) = last;
    // 5 sensors x 3 one-second windows, and the micro-batches around them.
    assert!(delivered >= 15, "delivered {delivered}");

    let written = written_bytes(pid);
    let calls = storage_calls(pid, IDLE);
    assert!(calls.is_empty(), "an idle eddy wrote or synced {} times: {calls:#?}", calls.len());
    assert_eq!(
        written_bytes(pid) - written,
        0,
        "an idle eddy wrote to storage in {IDLE:?}; log:\n{}",
        eddy.log()
    );
    let (fsyncs_after, commits_after, delivered_after) = counters(&eddy);
    assert_eq!(fsyncs_after, fsyncs, "store fsyncs while idle");
    assert_eq!(commits_after, commits, "engine commits while idle");
    assert_eq!(delivered_after, delivered);
}
