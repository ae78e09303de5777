//! The panic strategy (daemon/src/ops/panic.rs): a task that panics prints one report line
//! (thread, location, message escaped) and the process aborts, for systemd to restart it;
//! the same in this debug build as in the release build.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use eddy_tests::config::ConfigToml;
use eddy_tests::Eddy;

#[test]
fn a_panicking_task_is_reported_in_one_line_and_aborts_eddy() {
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigToml::new("gw-panic").tcp_source("in").sink("console").to_toml();
    let mut eddy = Eddy::spawn_in_with_env(dir.path(), &config, &[("EDDY_TEST_PANIC", "1")]).unwrap();
    let status = eddy.wait(Duration::from_secs(30)).expect("eddy ends by itself");
    let log = eddy.log();
    assert!(
        log.contains("EDDY_TEST_PANIC=1: "),
        "the binary lacks the `test-switches` feature (cargo build -p eddy --features test-switches):\n{log}"
    );
    assert_eq!(status.signal(), Some(libc::SIGABRT), "eddy aborts (SIGABRT): {status:?}\n{log}");
    let reports: Vec<&str> = log.lines().filter(|line| line.starts_with("eddy: panic in thread ")).collect();
    assert_eq!(reports.len(), 1, "one report line:\n{log}");
    let report = reports[0];
    assert!(report.contains(" at daemon/src/run/mod.rs:"), "the location: {report}");
    // The message's newline is escaped: the report cannot forge a second line.
    assert!(
        report.contains("EDDY_TEST_PANIC=1: a panic on purpose,\\nwith a second line; aborting"),
        "the message, escaped: {report}"
    );
    assert!(!log.lines().any(|line| line.starts_with("with a second line")), "{log}");
    // Nothing after the report: no drain, no "stopped cleanly".
    assert!(!log.contains("eddy stopped cleanly."), "{log}");
}
