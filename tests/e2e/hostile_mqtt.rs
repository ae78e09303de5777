//! Hostile and unlucky MQTT peers against the real binary (issue #14, points 3 and 4): an
//! oversize message, malformed payloads, a packet the client cannot read that the broker
//! resends on every reconnection, a reconnection with messages already read, and a broker
//! that drops messages past its queue limit.

use std::process::Command;
use std::time::Duration;

use eddy_tests::config::{ConfigToml, Value};
use eddy_tests::fake_broker::{ClientPacket, FakeBroker, FakeConnection};
use eddy_tests::mosquitto::Mosquitto;
use eddy_tests::{batch_count, eddy_binary, read_jsonl, source_counter, wait_until, Eddy};

use crate::api::{api_address, get};

/// eddy with one MQTT source `broker` on `url` as `client_id`, its own `source_keys`, and
/// the HTTP endpoint on a free port.
fn config(url: &str, client_id: &str, source_keys: &[(&str, Value)]) -> String {
    let mut config = ConfigToml::new("gw-hostile")
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("batch")
        .key("interval", "200ms")
        .table("api")
        .key("listen", "127.0.0.1:0")
        .mqtt_source("broker", url)
        .key("client_id", client_id)
        .key("topics", ["sensors/+/reading"])
        .key("sensor_from_topic", 1);
    for (key, value) in source_keys {
        config = config.key(key, value.clone());
    }
    config
        .window("w", "1h")
        .key("fields", ["temp_c"])
        .key("aggregates", ["count"])
        .sink("file")
        .key("path", "{dir}/results.jsonl")
        .key("records", ["batch"])
        .to_toml()
}

/// `eddy simulate --mqtt` of `count` QoS 1 readings from 5 sensors.
fn publish(url: &str, count: u64, seed: u64) {
    let output = Command::new(eddy_binary())
        .args(["simulate", "--mqtt", url, "--topic", "sensors/{sensor}/reading", "--sensors", "5"])
        .args(["--count", &count.to_string(), "--seed", &seed.to_string()])
        .output()
        .expect("eddy simulate runs");
    assert!(output.status.success(), "eddy simulate: {}", String::from_utf8_lossy(&output.stderr));
}

/// One QoS 1 message from a file (any bytes) with `mosquitto_pub`.
fn publish_file(broker: &Mosquitto, topic: &str, payload: &[u8]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), payload).unwrap();
    let status = Command::new("mosquitto_pub")
        .args(["-p", &broker.port.to_string(), "-q", "1", "-t", topic, "-f"])
        .arg(file.path())
        .status()
        .expect("mosquitto_pub runs (apt-get install mosquitto-clients)");
    assert!(status.success());
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

/// A valid reading of sensor `t-N` as a payload.
fn reading(temp_c: f64) -> Vec<u8> {
    format!(r#"{{"ts":{},"temp_c":{temp_c}}}"#, now_ms()).into_bytes()
}

/// Readings stored for `sensor` (batch results, one count per reading).
fn stored_for(results: &std::path::Path, sensor: &str) -> u64 {
    read_jsonl(results)
        .iter()
        .filter(|record| record["sensor"] == sensor && record["field"] == "temp_c")
        .map(|record| record["count"].as_u64().unwrap_or(0))
        .sum()
}

/// Issue #14: one message larger than the MQTT client's packet limit (today twice
/// `max_payload_bytes`, at least 64 KiB) made rumqttc drop the connection, and the broker
/// resent it at every reconnection, so nothing behind it ever arrived. Now it is read,
/// rejected as `message_too_large` and acknowledged; malformed payloads likewise, each counted
/// under its reason; the connection stays up and the readings behind them are stored.
#[test]
fn issue14_oversize_and_malformed_mqtt_messages_are_acked_counted_and_skipped() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let client_id = "eddy-oversize";
    let config = config(&broker.url(), client_id, &[("max_payload_bytes", Value::from(1024))]);
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let results = eddy.dir.join("results.jsonl");
    assert!(wait_until(Duration::from_secs(20), || eddy.log().contains("Subscribed.")), "{}", eddy.log());

    publish_file(&broker, "sensors/t-big/reading", &vec![b' '; 100_000]);
    publish_file(&broker, "sensors/t-bad/reading", b"{not json");
    publish_file(&broker, "sensors/t-bad/reading", b"\xff\xfe\x00garbage");
    publish_file(&broker, "sensors/t-bad/reading", b"[1, 2");
    publish(&broker.url(), 50, 1);
    assert!(
        wait_until(Duration::from_secs(20), || batch_count(&results, "temp_c") >= 50),
        "the readings behind the oversize message were not stored ({}); eddy's log:\n{}",
        batch_count(&results, "temp_c"),
        eddy.log()
    );
    let api = api_address(&eddy);
    let (code, body) = get(api, "/health");
    assert_eq!(code, 200, "{body}");
    assert!(eddy.stop().expect("eddy stops").success());
    let log = eddy.log();
    let counter = |key| source_counter(&log, "broker", key).unwrap_or(0);
    assert_eq!(counter("message_too_large"), 1, "{log}");
    assert_eq!((counter("bad_syntax"), counter("bad_utf8")), (2, 1), "{log}");
    assert_eq!(counter("accepted"), 50, "{log}");
    assert!(!log.contains("Lost the connection"), "the connection stayed up:\n{log}");
    // Every message was acknowledged, the oversize and malformed ones included.
    assert_eq!(broker.pubacks_from(client_id), 54, "{}", broker.log());
    // Rejections are logged, one line per second at most.
    assert!(log.matches("Rejected a reading.").count() < 4, "{log}");
}

/// Accepts eddy's next connection and checks it is a persistent one (or a clean one).
fn accept(broker: &FakeBroker, clean_session: bool) -> FakeConnection {
    let connection = broker.accept(Duration::from_secs(20)).expect("eddy connects");
    assert_eq!(connection.clean_session, clean_session, "clean-session flag of the CONNECT");
    connection
}

/// A PUBLISH no MQTT client can read (its topic is not UTF-8), which a broker resends on
/// every reconnection of a persistent session: before #14 eddy reconnected for ever and
/// nothing behind it arrived. Now after a few identical failures eddy connects once with a
/// clean session, which makes the broker discard the session, counts the loss and goes on
/// with a persistent session; the message read before the unreadable one is stored once.
#[test]
fn issue14_unreadable_mqtt_packet_ends_in_a_counted_session_discard_not_a_reconnect_loop() {
    let broker = FakeBroker::bind().expect("the fake broker listens");
    let mut eddy = Eddy::start(&config(&broker.url(), "eddy-unreadable", &[])).expect("eddy starts");
    let results = eddy.dir.join("results.jsonl");
    let before = reading(20.0);
    let after = reading(21.0);
    let mut n_persistent = 0;
    let mut connection = loop {
        let mut connection = broker
            .accept(Duration::from_secs(20))
            .unwrap_or_else(|error| panic!("eddy did not connect again ({error}); its log:\n{}", eddy.log()));
        if connection.clean_session {
            break connection;
        }
        n_persistent += 1;
        assert!(n_persistent <= 5, "eddy keeps reconnecting without a clean session:\n{}", eddy.log());
        connection.connack(n_persistent > 1).unwrap();
        if n_persistent == 1 {
            connection.expect_subscribe().unwrap();
        }
        connection
            .publish_all(&[
                (1, b"sensors/t-before/reading", &before, n_persistent > 1),
                (2, b"sensors/\xff\xfe/reading", b"{}", n_persistent > 1),
            ])
            .unwrap();
        connection.read_for(Duration::from_secs(5)).unwrap();
    };
    // The clean session discards the broker's state; eddy goes back to a persistent one.
    connection.connack(false).unwrap();
    let mut connection = accept(&broker, false);
    connection.connack(false).unwrap();
    connection.expect_subscribe().unwrap();
    connection.publish_all(&[(1, b"sensors/t-after/reading", &after, false)]).unwrap();
    let acks = connection.read_for(Duration::from_secs(3)).unwrap();
    assert!(acks.contains(&ClientPacket::PubAck { pkid: 1 }), "{acks:?}\n{}", eddy.log());
    assert!(wait_until(Duration::from_secs(10), || stored_for(&results, "t-after") == 1), "{}", eddy.log());
    assert_eq!(stored_for(&results, "t-before"), 1, "read before the unreadable packet, stored once");
    drop(connection);
    assert!(eddy.stop().expect("eddy stops").success());
    let log = eddy.log();
    assert_eq!(source_counter(&log, "broker", "unreadable_message"), Some(1), "{log}");
    let discard = log.lines().find(|line| line.contains("Discarding the broker's session")).expect(&log);
    assert!(discard.contains("ERROR"), "a loss is logged at ERROR: {discard}");
}

/// A connection lost with messages already read but not yet handed over: before #14 rumqttc
/// kept them across the reconnection and eddy acknowledged them on the new connection,
/// before the broker had sent anything there (a stale packet id, which a broker may have
/// given to another message by then). Now every reconnection starts from a fresh client:
/// no PUBACK goes out for a packet id the broker did not send on that connection, and each
/// message is stored exactly once.
#[test]
fn issue14_reconnection_sends_no_stale_acknowledgement() {
    let broker = FakeBroker::bind().expect("the fake broker listens");
    let mut eddy = Eddy::start(&config(&broker.url(), "eddy-stale", &[])).expect("eddy starts");
    let results = eddy.dir.join("results.jsonl");
    let payloads: Vec<Vec<u8>> = (0..5).map(|n| reading(20.0 + f64::from(n))).collect();
    let topics: Vec<String> = (1..=5).map(|n| format!("sensors/t-{n}/reading")).collect();
    let messages = |dup: bool| -> Vec<(u16, &[u8], &[u8], bool)> {
        (0..5)
            .map(|n| (n + 1, topics[usize::from(n)].as_bytes(), &payloads[usize::from(n)][..], dup))
            .collect()
    };

    let mut connection = accept(&broker, false);
    connection.connack(false).unwrap();
    connection.expect_subscribe().unwrap();
    // Five messages and, in the same write, a packet the client cannot read: the five are
    // read with it, and the connection fails before eddy saw them.
    let mut first = messages(false);
    first.push((6, b"sensors/\xff/reading", b"{}", false));
    connection.publish_all(&first).unwrap();
    let on_first = connection.read_for(Duration::from_secs(5)).unwrap();

    let mut connection = accept(&broker, false);
    connection.connack(true).unwrap();
    // Nothing sent yet on this connection: any PUBACK now is stale.
    let stale: Vec<_> = connection
        .read_for(Duration::from_secs(2))
        .unwrap()
        .into_iter()
        .filter(|packet| matches!(packet, ClientPacket::PubAck { .. }))
        .collect();
    assert!(stale.is_empty(), "stale acknowledgements on the new connection: {stale:?}\n{}", eddy.log());
    // The broker resends what was not acknowledged on the first connection (not the
    // unreadable one: this broker dropped it).
    let resend: Vec<_> = messages(true)
        .into_iter()
        .filter(|(pkid, ..)| !on_first.contains(&ClientPacket::PubAck { pkid: *pkid }))
        .collect();
    connection.publish_all(&resend).unwrap();
    let acks = connection.read_for(Duration::from_secs(3)).unwrap();
    for (pkid, ..) in &resend {
        assert!(acks.contains(&ClientPacket::PubAck { pkid: *pkid }), "no PUBACK for {pkid}: {acks:?}");
    }
    assert!(wait_until(Duration::from_secs(10), || batch_count(&results, "temp_c") >= 5), "{}", eddy.log());
    std::thread::sleep(Duration::from_millis(500));
    drop(connection);
    assert!(eddy.stop().expect("eddy stops").success());
    for n in 1..=5 {
        assert_eq!(stored_for(&results, &format!("t-{n}")), 1, "message {n} exactly once\n{}", eddy.log());
    }
}

/// A broker that drops messages for eddy's session past `max_queued_messages` says so only
/// in its own log and `$SYS` counters; before #14 eddy's counters showed nothing. Now the
/// source reads `$SYS/broker/publish/messages/dropped`, serves it as
/// `eddy_broker_dropped_total{source}` and in `/status`, and `/health` warns (still 200).
#[test]
fn issue14_broker_drops_show_in_metrics_status_and_health() {
    // mosquitto 2.0 publishes only a broker-wide counter (no per-client one); every second.
    let broker = Mosquitto::start_with("max_queued_messages 10\nmax_inflight_messages 10\nsys_interval 1\n")
        .expect("mosquitto starts");
    // EDDY_TEST_MQTT_HOLD: eddy receives and never acknowledges, so the broker's window of
    // 10 in-flight and its queue of 10 fill and it drops the rest.
    let dir = tempfile::tempdir().unwrap();
    let eddy = Eddy::start_in_with_test_switch(
        dir.path(),
        &config(&broker.url(), "eddy-drops", &[]),
        "EDDY_TEST_MQTT_HOLD",
    )
    .expect("eddy starts");
    assert!(wait_until(Duration::from_secs(20), || eddy.log().contains("Subscribed.")), "{}", eddy.log());
    let api = api_address(&eddy);
    publish(&broker.url(), 100, 1);
    let broker_says = || -> Option<u64> {
        let output = Command::new("mosquitto_sub")
            .args(["-p", &broker.port.to_string(), "-t", "$SYS/broker/publish/messages/dropped", "-C", "1"])
            .args(["-W", "3"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    assert!(wait_until(Duration::from_secs(10), || broker_says() == Some(80)), "{:?}", broker_says());
    let metric = || {
        get(api, "/metrics")
            .1
            .lines()
            .find_map(|line| line.strip_prefix("eddy_broker_dropped_total{source=\"broker\"} "))
            .and_then(|value| value.parse::<u64>().ok())
    };
    assert!(
        wait_until(Duration::from_secs(10), || metric() == Some(80)),
        "eddy_broker_dropped_total: {:?}\n{}",
        metric(),
        eddy.log()
    );
    let (code, health) = get(api, "/health");
    assert_eq!(code, 200, "{health}");
    assert!(health.starts_with("ok\n"), "{health}");
    assert!(
        health.lines().any(|line| line.starts_with("warning: source broker: the MQTT broker dropped")),
        "{health}"
    );
    let status: serde_json::Value = serde_json::from_str(&get(api, "/status").1).expect("JSON");
    assert_eq!(status["sources"][0]["broker_dropped"], 80, "{status}");
    assert!(status["warnings"].as_array().is_some_and(|warnings| !warnings.is_empty()), "{status}");
    assert!(eddy.log().contains("The MQTT broker reports dropped messages."), "{}", eddy.log());
}
