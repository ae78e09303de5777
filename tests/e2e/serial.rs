//! The serial source through the real binary: a socat pseudo-terminal as the device, with
//! garbage on the line and an unplug/replug mid-line.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_tests::config::ConfigToml;
use eddy_tests::socat::SerialDevice;
use eddy_tests::{batch_count, eddy_binary, source_counter, wait_until, Eddy};

/// eddy with a serial source on the pseudo-terminal `{dir}/ttyV0`, lines of 256 bytes at most.
fn config() -> ConfigToml {
    ConfigToml::new("gw-serial")
        .table("ingest")
        .key("flush_interval", "5ms")
        .key("max_line_bytes", 256)
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .table("batch")
        .key("interval", "200ms")
        .serial_source("meter", "{dir}/ttyV0")
        .key("baud", 115200)
        .window("w", "1h")
        .key("fields", ["temp_c"])
        .sink("file")
        .key("path", "{dir}/results.jsonl")
        .key("records", ["batch"])
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn reading(sensor: &str, ts: i64) -> String {
    format!("{{\"sensor\":\"{sensor}\",\"ts\":{ts},\"temp_c\":21.5}}\n")
}

#[test]
fn serial_source_keeps_reading_through_garbage_and_an_unplug_and_never_glues_a_cut_line() {
    let mut eddy = Eddy::start(&config().to_toml()).expect("eddy starts");
    let link = eddy.dir.join("ttyV0");
    let results = eddy.dir.join("results.jsonl");
    let ts = now_ms();
    let mut device = SerialDevice::plug(&link).expect("socat starts");
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().contains("Serial port is back; reading.")
            || eddy.log().contains("Serial port open; reading.")),
        "eddy never opened the port:\n{}",
        eddy.log()
    );

    // Good lines with garbage, non-UTF-8 and an over-long line between them, then a line cut
    // short: glued to what the next device sends, it would be a valid reading.
    let mut first = reading("s1", ts);
    first.push_str("\u{7}\u{0}}{garbage\n");
    let mut bytes = first.into_bytes();
    bytes.extend_from_slice(b"{\"sensor\":\"s1\",\"ts\":1,\"temp_c\":\xfe}\n");
    bytes.extend_from_slice(format!("{}\n", "x".repeat(600)).as_bytes());
    bytes.extend_from_slice(reading("s1", ts + 1).as_bytes());
    bytes.extend_from_slice(format!("{{\"sensor\":\"s1\",\"ts\":{},", ts + 2).as_bytes());
    device.write(&bytes).expect("write");
    assert!(
        wait_until(Duration::from_secs(20), || batch_count(&results, "temp_c") == 2),
        "the two good lines never reached the results: {}\n{}",
        batch_count(&results, "temp_c"),
        eddy.log()
    );

    // Unplug, then a new device on the same path carries on mid-line.
    device.unplug().expect("socat stops");
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().contains("Serial device went away")),
        "eddy did not notice the unplug:\n{}",
        eddy.log()
    );
    let mut device = SerialDevice::plug(&link).expect("socat starts again");
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().contains("Serial port is back; reading.")),
        "eddy did not reopen the port:\n{}",
        eddy.log()
    );
    let mut bytes = b"\"temp_c\":22.0}\n".to_vec();
    bytes.extend_from_slice(reading("s1", ts + 3).as_bytes());
    bytes.extend_from_slice(reading("s2", ts + 4).as_bytes());
    device.write(&bytes).expect("write");
    assert!(
        wait_until(Duration::from_secs(20), || batch_count(&results, "temp_c") == 4),
        "the lines after the replug never reached the results: {}\n{}",
        batch_count(&results, "temp_c"),
        eddy.log()
    );

    let status = eddy.stop().expect("eddy stops");
    assert!(status.success(), "{}", eddy.log());
    let log = eddy.log();
    let counter = |key| source_counter(&log, "meter", key).unwrap_or(0);
    assert_eq!(counter("accepted"), 4, "{log}");
    assert_eq!(counter("partial_line"), 1, "the cut line is counted once: {log}");
    assert_eq!(counter("bad_utf8"), 1, "{log}");
    assert_eq!(counter("line_too_long"), 1, "{log}");
    assert_eq!(counter("bad_syntax"), 2, "the garbage line and the tail after the replug: {log}");
    assert_eq!(counter("received"), 9, "{log}");
    assert_eq!(log.matches("Serial device went away").count(), 1, "the unplug is logged once: {log}");
    assert_eq!(batch_count(&results, "temp_c"), 4, "no reading twice, none glued");
}

#[test]
fn eddy_simulate_serial_feeds_a_serial_source() {
    let eddy =
        Eddy::start(&config().table("ingest").key("max_line_bytes", 4096).to_toml()).expect("eddy starts");
    let results = eddy.dir.join("results.jsonl");
    // Two pseudo-terminals joined by socat: the simulator writes to one, eddy reads the other.
    let device_side = eddy.dir.join("ttyV0");
    let simulator_side = eddy.dir.join("ttySim");
    let socat = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", simulator_side.display()))
        .arg(format!("pty,raw,echo=0,link={}", device_side.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat starts (apt-get install socat)");
    let _socat = KillOnDrop(socat);
    assert!(wait_until(Duration::from_secs(10), || simulator_side.exists() && device_side.exists()));
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().contains("Serial port is back; reading.")),
        "{}",
        eddy.log()
    );
    let output = Command::new(eddy_binary())
        .args(["simulate", "--serial", simulator_side.to_str().unwrap(), "--baud", "115200"])
        .args(["--sensors", "5", "--count", "200"])
        .output()
        .expect("eddy simulate runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("wrote 200 readings"));
    assert!(
        wait_until(Duration::from_secs(20), || batch_count(&results, "temp_c") == 200),
        "{} of 200 readings:\n{}",
        batch_count(&results, "temp_c"),
        eddy.log()
    );
}

/// Stops a helper process however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
