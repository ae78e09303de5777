//! No setting reaches a panic: for every duration and number key, extreme values (zero,
//! negative, 1e-18, 1e18, NaN, i64::MAX, `100000000y`, u64::MAX seconds) and the key's largest
//! accepted value are written into an otherwise valid configuration. Each is either refused by
//! `eddy check-config` (exit 2, naming the key) or, when accepted, `eddy run` starts and stops
//! cleanly on SIGTERM, with no panic report.

use std::path::Path;
use std::process::Command;

use eddy_tests::{eddy_binary, Eddy};

/// Extreme values of a duration key (TOML strings)
/// (`500ms`: below a second, which rumqttc's keep-alive asserts against.)
const DURATIONS: &[&str] = &[
    "\"0s\"",
    "\"1ns\"",
    "\"500ms\"",
    "\"-1s\"",
    "\"1e-18\"",
    "\"100000000y\"",
    "\"18446744073709551615s\"",
];
/// Extreme values of an integer key.
const INTEGERS: &[&str] = &["0", "-1", "9223372036854775807"];
/// Extreme values of a floating-point key.
const FLOATS: &[&str] = &["1e-18", "1e18", "nan", "inf", "-inf", "-1.0", "0.0"];

/// Each key, its extremes, and its largest value that must be accepted (and run).
const CASES: &[(&str, &[&str], &str)] = &[
    ("shutdown_timeout", DURATIONS, "\"1day\""),
    ("ingest.flush_interval", DURATIONS, "\"1s\""),
    ("ingest.max_future", DURATIONS, "\"1day\""),
    ("ingest.max_line_bytes", INTEGERS, "1048576"),
    ("ingest.max_sensors", INTEGERS, "10000000"),
    ("engine.checkpoint_interval", DURATIONS, "\"1day\""),
    ("engine.idle_timeout", DURATIONS, "\"1day\""),
    ("engine.outlier_after", DURATIONS, "\"1day\""),
    ("engine.forget_after", DURATIONS, "\"366days\""),
    ("engine.outlier_confirm", INTEGERS, "3"),
    ("engine.count_by_max_values", INTEGERS, "1"),
    ("batch.interval", DURATIONS, "\"1day\""),
    ("storage.cache_capacity", INTEGERS, "1073741824"),
    ("storage.max_bytes", INTEGERS, "1099511627776"),
    ("storage.ttl", DURATIONS, "\"3650days\""),
    ("windows[0].length", DURATIONS, "\"366days\""),
    ("windows[0].slide", DURATIONS, "\"10s\""), // at most the length
    ("windows[0].lateness", DURATIONS, "\"366days\""),
    ("sources[0].idle_timeout", DURATIONS, "\"1day\""),
    ("sources[0].auth_timeout", DURATIONS, "\"1day\""),
    ("sources[0].reply_timeout", DURATIONS, "\"1day\""),
    ("sources[0].max_connections", INTEGERS, "4096"), // at most max_sessions (4096)
    ("sources[0].max_reply_bytes", INTEGERS, "67108864"),
    ("sources[0].max_session_skip_lines", INTEGERS, "1000000"),
    ("sources[1].rate", FLOATS, "1000000.0"),
    ("sinks[0].batch_max_records", INTEGERS, "10000"),
    ("sinks[0].linger", DURATIONS, "\"60s\""),
    ("sinks[0].rate_limit", FLOATS, "0.01"),
    ("sinks[0].max_backoff", DURATIONS, "\"1day\""),
    ("sinks[0].max_file_bytes", INTEGERS, "9223372036854775807"),
    ("sinks[0].max_files", INTEGERS, "1000"),
    ("sinks[1].keep_alive", DURATIONS, "\"65535s\""),
    ("sinks[1].ack_timeout", DURATIONS, "\"1day\""),
    ("sinks[1].connect_timeout", DURATIONS, "\"1day\""),
    ("sinks[1].records_per_message", INTEGERS, "10000"),
    ("sinks[1].max_message_bytes", INTEGERS, "268435456"),
    ("sinks[2].timeout", DURATIONS, "\"1day\""),
    ("sinks[2].connect_timeout", DURATIONS, "\"1day\""),
];

/// The valid configuration with `key = value` set (a key of a section or entry goes into it).
fn config(key: &str, value: &str) -> String {
    let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
    let set = |at: &str| if section == at { format!("{name} = {value}\n") } else { String::new() };
    let length = if key == "windows[0].length" { String::new() } else { "length = \"10s\"\n".to_owned() };
    format!(
        "device_id = \"gw-bounds\"\ndata_dir = \"{{dir}}/data\"\n{root}\
         [ingest]\n{ingest}[engine]\n{engine}[batch]\n{batch}[storage]\n{storage}\
         [[sources]]\nkind = \"tcp\"\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n{source0}\
         [[sources]]\nkind = \"simulator\"\nname = \"sim\"\nsensors = 1\n{source1}\
         [[windows]]\nname = \"w\"\n{length}{window0}\
         [[sinks]]\nkind = \"file\"\nname = \"out\"\npath = \"{{dir}}/out.jsonl\"\n{sink0}\
         [[sinks]]\nkind = \"mqtt\"\nname = \"m\"\nurl = \"mqtt://127.0.0.1:9\"\n{sink1}\
         [[sinks]]\nkind = \"http\"\nname = \"h\"\nurl = \"http://127.0.0.1:9/ingest\"\n{sink2}",
        root =
            if section.is_empty() && !key.is_empty() { format!("{name} = {value}\n") } else { String::new() },
        ingest = set("ingest"),
        engine = set("engine"),
        batch = set("batch"),
        storage = set("storage"),
        source0 = set("sources[0]"),
        source1 = set("sources[1]"),
        window0 = set("windows[0]"),
        sink0 = set("sinks[0]"),
        sink1 = set("sinks[1]"),
        sink2 = set("sinks[2]"),
    )
}

/// `eddy check-config` of `text` in `dir`: its exit code and stderr.
fn check_config(dir: &Path, text: &str) -> (Option<i32>, String) {
    let path = dir.join("eddy.toml");
    std::fs::write(&path, text.replace("{dir}", &dir.display().to_string())).unwrap();
    let output = Command::new(eddy_binary()).args(["check-config", "--config"]).arg(&path).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn no_setting_reaches_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = check_config(dir.path(), &config("", ""));
    assert_eq!(code, Some(0), "the base configuration is valid: {stderr}");
    let mut refused = 0;
    let mut ran = Vec::new();
    for (key, extremes, largest) in CASES {
        for value in extremes.iter().chain([largest]) {
            let text = config(key, value);
            let (code, stderr) = check_config(dir.path(), &text);
            match code {
                Some(2) => {
                    assert!(
                        stderr.contains(&format!("{key}:")),
                        "{key} = {value}: the error names the key: {stderr}"
                    );
                    assert!(value != largest, "{key} = {value} must be accepted: {stderr}");
                    refused += 1;
                }
                Some(0) => ran.push((key, value, text)),
                other => panic!("{key} = {value}: check-config exited {other:?}: {stderr}"),
            }
        }
    }
    for (key, value, text) in &ran {
        let run_dir = tempfile::tempdir().unwrap();
        let mut eddy = Eddy::start_in(run_dir.path(), text)
            .unwrap_or_else(|error| panic!("{key} = {value}: eddy starts: {error:#}"));
        let status = eddy.stop().expect("eddy stops");
        let log = eddy.log();
        assert!(!log.contains("eddy: panic"), "{key} = {value}: a panic:\n{log}");
        assert!(status.success(), "{key} = {value}: eddy stops cleanly ({status:?}):\n{log}");
    }
    // The examples are among the refused.
    for (key, value) in [
        ("sinks[0].rate_limit", "1e-18"),
        ("sinks[1].ack_timeout", "\"100000000y\""),
        ("shutdown_timeout", "\"100000000y\""),
    ] {
        assert_eq!(check_config(dir.path(), &config(key, value)).0, Some(2), "{key} = {value}");
    }
    assert!(refused > 150 && ran.len() >= CASES.len(), "refused {refused}, ran {}", ran.len());
}
