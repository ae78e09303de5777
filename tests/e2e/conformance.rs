//! The window results eddy computes over TCP equal those Apache Spark computed for the same
//! thermostat stream (../shared/conformance/).

use std::collections::BTreeMap;
use std::time::Duration;

use eddy_tests::config::ConfigToml;
use eddy_tests::{conformance_dir, read_jsonl, send_with_acks, wait_until, Eddy};
use serde_json::Value;

/// The conformance stream's pipeline, without sinks: an acked TCP source `in`, the data's
/// validity bounds and the two windows Spark computed (`w10s` sliding by 5 s, `w5s`
/// tumbling). The crash test (crash.rs) runs the same pipeline. Without the hold of future
/// outliers: Spark has none, the sample has wild timestamps, and the torture tests' sentinels
/// jump an hour ahead on purpose to close every window.
pub(crate) fn pipeline(device_id: &str) -> ConfigToml {
    ConfigToml::new(device_id)
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .key("idle_timeout", "2s")
        .key("outlier_after", "off")
        .table("batch")
        .key("interval", "1s")
        // The conformance data's validity bounds (narrower than the thermostat defaults).
        .schema_fields(&[
            r#"{ name = "temp_c", required = true, min = -50.0, max = 100.0 }"#,
            r#"{ name = "humidity", min = 0.0, max = 100.0 }"#,
        ])
        .tcp_source("in")
        .key("ack", true)
        .window("w10s", "10s")
        .key("slide", "5s")
        .key("lateness", "10s")
        .key("fields", ["temp_c"])
        .window("w5s", "5s")
        .key("lateness", "10s")
        .key("fields", ["temp_c"])
}

fn config() -> String {
    pipeline("gw-conf")
        .file_sink("results", "{dir}/results.jsonl")
        .key("records", ["window"])
        .file_sink("late", "{dir}/late.jsonl")
        .key("records", ["late"])
        .to_toml()
}

type Key = (String, i64);

fn expected(file: &str) -> BTreeMap<Key, Value> {
    read_jsonl(&conformance_dir().join(file))
        .into_iter()
        .map(|row| {
            ((row["sensor"].as_str().unwrap().to_owned(), row["window_start_ms"].as_i64().unwrap()), row)
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
}

fn check_window(name: &str, results: &[Value], expected: &BTreeMap<Key, Value>) {
    let ours: BTreeMap<Key, &Value> = results
        .iter()
        .filter(|row| row["window"] == name && row["field"] == "temp_c")
        .map(|row| ((row["sensor"].as_str().unwrap().to_owned(), row["start"].as_i64().unwrap()), row))
        .collect();
    assert_eq!(
        ours.len(),
        results.iter().filter(|row| row["window"] == name && row["field"] == "temp_c").count(),
        "{name}: a window was emitted twice"
    );
    let missing: Vec<_> = expected.keys().filter(|key| !ours.contains_key(*key)).take(5).collect();
    let extra: Vec<_> = ours.keys().filter(|key| !expected.contains_key(*key)).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{name}: missing {missing:?}, unexpected {extra:?}");
    for (key, want) in expected {
        let got = ours[key];
        assert_eq!(got["end"].as_i64(), want["window_end_ms"].as_i64(), "{name} {key:?} end");
        assert_eq!(got["count"].as_u64(), want["count"].as_u64(), "{name} {key:?} count");
        for (ours_key, spark_key) in [("min", "min"), ("max", "max"), ("mean", "avg"), ("sum", "sum")] {
            let (a, b) = (got[ours_key].as_f64().unwrap(), want[spark_key].as_f64().unwrap());
            assert!(close(a, b), "{name} {key:?} {ours_key}: eddy {a} vs spark {b}");
        }
    }
}

#[test]
fn window_results_over_tcp_match_apache_spark() {
    let eddy = Eddy::start(&config()).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let text = std::fs::read(conformance_dir().join("readings_sample.jsonl")).unwrap();
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|line| !line.is_empty()).collect();
    assert_eq!(lines.len(), 6028);

    let replies = send_with_acks(address, &lines, Duration::from_secs(60)).expect("all lines answered");
    assert_eq!(replies.acked, 6012, "valid lines are acked once durable");
    assert_eq!(replies.errors.len(), 16, "the 16 malformed lines are rejected: {:?}", replies.errors);
    assert!(replies.other.is_empty(), "unexpected replies: {:?}", replies.other);

    // Windows still open at the end of the stream close once the sensors fall idle (2 s).
    let results_path = eddy.dir.join("results.jsonl");
    let complete = wait_until(Duration::from_secs(30), || read_jsonl(&results_path).len() >= 490);
    let results = read_jsonl(&results_path);
    assert!(complete, "expected 490 window results, got {}; log:\n{}", results.len(), eddy.log());

    check_window("w10s", &results, &expected("expected_stream_wm10s_w10000ms_s5000ms.jsonl"));
    check_window("w5s", &results, &expected("expected_stream_wm10s_w5000ms_s5000ms.jsonl"));

    // The 5 very late readings are late for both window specs, and go to the late output.
    let late = read_jsonl(&eddy.dir.join("late.jsonl"));
    let meta: Value = serde_json::from_slice(
        &std::fs::read(conformance_dir().join("readings_sample.jsonl.meta.json")).unwrap(),
    )
    .unwrap();
    let mut very_late: Vec<(String, i64)> = meta["very_late_readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| (pair[0].as_str().unwrap().to_owned(), pair[1].as_i64().unwrap()))
        .collect();
    very_late.sort();
    for window in ["w10s", "w5s"] {
        let mut ours: Vec<(String, i64)> = late
            .iter()
            .filter(|row| row["window"] == window)
            .map(|row| (row["sensor"].as_str().unwrap().to_owned(), row["ts"].as_i64().unwrap()))
            .collect();
        ours.sort();
        assert_eq!(ours, very_late, "late readings of {window}");
    }
}
