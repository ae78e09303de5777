//! SIGHUP on the real binary: a changed `[log] level` is applied at once, other changed
//! settings are named as needing a restart, and an invalid file changes nothing.

use std::process::Command;
use std::time::Duration;

use eddy_tests::Eddy;

const CONFIG: &str = r#"
device_id = "gw-hup"
data_dir = "{dir}/data"
[log]
level = "info"
[[sources]]
kind = "tcp"
name = "in"
listen = "127.0.0.1:0"
[[sinks]]
kind = "file"
name = "results"
path = "{dir}/results.jsonl"
"#;

fn hangup(eddy: &Eddy) {
    let pid = eddy.pid().expect("eddy runs").to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
}

#[test]
fn sighup_applies_the_log_level_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // [log] level applies only without EDDY_LOG, which the harness sets: empty is unset.
    let mut eddy = Eddy::spawn_in_with_env(dir.path(), CONFIG, &[("EDDY_LOG", "")]).unwrap();
    eddy.wait_for_log("eddy is ready.", Duration::from_secs(30)).unwrap();
    let config_path = dir.path().join("eddy.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();

    std::fs::write(&config_path, "this is not toml [").unwrap();
    hangup(&eddy);
    eddy.wait_for_log("SIGHUP: invalid configuration; keeping the running one.", Duration::from_secs(10))
        .unwrap();

    let changed =
        text.replace("level = \"info\"", "level = \"eddy=debug,info\"").replace("gw-hup", "gw-other");
    std::fs::write(&config_path, changed).unwrap();
    hangup(&eddy);
    eddy.wait_for_log("SIGHUP: log level applied.", Duration::from_secs(10)).unwrap();
    eddy.wait_for_log("take effect only after a restart", Duration::from_secs(10)).unwrap();
    let log = eddy.log();
    let warning = log.lines().find(|line| line.contains("take effect only after a restart")).unwrap();
    assert!(warning.contains("device_id") && !warning.contains("\"log\""), "{warning}");
    assert!(!log.contains("DEBUG"), "no debug line before the reload:\n{log}");
    assert!(eddy.stop().expect("eddy stops").success());
    // The drain logs each stopped component at debug level: shown only with the new level.
    assert!(eddy.log().contains("Component stopped."), "{}", eddy.log());
}
