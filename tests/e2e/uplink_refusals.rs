//! Uplinks that refuse, against the real binary: a hub refusing our credentials for a while
//! during a drain (nothing is lost, `/health` warns meanwhile), a hub with a body limit (413:
//! batches split, the one record too large dead-lettered), an MQTT hub whose messages are
//! bounded (the record too large dead-lettered, the rest delivered), a dead-letter tree bounded
//! in bytes, and `eddy dead-letters --resend`.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use eddy_tests::config::{raw, ConfigToml};
use eddy_tests::http_hub::HttpHub;
use eddy_tests::mosquitto::Mosquitto;
use eddy_tests::mqtt_hub::MqttCollector;
use eddy_tests::{eddy_binary, wait_until, Eddy};

use crate::api::{api_address, get, sample};
use crate::uplink::{
    all_delivered, base_ms, check_every_result_in_order, check_oracle, config, counters, oracle, readings,
    send, wait_for,
};

/// The uplink tests' eddy with the endpoint on, and an HTTP sink `hub` posting `window`
/// records to `url` in batches of `batch`.
fn http_config(url: &str, batch: usize) -> ConfigToml {
    config()
        .table("api")
        .key("listen", "127.0.0.1:0")
        .http_sink("hub", url)
        .key("records", ["window"])
        .key("batch_max_records", batch)
        .key("linger", "20ms")
        .key("max_backoff", "300ms")
        .key("timeout", "2s")
}

/// `eddy dead-letters` (with `extra` arguments) on the store of `dir`: the exit status, stdout
/// and stderr.
fn dead_letters_cli(dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let output = Command::new(eddy_binary())
        .arg("dead-letters")
        .args(extra)
        .arg("--config")
        .arg(dir.join("eddy.toml"))
        .output()
        .expect("eddy dead-letters runs");
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The dead letters of the stopped eddy in `dir`, one JSON object each.
fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    let (ok, stdout, stderr) = dead_letters_cli(dir, &[]);
    assert!(ok, "eddy dead-letters failed: {stderr}");
    stdout.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect()
}

fn id(record: &serde_json::Value) -> &str {
    record["id"].as_str().unwrap_or_default()
}

fn status(eddy: &Eddy) -> serde_json::Value {
    serde_json::from_str(&get(api_address(eddy), "/status").1).expect("/status is JSON")
}

/// The `/status` counters of the sink `hub`.
fn hub_status(eddy: &Eddy) -> serde_json::Value {
    let status = status(eddy);
    status["uplinks"].as_array().unwrap().iter().find(|uplink| uplink["name"] == "hub").unwrap().clone()
}

/// The issue's "Done when": the hub answers 401 for a while in the middle of a drain, then
/// 200 again. Every record arrives, none is dead-lettered, and `/health` (still 200) warned
/// while the credentials were refused, and no more after.
#[test]
fn a_hub_refusing_our_credentials_for_a_while_loses_nothing() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    // 20 records a second in batches of 5: the backlog of 50 takes 2.5 s to drain.
    let config = http_config(&hub.url(), 5).key("rate_limit", 20.0).to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let api = api_address(&eddy);
    let base = base_ms();
    let sensors = 5;
    send(&eddy, &readings(base, sensors, 0, 11));
    wait_for(&eddy, Duration::from_secs(20), "the drain under way", || hub.record_count() >= 10);

    // The token expired: the hub refuses it.
    hub.set_status(401);
    wait_for(&eddy, Duration::from_secs(20), "the refusal on /health", || {
        get(api, "/health").1.contains("warning: sink hub: the hub refuses our credentials since")
    });
    let (code, health) = get(api, "/health");
    assert_eq!(code, 200, "a refusal is a warning, not a failure: {health}");
    assert!(health.contains("(HTTP 401)"), "{health}");
    let uplink = hub_status(&eddy);
    assert_eq!(uplink["refused_status"], 401, "{uplink}");
    assert!(uplink["refused_since_ms"].as_u64().is_some_and(|ms| ms > 0), "{uplink}");
    assert!(
        sample(&get(api, "/metrics").1, "eddy_uplink_refused_seconds{sink=\"hub\"}").is_some(),
        "the refusal gauge"
    );
    // It goes on asking, with its backoff, while the outbox keeps the records.
    let asked = hub.requests();
    wait_for(&eddy, Duration::from_secs(20), "more tries while refused", || hub.requests() >= asked + 3);
    assert!(eddy.log().contains("The hub refuses our credentials"), "logged when it starts");
    let received_while_refused = hub.record_count();

    // An operator fixed the token: the backlog flows again.
    hub.set_status(200);
    wait_for(&eddy, Duration::from_secs(30), "the whole backlog at the hub", || {
        all_delivered(&eddy, 10 * sensors, &hub.records())
    });
    wait_for(&eddy, Duration::from_secs(10), "the warning gone", || {
        !get(api, "/health").1.contains("refuses our credentials")
    });
    assert!(hub_status(&eddy).get("refused_status").is_none());
    assert!(eddy.stop().expect("eddy stops").success());

    assert!(received_while_refused < 10 * sensors, "the refusal came during the drain");
    let oracle = oracle(&eddy);
    check_oracle(&oracle, sensors, 11);
    let log = eddy.log();
    assert!(log.contains("Sink is back."), "the end of the refusal is logged");
    let uplink = counters(&log, "Uplink counters.", "hub");
    assert_eq!(uplink["rejected"], 0, "{uplink:?}");
    assert!(dead_letters(&eddy.dir).is_empty(), "nothing was dead-lettered");
    // A refused request was not taken, so only a timed-out delivery could repeat records.
    let bound = 5 * usize::try_from(uplink["retries"]).unwrap();
    check_every_result_in_order(&oracle, &hub.records(), bound);
}

/// A hub that takes bodies of one small record at most: every batch is split down to single
/// records, which all arrive; the one record larger than the limit is dead-lettered with its
/// reason, and the records after it are still delivered.
#[test]
fn a_413_splits_batches_and_dead_letters_only_the_record_too_large() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    let mut eddy = Eddy::start(&http_config(&hub.url(), 8).to_toml()).expect("eddy starts");
    let base = base_ms();
    let sensors = 3;
    send(&eddy, &readings(base, sensors, 0, 2));
    wait_for(&eddy, Duration::from_secs(20), "the first windows at the hub", || {
        all_delivered(&eddy, sensors, &hub.records())
    });
    // The records as stored (the oracle file holds the very payloads): a body of one record
    // fits, of two does not, of one with a 64-byte sensor id (twice in it) does not either.
    let longest =
        std::fs::read_to_string(eddy.dir.join("oracle.jsonl")).unwrap().lines().map(str::len).max().unwrap();
    hub.set_max_body(u64::try_from(longest + 2 + 40).unwrap());

    let long_sensor = "L".repeat(64);
    let mut lines = Vec::new();
    for tick in 20..40 {
        let ts = base + tick * 100;
        lines.push(format!(r#"{{"sensor":"{long_sensor}","ts":{ts},"temp_c":21.5}}"#));
    }
    send(&eddy, &lines);
    send(&eddy, &readings(base, sensors, 2, 6));
    wait_for(&eddy, Duration::from_secs(30), "every small record at the hub", || {
        let oracle = oracle(&eddy);
        let records = hub.records();
        let got: HashSet<&str> = records.iter().map(id).collect();
        oracle.len() > 5 * sensors
            && oracle
                .iter()
                .filter(|record| record["sensor"] != long_sensor.as_str())
                .all(|record| got.contains(id(record)))
    });
    assert!(eddy.stop().expect("eddy stops").success());

    assert!(hub.too_large() >= 1, "the hub answered 413");
    let oracle = oracle(&eddy);
    let (long, small): (Vec<_>, Vec<_>) =
        oracle.iter().cloned().partition(|record| record["sensor"] == long_sensor.as_str());
    assert!(!long.is_empty(), "the long sensor's window closed");
    let dead = dead_letters(&eddy.dir);
    assert_eq!(
        dead.iter().map(|letter| letter["record"].clone()).collect::<Vec<_>>(),
        long,
        "exactly the records too large are dead letters"
    );
    for letter in &dead {
        let reason = letter["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("HTTP 413") && reason.ends_with("record larger than the hub accepts"),
            "{reason}"
        );
    }
    // Split parts are never sent twice: no duplicate at all.
    check_every_result_in_order(&small, &hub.records(), 0);
    // Records after the one too large were delivered (the last window is a small one).
    assert_eq!(hub.records().last(), small.last());
}

/// An MQTT hub with small messages: a window whose `count_by` map of long tag values makes it
/// larger than `max_message_bytes` is dead-lettered with its size; everything else arrives,
/// and the uplink never retries it.
#[test]
fn an_mqtt_record_larger_than_a_message_is_dead_lettered_and_the_rest_delivered() {
    let hub = Mosquitto::start().expect("the hub mosquitto starts");
    let collector = MqttCollector::start(hub.addr(), "devices/#");
    assert!(wait_until(Duration::from_secs(10), || collector.subscribed()), "the test subscriber");
    // The uplink tests' pipeline, with a `mode` tag counted per window.
    let config = ConfigToml::new("gw-up")
        .root("shutdown_timeout", "20s")
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .schema_fields(&["{ name = \"temp_c\" }"])
        .key("tags", raw("[{ name = \"mode\" }]"))
        .tcp_source("in")
        .key("ack", true)
        .window("w1s", "1s")
        .key("lateness", "0s")
        .key("fields", ["temp_c"])
        .key("aggregates", ["count", "mean"])
        .key("count_by", ["mode"])
        .file_sink("oracle", "{dir}/oracle.jsonl")
        .key("records", ["window"])
        .mqtt_sink("hub", &hub.url())
        .key("records", ["window"])
        .key("max_message_bytes", 1024)
        .key("batch_max_records", 16)
        .key("max_backoff", "300ms")
        .key("ack_timeout", "2s")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let base = base_ms();
    let sensors = 3;
    let mut lines = readings(base, sensors, 0, 2);
    // Second 1 of sensor "wide": 20 readings with 20 distinct 60-byte modes, a count_by map of
    // some 1,300 bytes.
    for idx in 0..20 {
        let ts = base + 1000 + idx * 50;
        let mode = format!("{idx:02}{}", "m".repeat(58));
        lines.push(format!(r#"{{"sensor":"wide","ts":{ts},"temp_c":21.5,"mode":"{mode}"}}"#));
    }
    lines.extend(readings(base, sensors, 2, 5));
    lines.push(format!(r#"{{"sensor":"wide","ts":{},"temp_c":21.5}}"#, base + 4500));
    send(&eddy, &lines);
    wait_for(&eddy, Duration::from_secs(30), "every other record at the hub", || {
        let oracle = oracle(&eddy);
        let got: Vec<serde_json::Value> = collector.records().into_iter().map(|(_, record)| record).collect();
        let got: HashSet<&str> = got.iter().map(id).collect();
        oracle.iter().any(|record| record.to_string().len() > 1100)
            && oracle
                .iter()
                .filter(|record| record.to_string().len() < 1000)
                .all(|record| got.contains(id(record)))
    });
    let retries_then = eddy.log().matches("Sink is unavailable").count();
    assert!(eddy.stop().expect("eddy stops").success());

    let oracle = oracle(&eddy);
    let dead = dead_letters(&eddy.dir);
    assert_eq!(dead.len(), 1, "one record too large: {dead:?}");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("record of ") && reason.ends_with("exceeds max_message_bytes 1024"),
        "{reason}"
    );
    assert!(dead[0]["record"].to_string().len() > 1024);
    let others: Vec<serde_json::Value> =
        oracle.iter().filter(|record| **record != dead[0]["record"]).cloned().collect();
    let received: Vec<serde_json::Value> =
        collector.records().into_iter().map(|(_, record)| record).collect();
    check_every_result_in_order(&others, &received, 0);
    assert_eq!(retries_then, 0, "the record too large was never retried: {}", eddy.log());
    let uplink = counters(&eddy.log(), "Uplink counters.", "hub");
    assert_eq!(uplink["rejected"], 1, "{uplink:?}");
}

/// A hub that rejects everything (400) and a small dead-letter tree: the tree stays within
/// its bytes, the oldest dead letters are dropped, counted, logged, and `/health` warns.
#[test]
fn the_dead_letter_tree_stays_within_its_bytes_and_says_what_it_dropped() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.set_status(400);
    let config = http_config(&hub.url(), 16).table("storage").key("dead_letter_max_bytes", 4096).to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let api = api_address(&eddy);
    let base = base_ms();
    let sensors = 10;
    send(&eddy, &readings(base, sensors, 0, 8));
    wait_for(&eddy, Duration::from_secs(30), "every result rejected", || {
        hub_status(&eddy)["rejected"].as_u64() == Some(7 * 10)
    });
    let store = status(&eddy)["store"].clone();
    let kept_bytes = store["dead_letter_bytes"].as_u64().unwrap();
    assert!(kept_bytes <= 4096 && kept_bytes > 2048, "{store}");
    assert_eq!(store["dead_letter_max_bytes"], 4096);
    let kept = store["dead_letters_kept"].as_u64().unwrap();
    let dropped = store["dropped_dead_letters"].as_u64().unwrap();
    assert_eq!(kept + dropped, 70, "{store}");
    assert!(dropped > 0, "{store}");
    let (code, health) = get(api, "/health");
    assert_eq!(code, 200, "{health}");
    assert!(health.contains(&format!("warning: {dropped} dead letters dropped")), "{health}");
    assert!(sample(&get(api, "/metrics").1, "eddy_store_dead_letters_dropped_total") == Some(dropped as f64));
    assert!(eddy.stop().expect("eddy stops").success());
    assert!(eddy.log().contains("The dead-letter tree is full"), "the drop is logged");
    let dead = dead_letters(&eddy.dir);
    assert_eq!(u64::try_from(dead.len()).unwrap(), kept);
    // The newest are kept.
    assert_eq!(dead.last().map(|letter| letter["record"].clone()), oracle(&eddy).last().cloned());
}

/// Rejected records come back: `eddy dead-letters --resend` with eddy stopped queues them, and
/// at the next start the sink delivers every one with its original id before anything else;
/// the tree is then empty.
#[test]
fn resent_dead_letters_reach_the_fixed_hub_with_their_ids() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.set_status(422);
    let config = http_config(&hub.url(), 16).to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let base = base_ms();
    let sensors = 4;
    send(&eddy, &readings(base, sensors, 0, 4));
    wait_for(&eddy, Duration::from_secs(30), "every result rejected", || counters_now(&eddy) == 3 * sensors);
    assert!(eddy.stop().expect("eddy stops").success());
    let dead = dead_letters(&eddy.dir);
    assert_eq!(dead.len(), 3 * sensors);
    assert!(hub.records().is_empty());

    hub.set_status(200);
    let (ok, stdout, stderr) = dead_letters_cli(&eddy.dir, &["--resend", "--sink", "hub"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("sink hub: {} dead letters queued for resend", 3 * sensors)),
        "{stdout}"
    );
    let dir = eddy.dir.clone();
    let mut again = Eddy::start_in(&dir, &config).expect("eddy starts again");
    wait_for(&again, Duration::from_secs(30), "the dead letters at the hub", || {
        hub.record_count() >= 3 * sensors
    });
    assert!(again.stop().expect("eddy stops").success());
    let sent: Vec<serde_json::Value> = dead.iter().map(|letter| letter["record"].clone()).collect();
    check_every_result_in_order(&sent, &hub.records(), 0);
    assert!(dead_letters(&dir).is_empty(), "resent dead letters are deleted");
}

/// The same while eddy runs: `--resend` asks it through its endpoint, the sink marks its dead
/// letters, says how many, and delivers them at once; an endpoint that does not answer is an
/// error that marks nothing.
#[test]
fn dead_letters_resent_while_eddy_runs_reach_the_hub_at_once() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.set_status(400);
    let mut eddy = Eddy::start(&http_config(&hub.url(), 16).to_toml()).expect("eddy starts");
    let api = api_address(&eddy);
    let base = base_ms();
    let sensors = 4;
    send(&eddy, &readings(base, sensors, 0, 4));
    wait_for(&eddy, Duration::from_secs(30), "every result rejected", || counters_now(&eddy) == 3 * sensors);
    let (ok, _, stderr) = dead_letters_cli(&eddy.dir, &["--resend", "--addr", "127.0.0.1:1"]);
    assert!(!ok, "no endpoint there");
    assert!(stderr.contains("nothing was marked"), "{stderr}");
    assert!(hub.records().is_empty());

    hub.set_status(200);
    let addr = api.to_string();
    let (ok, stdout, stderr) = dead_letters_cli(&eddy.dir, &["--resend", "--sink", "hub", "--addr", &addr]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(stdout, format!("sink hub: {} dead letters queued for resend\n", 3 * sensors));
    wait_for(&eddy, Duration::from_secs(30), "the dead letters at the hub", || {
        hub.record_count() >= 3 * sensors && status(&eddy)["store"]["dead_letters_kept"] == 0
    });
    // Delivery goes on after them.
    send(&eddy, &readings(base, sensors, 4, 6));
    wait_for(&eddy, Duration::from_secs(30), "the later results at the hub", || {
        all_delivered(&eddy, 5 * sensors, &hub.records())
    });
    assert!(eddy.stop().expect("eddy stops").success());
    check_every_result_in_order(&oracle(&eddy), &hub.records(), 0);
    assert!(dead_letters(&eddy.dir).is_empty(), "resent dead letters are deleted");
}

/// Records the running eddy's sink `hub` rejected so far.
fn counters_now(eddy: &Eddy) -> usize {
    usize::try_from(hub_status(eddy)["rejected"].as_u64().unwrap_or(0)).unwrap()
}
