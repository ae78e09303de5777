//! Bounded state per source against the real binary (issue #14): one TCP client inventing
//! sensor ids cannot lock another source's new sensors out, junk sensors that go silent are
//! forgotten (their state leaves the engine and the store, their ids the caps, also across
//! restarts), and `count_by` over a tag a sender fills with invented values keeps at most its
//! cap of values per window.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_tests::config::{raw, ConfigToml};
use eddy_tests::{read_jsonl, send_with_acks, wait_until, Eddy};

use crate::api::{api_address, get, sample};

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// `n` readings, each from a new invented sensor id.
fn junk_lines(n: usize, ts: u64) -> Vec<Vec<u8>> {
    (0..n).map(|idx| format!(r#"{{"sensor":"junk-{idx}","ts":{ts},"temp_c":1.0}}"#).into_bytes()).collect()
}

fn send(eddy: &Eddy, source: &str, lines: &[Vec<u8>]) -> eddy_tests::Replies {
    let address = eddy.tcp_address(source).expect("the source listens");
    let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    send_with_acks(address, &lines, Duration::from_secs(20)).expect("the source answers")
}

#[test]
fn issue_14_ten_thousand_junk_ids_on_one_source_do_not_lock_out_another_sources_sensor() {
    // The default gateway cap (ingest.max_sensors = 10000), shared by two sources.
    let config = ConfigToml::new("gw-state")
        .table("ingest")
        .key("flush_interval", "5ms")
        .tcp_source("junk")
        .key("ack", true)
        .tcp_source("plant")
        .key("ack", true)
        .window("w", "10s")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let ts = now_ms() - 1000;
    let junk = send(&eddy, "junk", &junk_lines(10_000, ts));
    // The junk source gets its share (half of the gateway's cap), no more.
    assert_eq!(junk.acked, 5000, "{:?}", &junk.errors.first());
    assert_eq!(junk.errors.len(), 5000);
    assert!(
        junk.errors.iter().all(|(_, reason)| reason.starts_with("too_many_sensors")),
        "{:?}",
        junk.errors[0]
    );
    // A new sensor of the other source is still admitted.
    let plant =
        send(&eddy, "plant", &[format!(r#"{{"sensor":"boiler-1","ts":{ts},"temp_c":60.5}}"#).into_bytes()]);
    assert_eq!((plant.acked, plant.errors.len()), (1, 0), "{plant:?}");
    assert!(eddy.stop().expect("eddy stops").success());
}

#[test]
fn issue_14_count_by_with_a_thousand_invented_values_keeps_at_most_cap_plus_one_entries() {
    let config = ConfigToml::new("gw-state")
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .key("idle_timeout", "1s")
        .schema_fields(&["{ name = \"temp_c\" }"])
        .key("tags", raw("[{ name = \"mode\" }]"))
        .table("api")
        .key("listen", "127.0.0.1:0")
        .tcp_source("in")
        .key("ack", true)
        .window("modes", "60s")
        .key("count_by", ["mode"])
        .file_sink("all", "{dir}/all.jsonl")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let window_start = (now_ms() - 120_000) / 60_000 * 60_000;
    let lines: Vec<Vec<u8>> = (0..1000)
        .map(|idx| {
            let ts = window_start + idx;
            format!(r#"{{"sensor":"s","ts":{ts},"temp_c":1.0,"mode":"invented-{idx}"}}"#).into_bytes()
        })
        .collect();
    let replies = send(&eddy, "in", &lines);
    assert_eq!(replies.acked, 1000, "{replies:?}");
    let path = eddy.dir.join("all.jsonl");
    let counts = || {
        read_jsonl(&path).into_iter().filter(|record| record["type"] == "window_counts").collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(20), || !counts().is_empty()),
        "no counts record:\n{}",
        eddy.log()
    );
    let records = counts();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    let values: BTreeMap<String, u64> =
        serde_json::from_value(record["counts"].clone()).expect("counts is an object of integers");
    // The default cap (engine.count_by_max_values = 64): the first 64 values, then `other`.
    assert_eq!(values.len(), 64);
    assert!(values.keys().all(|value| value.strip_prefix("invented-").unwrap().parse::<u64>().unwrap() < 64));
    assert_eq!(record["other"], 936);
    assert_eq!(values.values().sum::<u64>() + record["other"].as_u64().unwrap(), 1000);
    // Counted where an operator looks.
    let (_, metrics) = get(api_address(&eddy), "/metrics");
    assert_eq!(sample(&metrics, "eddy_count_by_overflow_total"), Some(936.0), "{metrics}");
    assert_eq!(engine_status(&eddy)["count_by_overflow"], 936);
    assert!(eddy.stop().expect("eddy stops").success());
}

/// `/status` `engine` of a running eddy.
fn engine_status(eddy: &Eddy) -> serde_json::Value {
    let (code, body) = get(api_address(eddy), "/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("a JSON status");
    status["engine"].clone()
}

#[test]
fn issue_14_silent_junk_sensors_are_forgotten_and_state_does_not_grow_across_restarts() {
    let config = ConfigToml::new("gw-state")
        .table("ingest")
        .key("flush_interval", "5ms")
        .key("max_sensors", 2000)
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .key("idle_timeout", "1s")
        .key("forget_after", "2s")
        .table("api")
        .key("listen", "127.0.0.1:0")
        .tcp_source("junk")
        .key("ack", true)
        .tcp_source("plant")
        .key("ack", true)
        .window("w", "1s")
        .to_toml();
    let mut first = Eddy::start(&config).expect("eddy starts");
    let dir = first.dir.clone();
    let forgotten_all = |eddy: &Eddy, n_forgotten: u64| {
        wait_until(Duration::from_secs(15), || {
            let engine = engine_status(eddy);
            engine["sensors"] == 0 && engine["sensors_forgotten"] == n_forgotten
        })
    };
    // The junk source fills its share of the caps (1000 of 2000) ...
    let junk = send(&first, "junk", &junk_lines(1001, now_ms() - 1000));
    assert_eq!((junk.acked, junk.errors.len()), (1000, 1), "{:?}", junk.errors);
    assert!(wait_until(Duration::from_secs(10), || engine_status(&first)["sensors"] == 1000));
    // ... then goes silent: after forget_after its sensors are gone from the engine ...
    assert!(forgotten_all(&first, 1000), "engine: {}\n{}", engine_status(&first), first.log());
    // ... and from the caps: new ids are admitted again.
    let again = send(&first, "junk", &junk_lines(1000, now_ms() - 1000));
    assert_eq!((again.acked, again.errors.len()), (1000, 0), "{:?}", again.errors.first());
    assert!(forgotten_all(&first, 2000), "engine: {}", engine_status(&first));
    assert!(first.stop().expect("eddy stops").success());

    // Nothing of them comes back with a restart, and a second round leaves nothing either.
    let mut second = Eddy::start_in(&dir, &config).expect("eddy restarts");
    assert_eq!(engine_status(&second)["sensors"], 0, "restored junk state");
    let junk = send(&second, "junk", &junk_lines(1000, now_ms() - 1000));
    assert_eq!(junk.acked, 1000);
    assert!(forgotten_all(&second, 1000), "engine: {}", engine_status(&second));
    assert!(second.stop().expect("eddy stops").success());
    let third = Eddy::start_in(&dir, &config).expect("eddy restarts");
    assert_eq!(engine_status(&third)["sensors"], 0, "restored junk state");
    drop(third);
    drop(first);
}
