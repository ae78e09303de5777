//! The MQTT source through the real binary against a real mosquitto started by each test:
//! readings to windows, a broker restart mid-stream, TLS with a test CA, wrong credentials,
//! and SIGKILL before the acknowledgements.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use eddy_tests::config::{ConfigToml, Value};
use eddy_tests::mosquitto::{Mosquitto, TestCa};
use eddy_tests::{batch_count, eddy_binary, source_counter, wait_until, window_count, Eddy};

/// eddy with one MQTT source on the broker at `url` as `client_id`, committing every `flush`,
/// with the test's own `source_keys` (TLS, credentials, flow control).
fn config(url: &str, client_id: &str, flush: &str, source_keys: &[(&str, Value)]) -> String {
    let mut config = ConfigToml::new("gw-mqtt")
        .table("ingest")
        .key("flush_interval", flush)
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .key("idle_timeout", "1s")
        .table("batch")
        .key("interval", "200ms")
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
        .key("records", ["window", "batch", "late"])
        .to_toml()
}

/// Runs `eddy simulate --mqtt URL` (QoS 1, one reading per message); returns its stdout.
fn publish(url: &str, count: u64, seed: u64, extra: &[&str]) -> String {
    let output = Command::new(eddy_binary())
        .args(["simulate", "--mqtt", url, "--topic", "sensors/{sensor}/reading", "--sensors", "5"])
        .args(["--count", &count.to_string(), "--seed", &seed.to_string()])
        .args(extra)
        .output()
        .expect("eddy simulate runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "eddy simulate failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("acked by the broker {count}")), "{stdout}");
    stdout
}

fn wait_for_readings(eddy: &Eddy, results: &Path, expected: u64) {
    assert!(
        wait_until(Duration::from_secs(30), || batch_count(results, "temp_c") >= expected),
        "expected {expected} readings, results hold {}; eddy's log:\n{}",
        batch_count(results, "temp_c"),
        eddy.log()
    );
}

#[test]
fn mqtt_readings_flow_to_window_results_and_bad_payloads_are_counted() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let mut eddy = Eddy::start(&config(&broker.url(), "eddy-flow", "5ms", &[])).expect("eddy starts");
    let results = eddy.dir.join("results.jsonl");
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().contains("Connected to the MQTT broker.")),
        "{}",
        eddy.log()
    );
    publish(&broker.url(), 500, 1, &[]);
    // A payload that is not JSON, and an array of two readings (one out of range).
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let array = format!(r#"[{{"ts":{now_ms},"temp_c":20.0}},{{"ts":{now_ms},"temp_c":900}}]"#);
    for payload in ["{not json", array.as_str()] {
        let status = Command::new("mosquitto_pub")
            .args(["-p", &broker.port.to_string(), "-q", "1", "-t", "sensors/t-array/reading", "-m", payload])
            .status()
            .expect(
                "mosquitto_pub runs (apt-get install mosquitto-clients; ./scripts/test-all.sh installs it)",
            );
        assert!(status.success());
    }
    wait_for_readings(&eddy, &results, 501);
    // Every sensor idles for 1 s after the burst, which closes its window.
    assert!(
        wait_until(Duration::from_secs(30), || window_count(&results, "temp_c") == 501),
        "window results hold {} readings:\n{}",
        window_count(&results, "temp_c"),
        eddy.log()
    );
    assert!(eddy.stop().expect("eddy stops").success(), "{}", eddy.log());
    let log = eddy.log();
    let counter = |key| source_counter(&log, "broker", key).unwrap_or(0);
    assert_eq!((counter("received"), counter("accepted")), (503, 501), "{log}");
    assert_eq!((counter("bad_syntax"), counter("out_of_range")), (1, 1), "{log}");
    assert_eq!(batch_count(&results, "temp_c"), 501);
}

#[test]
fn mqtt_broker_restart_mid_stream_loses_no_reading_and_subscriptions_are_restored() {
    let mut broker = Mosquitto::start().expect("mosquitto starts");
    let client_id = "eddy-restart";
    // At most 50 messages in flight, acknowledged after 100 ms group commits: the backlog
    // drains at no more than 500 messages per second.
    let config = config(&broker.url(), client_id, "100ms", &[("max_in_flight", Value::from(50))]);
    let dir = tempfile::tempdir().unwrap();
    // A backlog queued for eddy's persistent session while it is away, so that the broker
    // restart lands while eddy works through it.
    let mut eddy = Eddy::start_in(dir.path(), &config).expect("eddy starts");
    assert!(wait_until(Duration::from_secs(20), || eddy.log().contains("Subscribed.")), "{}", eddy.log());
    assert!(eddy.stop().expect("eddy stops").success());
    publish(&broker.url(), 1000, 1, &[]);
    let mut eddy = Eddy::start_in(dir.path(), &config).expect("eddy starts again");
    let results = dir.path().join("results.jsonl");
    // Progress as eddy's results show it (mosquitto's log is written in blocks).
    assert!(
        wait_until(Duration::from_secs(30), || batch_count(&results, "temp_c") >= 200),
        "eddy stored nothing:\n{}",
        eddy.log()
    );
    // SIGTERM: mosquitto saves the session and the queued messages, then starts again; its
    // log is complete once it stopped.
    broker.restart().expect("mosquitto restarts");
    let acked_before_restart = broker.pubacks_from(client_id);
    assert!(acked_before_restart < 1000, "the restart came after the stream: {acked_before_restart}");
    publish(&broker.url(), 400, 2, &[]);
    wait_for_readings(&eddy, &results, 1400);
    assert!(eddy.log().contains("Connected to the MQTT broker again."), "{}", eddy.log());
    // Exactly once: redeliveries of messages eddy had stored are acknowledged, not stored.
    assert_eq!(batch_count(&results, "temp_c"), 1400, "{}", eddy.log());

    // A broker that lost every session (no persistence file) knows no subscription: eddy must
    // subscribe again by itself.
    broker.stop();
    std::fs::remove_file(broker.dir.join("mosquitto.db")).expect("the broker saved its sessions");
    broker.restart().expect("mosquitto starts without sessions");
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().matches("Subscribed.").count() >= 3),
        "eddy did not subscribe again:\n{}",
        eddy.log()
    );
    assert!(
        eddy.log().contains("Connected to the MQTT broker again. session_present=false"),
        "{}",
        eddy.log()
    );
    publish(&broker.url(), 200, 3, &[]);
    wait_for_readings(&eddy, &results, 1600);
    assert!(eddy.stop().expect("eddy stops").success(), "{}", eddy.log());
    assert_eq!(batch_count(&results, "temp_c"), 1600, "{}", eddy.log());
}

#[test]
fn mqtt_over_tls_with_a_test_ca() {
    let ca = TestCa::generate().expect("openssl makes a test CA");
    let broker = Mosquitto::start_with(&ca.mosquitto_lines()).expect("mosquitto starts with TLS");
    let extra = [("ca_file", Value::from(ca.ca_file.display().to_string()))];
    let mut eddy = Eddy::start(&config(&broker.tls_url(), "eddy-tls", "5ms", &extra)).expect("eddy starts");
    let results = eddy.dir.join("results.jsonl");
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().contains("Connected to the MQTT broker.")),
        "no TLS connection:\n{}\nbroker:\n{}",
        eddy.log(),
        broker.log()
    );
    publish(&broker.tls_url(), 200, 1, &["--ca-file", &ca.ca_file.display().to_string()]);
    wait_for_readings(&eddy, &results, 200);
    assert!(eddy.stop().expect("eddy stops").success());
    assert_eq!(batch_count(&results, "temp_c"), 200);

    // A client that trusts another CA refuses the broker, and says so.
    let other_ca = TestCa::generate().expect("a second CA");
    let extra = [("ca_file", Value::from(other_ca.ca_file.display().to_string()))];
    let eddy = Eddy::start(&config(&broker.tls_url(), "eddy-tls-2", "5ms", &extra)).expect("eddy starts");
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().contains("TLS failed")),
        "no TLS error:\n{}",
        eddy.log()
    );
}

#[test]
fn mqtt_wrong_credentials_give_a_clear_error_and_eddy_keeps_running() {
    let secrets = tempfile::tempdir().unwrap();
    let passwd = secrets.path().join("passwd");
    Mosquitto::write_password_file(&passwd, "eddy", "right-password").expect("mosquitto_passwd");
    let broker =
        Mosquitto::start_with(&format!("allow_anonymous false\npassword_file {}\n", passwd.display()))
            .expect("mosquitto starts");
    let wrong = secrets.path().join("wrong");
    std::fs::write(&wrong, "wrong-password\n").unwrap();
    let extra = [
        ("username", Value::from("eddy")),
        ("password_file", Value::from(wrong.display().to_string())),
        ("allow_insecure", Value::from(true)),
    ];
    let mut eddy = Eddy::start(&config(&broker.url(), "eddy-auth", "5ms", &extra)).expect("eddy starts");
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().contains("Cannot connect to the MQTT broker")),
        "{}",
        eddy.log()
    );
    let log = eddy.log();
    let error_line = log.lines().find(|line| line.contains("Cannot connect to the MQTT broker")).unwrap();
    assert!(error_line.contains("ERROR"), "{error_line}");
    assert!(error_line.contains("user name or password"), "{error_line}");
    assert!(!log.contains("wrong-password"), "the password is never logged");
    // eddy keeps running, retrying quietly: it still answers a stop cleanly.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(eddy.log().matches("Cannot connect to the MQTT broker").count(), 1, "{}", eddy.log());
    assert!(eddy.stop().expect("eddy stops").success());

    // The right password from the environment works.
    let extra = [
        ("username", Value::from("eddy")),
        ("password_env", Value::from("EDDY_TEST_MQTT_PASSWORD")),
        ("allow_insecure", Value::from(true)),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let eddy = Eddy::start_in_with_env(
        tmp.path(),
        &config(&broker.url(), "eddy-auth", "5ms", &extra),
        &[("EDDY_TEST_MQTT_PASSWORD", "right-password")],
    )
    .expect("eddy starts");
    let right = secrets.path().join("right");
    std::fs::write(&right, "right-password\n").unwrap();
    publish(&broker.url(), 50, 1, &["--username", "eddy", "--password-file", &right.display().to_string()]);
    wait_for_readings(&eddy, &tmp.path().join("results.jsonl"), 50);
}

#[test]
fn mqtt_messages_received_but_not_acked_before_sigkill_are_redelivered_exactly_once() {
    let broker = Mosquitto::start_with("max_inflight_messages 10\n").expect("mosquitto starts");
    let client_id = "eddy-kill";
    let config = config(&broker.url(), client_id, "5ms", &[]);
    let dir = tempfile::tempdir().unwrap();

    // EDDY_TEST_MQTT_HOLD=1: messages are received and counted, never stored nor acked, as if
    // the log had stalled; the broker has 10 of them in flight to eddy when it is killed.
    let mut eddy =
        Eddy::start_in_with_test_switch(dir.path(), &config, "EDDY_TEST_MQTT_HOLD").expect("eddy starts");
    assert!(wait_until(Duration::from_secs(20), || eddy.log().contains("Connected to the MQTT broker.")));
    publish(&broker.url(), 50, 1, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().contains("held=10\n")),
        "eddy did not receive the messages:\n{}",
        eddy.log()
    );
    eddy.kill();
    eddy.wait(Duration::from_secs(10)).expect("eddy dies");

    let eddy = Eddy::start_in(dir.path(), &config).expect("eddy restarts");
    let results = dir.path().join("results.jsonl");
    wait_for_readings(&eddy, &results, 50);
    // The 10 held messages were never stored: without their redelivery this would be 40.
    assert_eq!(batch_count(&results, "temp_c"), 50, "each reading exactly once");
}

/// The crash window of exactly-once MQTT ingest, made deterministic: with
/// EDDY_TEST_MQTT_NO_ACK=1 eddy stores the messages but never writes their PUBACKs, as if it
/// died right after each fsync. Killed, restarted without the knob, it is sent every one of
/// them again (DUP) and must recognise each from the mark stored with its readings.
#[test]
fn mqtt_messages_stored_but_not_acked_before_sigkill_are_not_stored_again() {
    let broker = Mosquitto::start_with("max_inflight_messages 10\n").expect("mosquitto starts");
    let client_id = "eddy-no-ack";
    let config = config(&broker.url(), client_id, "5ms", &[]);
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let mut eddy =
        Eddy::start_in_with_test_switch(dir.path(), &config, "EDDY_TEST_MQTT_NO_ACK").expect("eddy starts");
    assert!(wait_until(Duration::from_secs(20), || eddy.log().contains("Connected to the MQTT broker.")));
    publish(&broker.url(), 50, 1, &[]);
    // The broker sends 10 and waits for their PUBACKs, which never come.
    let unacked = || eddy.log().matches("Not acknowledging a stored MQTT message").count();
    assert!(wait_until(Duration::from_secs(20), || unacked() >= 10), "{}", eddy.log());
    assert!(wait_until(Duration::from_secs(20), || batch_count(&results, "temp_c") >= 10), "{}", eddy.log());
    eddy.kill();
    eddy.wait(Duration::from_secs(10)).expect("eddy dies");

    let mut eddy =
        Eddy::start_in_with_env(dir.path(), &config, &[("EDDY_LOG", "info,eddy_sensors::mqtt=debug")])
            .expect("eddy restarts");
    wait_for_readings(&eddy, &results, 50);
    std::thread::sleep(Duration::from_millis(500));
    assert!(eddy.stop().expect("eddy stops").success());
    let recognised = eddy.log().matches("Redelivery of a message already acknowledged.").count();
    assert_eq!(recognised, 10, "each stored message's redelivery is recognised:\n{}", eddy.log());
    assert_eq!(batch_count(&results, "temp_c"), 50, "each reading exactly once");
}

#[test]
fn mqtt_sigkill_mid_backlog_stores_every_reading_once() {
    // No knob: eddy is killed while it works through a backlog the broker queued for its
    // persistent session. Nothing is lost, and nothing is stored twice: a message stored but
    // whose PUBACK had not reached the broker is redelivered (DUP) to the restarted eddy,
    // which recognises it from the mark stored with its readings and acknowledges it again
    // without storing it.
    let broker = Mosquitto::start().expect("mosquitto starts");
    let client_id = "eddy-kill-backlog";
    // At most 50 messages in flight, acknowledged after 100 ms group commits: the backlog
    // drains at no more than 500 messages per second.
    let config = config(&broker.url(), client_id, "100ms", &[("max_in_flight", Value::from(50))]);
    let dir = tempfile::tempdir().unwrap();
    let mut eddy = Eddy::start_in(dir.path(), &config).expect("eddy starts");
    assert!(wait_until(Duration::from_secs(20), || eddy.log().contains("Subscribed.")), "{}", eddy.log());
    assert!(eddy.stop().expect("eddy stops").success());
    publish(&broker.url(), 1000, 1, &[]);

    let results = dir.path().join("results.jsonl");
    let mut eddy = Eddy::start_in(dir.path(), &config).expect("eddy starts again");
    assert!(wait_until(Duration::from_secs(30), || batch_count(&results, "temp_c") >= 200), "{}", eddy.log());
    eddy.kill();
    eddy.wait(Duration::from_secs(10)).expect("eddy dies");

    let mut eddy = Eddy::start_in(dir.path(), &config).expect("eddy restarts");
    wait_for_readings(&eddy, &results, 1000);
    // Give a wrongly stored redelivery time to show up before counting.
    std::thread::sleep(Duration::from_millis(500));
    assert!(eddy.stop().expect("eddy stops").success());
    let received_after_restart = source_counter(&eddy.log(), "broker", "received").unwrap_or(0);
    assert!(received_after_restart > 0, "the kill came after the backlog:\n{}", eddy.log());
    assert!(
        eddy.log().contains("Recognising redeliveries of messages stored before the restart."),
        "the restarted source got the stored marks:\n{}",
        eddy.log()
    );
    // Redeliveries are the messages sent with DUP after eddy's third connection.
    let connection = format!("as {client_id} ");
    let log = broker.log();
    let third_connection = log
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(&connection))
        .nth(2)
        .map_or(0, |(line_idx, _)| line_idx);
    let redelivered = log
        .lines()
        .skip(third_connection)
        .filter(|line| line.contains(&format!("Sending PUBLISH to {client_id} (d1")))
        .count();
    let counted = batch_count(&results, "temp_c");
    assert_eq!(counted, 1000, "every reading once ({redelivered} messages redelivered after the kill)");
    eprintln!("{redelivered} messages redelivered after the kill, each reading counted once");
}

#[test]
fn readme_serial_and_mqtt_example_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = readme
        .split("### Reading serial devices and MQTT brokers")
        .nth(1)
        .and_then(|section| section.split("```toml\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("README has a serial and MQTT example");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eddy.toml");
    std::fs::write(&path, format!("device_id = \"gw\"\ndata_dir = \"/tmp/eddy\"\n{block}")).unwrap();
    let output = Command::new(eddy_binary())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("EDDY_MQTT_PASSWORD", "secret")
        .output()
        .unwrap();
    assert!(output.status.success(), "README example: {}", String::from_utf8_lossy(&output.stderr));
}

/// The log refuses readings while the disk budget is full (`reject_new`, the hub down): the
/// refused MQTT messages stay unacknowledged, eddy reconnects so that the broker redelivers
/// them, and once the hub has drained the outbox every published reading is stored, once.
#[test]
fn mqtt_messages_refused_while_the_store_is_full_are_redelivered_and_stored_later() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let hub = eddy_tests::http_hub::HttpHub::start().expect("the HTTP hub starts");
    hub.stop();
    let config = ConfigToml::new("gw-mqtt")
        .table("storage")
        .key("max_bytes", 65536)
        .key("policy", "reject_new")
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .table("batch")
        .key("interval", "200ms")
        .mqtt_source("broker", &broker.url())
        .key("client_id", "eddy-refused")
        .key("topics", ["sensors/+/reading"])
        .key("sensor_from_topic", 1)
        .window("w", "1h")
        .key("fields", ["temp_c"])
        .key("aggregates", ["count"])
        .sink("file")
        .key("path", "{dir}/results.jsonl")
        .key("records", ["window", "batch"])
        .http_sink("hub", &hub.url())
        .key("records", ["batch"])
        .key("max_backoff", "200ms")
        .key("timeout", "1s")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let results = eddy.dir.join("results.jsonl");
    assert!(
        wait_until(Duration::from_secs(20), || eddy.log().contains("Connected to the MQTT broker.")),
        "{}",
        eddy.log()
    );
    // 1000 sensors: every 200 ms micro-batch is up to 1000 results (~40 KB stored), and the
    // hub holds them all: a few batches fill the 64 KiB budget.
    let count = 12_000;
    let output = Command::new(eddy_binary())
        .args([
            "simulate",
            "--mqtt",
            &broker.url(),
            "--topic",
            "sensors/{sensor}/reading",
            "--sensors",
            "1000",
        ])
        .args(["--count", &count.to_string(), "--seed", "7"])
        .output()
        .expect("eddy simulate runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        wait_until(Duration::from_secs(30), || eddy.log().contains("The log refused an MQTT message")),
        "the store never filled; results hold {} readings:\n{}",
        batch_count(&results, "temp_c"),
        eddy.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || eddy
            .log()
            .contains("Reconnecting for the broker to redeliver the messages the log refused.")),
        "{}",
        eddy.log()
    );
    assert!(batch_count(&results, "temp_c") < count, "some readings wait for the hub");
    hub.restart().expect("the hub comes back");
    assert!(
        wait_until(Duration::from_secs(60), || batch_count(&results, "temp_c") >= count),
        "expected {count} readings, results hold {}; eddy's log:\n{}",
        batch_count(&results, "temp_c"),
        eddy.log()
    );
    assert!(eddy.stop().expect("eddy stops").success(), "{}", eddy.log());
    let log = eddy.log();
    assert_eq!(batch_count(&results, "temp_c"), count, "each reading once");
    // Refused readings were parsed (accepted) again when redelivered.
    assert!(source_counter(&log, "broker", "accepted").unwrap_or(0) > count, "{log}");
}
