//! Shared pieces of the uplink tests: an eddy with a TCP source, a one-second event-time window
//! and a file sink as the oracle (same outbox, same order), readings in event time, and the
//! check that a hub got every result, in order, with duplicates only within the bound.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_tests::config::ConfigToml;
use eddy_tests::{read_jsonl, send_with_acks, Eddy};

/// Readings per sensor per second of event time (one each 100 ms).
pub(crate) const PER_SECOND: i64 = 10;

/// An eddy with an acked TCP source `in`, one-second windows (count and mean of `temp_c`)
/// and a file sink `oracle` writing the outbox's `oracle_records` in order; a test adds the
/// sink under test after it. reload.rs shares it.
pub(crate) fn pipeline(device_id: &str, oracle_records: &[&str]) -> ConfigToml {
    ConfigToml::new(device_id)
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .tcp_source("in")
        .key("ack", true)
        .window("w1s", "1s")
        .key("lateness", "0s")
        .key("fields", ["temp_c"])
        .key("aggregates", ["count", "mean"])
        .file_sink("oracle", "{dir}/oracle.jsonl")
        .key("records", oracle_records.to_vec())
}

/// The uplink tests' eddy: [`pipeline`] with `window` records in the oracle and a 20 s stop
/// deadline; the test adds its sink (taking `window` records).
pub(crate) fn config() -> ConfigToml {
    config_with_oracle(&["window"])
}

/// Like [`config`], with the oracle taking `oracle_records`.
pub(crate) fn config_with_oracle(oracle_records: &[&str]) -> ConfigToml {
    pipeline("gw-up", oracle_records).root("shutdown_timeout", "20s")
}

/// Event time zero of a test: a whole second an hour ago.
pub(crate) fn base_ms() -> i64 {
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    (now / 1000 - 3600) * 1000
}

/// Readings of `sensors` sensors for event seconds `[from_s, to_s)`, in time order.
pub(crate) fn readings(base: i64, sensors: usize, from_s: i64, to_s: i64) -> Vec<String> {
    let mut lines = Vec::new();
    for tick in from_s * PER_SECOND..to_s * PER_SECOND {
        for sensor in 0..sensors {
            let ts = base + tick * (1000 / PER_SECOND);
            let temp = 20.0 + f64::from(u32::try_from(tick % 50).unwrap()) / 10.0;
            lines.push(format!(r#"{{"sensor":"s{sensor}","ts":{ts},"temp_c":{temp:.1}}}"#));
        }
    }
    lines
}

/// Sends `lines` and requires every one acknowledged (durable).
pub(crate) fn send(eddy: &Eddy, lines: &[String]) {
    let address = eddy.tcp_address("in").expect("tcp source");
    let refs: Vec<&[u8]> = lines.iter().map(String::as_bytes).collect();
    let replies = send_with_acks(address, &refs, Duration::from_secs(60)).expect("readings answered");
    assert_eq!(replies.acked, u64::try_from(lines.len()).unwrap(), "every reading acked: {replies:?}");
}

/// The oracle's records (what the outbox held, in order).
pub(crate) fn oracle(eddy: &Eddy) -> Vec<serde_json::Value> {
    read_jsonl(&eddy.dir.join("oracle.jsonl"))
}

fn id(record: &serde_json::Value) -> String {
    record["id"].as_str().unwrap_or_else(|| panic!("record without id: {record}")).to_owned()
}

/// Checks that `received` holds exactly the oracle's records, in the oracle's order once
/// repeats are left out, each identical to the oracle's, with at most `max_duplicates` repeats.
/// Returns the number of repeats.
pub(crate) fn check_every_result_in_order(
    oracle: &[serde_json::Value],
    received: &[serde_json::Value],
    max_duplicates: usize,
) -> usize {
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    let mut duplicates = 0;
    for record in received {
        if seen.insert(id(record)) {
            firsts.push(record.clone());
        } else {
            duplicates += 1;
        }
    }
    let oracle_ids: Vec<String> = oracle.iter().map(id).collect();
    let first_ids: Vec<String> = firsts.iter().map(id).collect();
    let missing: Vec<&String> = oracle_ids.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} results never reached the hub, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(first_ids, oracle_ids, "the hub got the results out of order");
    assert_eq!(firsts, oracle, "a record reached the hub with other values than the outbox had");
    assert!(duplicates <= max_duplicates, "{duplicates} duplicates, more than the bound {max_duplicates}");
    duplicates
}

/// The complete windows expected: `sensors × (seconds − 1)` of 10 readings each (the last
/// second's window stays open).
pub(crate) fn check_oracle(oracle: &[serde_json::Value], sensors: usize, seconds: i64) {
    let expected = sensors * usize::try_from(seconds - 1).unwrap();
    assert_eq!(oracle.len(), expected, "window results in the outbox");
    for record in oracle {
        assert_eq!(record["count"], serde_json::json!(PER_SECOND), "{record}");
    }
}

/// The fields of the last log line containing `marker` and `sink={sink}` (or any line with the
/// marker when `sink` is empty), as numbers.
pub(crate) fn counters(log: &str, marker: &str, sink: &str) -> BTreeMap<String, u64> {
    let wanted = format!("sink={sink} ");
    let line = log
        .lines()
        .rfind(|line| line.contains(marker) && (sink.is_empty() || line.contains(&wanted)))
        .unwrap_or_else(|| panic!("no `{marker}` line for sink `{sink}` in log:\n{log}"));
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .filter_map(|(key, value)| value.parse::<u64>().ok().map(|value| (key.to_owned(), value)))
        .collect()
}

/// Polls until `check` holds, or fails with `what` and eddy's log.
pub(crate) fn wait_for(eddy: &Eddy, timeout: Duration, what: &str, check: impl FnMut() -> bool) {
    assert!(
        eddy_tests::wait_until(timeout, check),
        "timed out waiting for {what}; eddy's log:\n{}",
        eddy.log()
    );
}

/// True when the oracle holds `expected` results and every one of them is in `received`.
pub(crate) fn all_delivered(eddy: &Eddy, expected: usize, received: &[serde_json::Value]) -> bool {
    let oracle = oracle(eddy);
    let got: HashSet<&str> = received.iter().filter_map(|record| record["id"].as_str()).collect();
    oracle.len() == expected
        && oracle.iter().all(|record| got.contains(record["id"].as_str().unwrap_or_default()))
}
