//! Numbered TCP sessions through the real binaries: `eddy simulate --session` sent again
//! after eddy was killed and restarted is answered `dup` and stored once.

use std::process::Command;
use std::time::Duration;

use eddy_tests::config::ConfigToml;
use eddy_tests::{batch_count, eddy_binary, wait_until, Eddy};

fn config() -> String {
    ConfigToml::new("gw-session")
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .table("batch")
        .key("interval", "200ms")
        .tcp_source("in")
        .key("ack", true)
        .sink("file")
        .key("path", "{dir}/results.jsonl")
        .key("records", ["batch"])
        .to_toml()
}

/// `eddy simulate --tcp ADDR --session ID`: 800 readings of seed 7; returns its report line.
fn simulate_in_session(address: std::net::SocketAddr, session: &str) -> String {
    let output = Command::new(eddy_binary())
        .args(["simulate", "--tcp", &address.to_string(), "--session", session])
        .args(["--sensors", "4", "--count", "800", "--seed", "7"])
        .output()
        .expect("eddy simulate runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "simulate failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[test]
fn a_session_resent_after_sigkill_is_answered_dup_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let eddy = Eddy::start_in(dir.path(), &config()).expect("eddy starts");
    let report = simulate_in_session(eddy.tcp_address("in").unwrap(), "bench-7");
    assert!(report.contains("acked 800,") && report.contains("already stored 0"), "{report}");
    eddy.kill();

    // The same 800 lines again, to the restarted eddy: all were durable.
    let mut eddy = Eddy::start_in(dir.path(), &config()).expect("eddy restarts on its data");
    let report = simulate_in_session(eddy.tcp_address("in").unwrap(), "bench-7");
    assert!(report.contains("acked 0,") && report.contains("already stored 800"), "{report}");
    // Another session is another stream: stored.
    let report = simulate_in_session(eddy.tcp_address("in").unwrap(), "bench-8");
    assert!(report.contains("acked 800,"), "{report}");
    assert!(
        wait_until(Duration::from_secs(30), || batch_count(&results, "temp_c") >= 1600),
        "results hold {}; log:\n{}",
        batch_count(&results, "temp_c"),
        eddy.log()
    );
    assert!(eddy.stop().expect("eddy stops").success());
    assert_eq!(batch_count(&results, "temp_c"), 1600, "each session's readings once");
}
