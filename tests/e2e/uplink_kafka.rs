//! The Kafka uplink against a real Kafka-protocol broker (tansu), read back by an independent
//! client (librdkafka, through confluent-kafka): every window result delivered, keyed by
//! sensor onto the partition Kafka's default partitioner picks, in order per sensor; a broker
//! outage during a backlog; a missing topic; SIGKILL of eddy mid-delivery; TLS (tansu behind a
//! socat TLS front). SASL is not tested here: tansu 0.6's SASL PLAIN handshake fails with
//! librdkafka too, and a SCRAM user cannot be created on an in-memory broker that requires
//! authentication; the SASL keys are unit-tested (sinks/src/kafka/config.rs).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use eddy_tests::config::ConfigToml;
use eddy_tests::kafka_broker::{KafkaMessage, Tansu};
use eddy_tests::pki::TestPki;
use eddy_tests::{wait_until, Eddy};

use crate::api::{api_address, get};
use crate::uplink::{
    all_delivered, base_ms, check_every_result_in_order, check_oracle, config, counters, oracle, readings,
    send, wait_for,
};

/// Records per delivery: the duplicate bound is this per failed delivery or crash.
const BATCH: usize = 64;
/// The topic eddy's window records go to (`eddy.{type}`, the default template).
const TOPIC: &str = "eddy.window";
/// Its partitions.
const PARTITIONS: u32 = 3;

fn start_broker() -> Tansu {
    let broker = Tansu::start().expect("the tansu broker starts");
    broker.create_topic(TOPIC, PARTITIONS).expect("the topic is created");
    broker
}

/// The uplink tests' eddy (with its endpoint) and a Kafka sink `hub` producing `window`
/// records to `brokers`.
fn kafka_config(brokers: &str) -> ConfigToml {
    config()
        .table("api")
        .key("listen", "127.0.0.1:0")
        .kafka_sink("hub", brokers)
        .key("records", ["window"])
        .key("batch_max_records", BATCH)
        .key("max_backoff", "300ms")
        .key("connect_timeout", "2s")
        .key("ack_timeout", "3s")
}

/// The records read back from the topic (a message's value is one record), with their
/// messages.
fn read(broker: &Tansu) -> Vec<KafkaMessage> {
    broker.consume(TOPIC).unwrap_or_else(|error| panic!("reading {TOPIC}: {error:#}\n{}", broker.log()))
}

fn records(messages: &[KafkaMessage]) -> Vec<serde_json::Value> {
    messages.iter().map(|message| message.value.clone()).collect()
}

/// Every oracle result reached the topic, each sensor's in order (a sensor's records share a
/// key, hence a partition; across partitions there is no order), identical to the outbox's,
/// with at most `bound` repeats in all. Returns the repeats.
fn check_per_sensor(oracle: &[serde_json::Value], received: &[serde_json::Value], bound: usize) -> usize {
    let sensor = |record: &serde_json::Value| record["sensor"].as_str().unwrap_or_default().to_owned();
    let mut by_sensor: BTreeMap<String, (Vec<serde_json::Value>, Vec<serde_json::Value>)> = BTreeMap::new();
    for record in oracle {
        by_sensor.entry(sensor(record)).or_default().0.push(record.clone());
    }
    for record in received {
        by_sensor.entry(sensor(record)).or_default().1.push(record.clone());
    }
    let duplicates: usize =
        by_sensor.values().map(|(expected, got)| check_every_result_in_order(expected, got, bound)).sum();
    // Repeats are identical to the first copy (same id, same values).
    let by_id: HashMap<&str, &serde_json::Value> =
        oracle.iter().map(|record| (record["id"].as_str().unwrap(), record)).collect();
    for record in received {
        assert_eq!(Some(&record), by_id.get(record["id"].as_str().unwrap()), "a repeat differs");
    }
    assert!(duplicates <= bound, "{duplicates} duplicates, more than the bound {bound}");
    duplicates
}

/// The `/status` entry of the sink `hub`.
fn hub_status(eddy: &Eddy) -> serde_json::Value {
    let status: serde_json::Value =
        serde_json::from_str(&get(api_address(eddy), "/status").1).expect("/status is JSON");
    status["uplinks"].as_array().unwrap().iter().find(|uplink| uplink["name"] == "hub").unwrap().clone()
}

#[test]
fn kafka_uplink_delivers_every_window_keyed_by_sensor() {
    let broker = start_broker();
    let mut eddy = Eddy::start(&kafka_config(&broker.bootstrap()).to_toml()).expect("eddy starts");
    let base = base_ms();
    let sensors = 6;
    send(&eddy, &readings(base, sensors, 0, 6));
    wait_for(&eddy, Duration::from_secs(30), "every window in the topic", || {
        all_delivered(&eddy, 5 * sensors, &records(&read(&broker)))
    });
    assert!(eddy.stop().expect("eddy stops").success());
    let oracle = oracle(&eddy);
    check_oracle(&oracle, sensors, 6);
    let messages = read(&broker);
    let uplink = counters(&eddy.log(), "Uplink counters.", "hub");
    assert_eq!(uplink["retries"], 0, "no failure: {uplink:?}");
    assert_eq!(check_per_sensor(&oracle, &records(&messages), 0), 0);
    // Key `{device_id}/{sensor}`, one partition per key, the one Kafka's default partitioner
    // (murmur2) picks: librdkafka, asked for the same key on a topic of as many partitions,
    // agrees.
    broker.create_topic("probe", PARTITIONS).expect("the probe topic");
    let mut partitions: BTreeMap<String, i64> = BTreeMap::new();
    for message in &messages {
        let key = message.key.clone().expect("every message has a key");
        assert_eq!(key, format!("gw-up/{}", message.value["sensor"].as_str().unwrap()));
        let partition = *partitions.entry(key.clone()).or_insert(message.partition);
        assert_eq!(partition, message.partition, "one key, one partition: {key}");
    }
    assert_eq!(partitions.len(), sensors);
    for (key, partition) in &partitions {
        assert_eq!(broker.murmur2_partition("probe", key).expect("probe"), *partition, "partition of {key}");
    }
}

#[test]
fn kafka_uplink_drains_a_backlog_across_a_broker_outage() {
    let mut broker = start_broker();
    let mut eddy = Eddy::start(&kafka_config(&broker.bootstrap()).to_toml()).expect("eddy starts");
    let base = base_ms();
    let sensors = 5;
    send(&eddy, &readings(base, sensors, 0, 3));
    wait_for(&eddy, Duration::from_secs(30), "the first windows in the topic", || {
        all_delivered(&eddy, 2 * sensors, &records(&read(&broker)))
    });
    // The broker keeps its messages in memory: read them before it goes.
    let mut received = records(&read(&broker));

    broker.stop();
    send(&eddy, &readings(base, sensors, 3, 8));
    wait_for(&eddy, Duration::from_secs(30), "eddy noticing the outage", || {
        eddy.log().contains("Sink is unavailable")
    });
    send(&eddy, &readings(base, sensors, 8, 10));
    assert_eq!(hub_status(&eddy)["online"], false);

    broker.restart().expect("the broker comes back");
    broker.create_topic(TOPIC, PARTITIONS).expect("the topic again");
    send(&eddy, &readings(base, sensors, 10, 11));
    wait_for(&eddy, Duration::from_secs(60), "the backlog in the topic", || {
        let mut all = received.clone();
        all.extend(records(&read(&broker)));
        all_delivered(&eddy, 10 * sensors, &all)
    });
    received.extend(records(&read(&broker)));
    assert!(eddy.stop().expect("eddy stops").success());
    let oracle = oracle(&eddy);
    check_oracle(&oracle, sensors, 11);
    let uplink = counters(&eddy.log(), "Uplink counters.", "hub");
    assert!(uplink["retries"] >= 1, "the outage was seen: {uplink:?}");
    let bound = BATCH * usize::try_from(uplink["retries"]).unwrap();
    check_per_sensor(&oracle, &received, bound);
}

#[test]
fn a_missing_topic_is_named_and_delivered_to_once_created() {
    let broker = Tansu::start().expect("the tansu broker starts");
    let mut eddy = Eddy::start(&kafka_config(&broker.bootstrap()).to_toml()).expect("eddy starts");
    let base = base_ms();
    let sensors = 4;
    send(&eddy, &readings(base, sensors, 0, 4));
    wait_for(&eddy, Duration::from_secs(30), "the missing topic in the log", || {
        eddy.log().contains("topic `eddy.window` does not exist on the brokers")
    });
    let log = eddy.log();
    assert!(log.contains("eddy does not create topics: create it"), "{log}");
    assert_eq!(hub_status(&eddy)["online"], false);
    assert_eq!(hub_status(&eddy)["delivered"], 0);

    broker.create_topic(TOPIC, PARTITIONS).expect("the topic is created");
    wait_for(&eddy, Duration::from_secs(30), "every window once the topic exists", || {
        all_delivered(&eddy, 3 * sensors, &records(&read(&broker)))
    });
    wait_for(&eddy, Duration::from_secs(10), "the sink online again", || hub_status(&eddy)["online"] == true);
    assert!(eddy.stop().expect("eddy stops").success());
    let oracle = oracle(&eddy);
    check_oracle(&oracle, sensors, 4);
    // Nothing was produced before the topic existed: no repeat at all.
    assert_eq!(check_per_sensor(&oracle, &records(&read(&broker)), 0), 0);
}

#[test]
fn a_sigkill_mid_delivery_loses_nothing_and_repeats_within_the_bound() {
    let broker = start_broker();
    let dir = tempfile::tempdir().unwrap();
    // Slow deliveries (a rate cap) so that the kill lands while records are on their way.
    let config = kafka_config(&broker.bootstrap()).key("rate_limit", 50.0).to_toml();
    let mut eddy = Eddy::start_in(dir.path(), &config).expect("eddy starts");
    let base = base_ms();
    let sensors = 20;
    send(&eddy, &readings(base, sensors, 0, 11));
    wait_for(&eddy, Duration::from_secs(30), "the drain under way", || read(&broker).len() >= 30);
    eddy.kill();
    eddy.wait(Duration::from_secs(20)).expect("killed eddy exits");
    let delivered_before = read(&broker).len();
    assert!(delivered_before < 10 * sensors, "the kill came mid-drain ({delivered_before} delivered)");

    let mut eddy = Eddy::start_in(dir.path(), &config).expect("eddy restarts");
    send(&eddy, &readings(base, sensors, 11, 12));
    // The oracle file sink may repeat its last batch after the kill too: its first copies.
    let oracle_once = |eddy: &Eddy| {
        let mut seen = std::collections::HashSet::new();
        oracle(eddy)
            .into_iter()
            .filter(|record| seen.insert(record["id"].as_str().unwrap_or_default().to_owned()))
            .collect::<Vec<_>>()
    };
    wait_for(&eddy, Duration::from_secs(60), "every window after the restart", || {
        let expected = oracle_once(&eddy);
        let got: std::collections::HashSet<String> = records(&read(&broker))
            .iter()
            .map(|record| record["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        expected.len() == 11 * sensors
            && expected.iter().all(|record| got.contains(record["id"].as_str().unwrap_or_default()))
    });
    assert!(eddy.stop().expect("eddy stops").success());
    let oracle = oracle_once(&eddy);
    check_oracle(&oracle, sensors, 12);
    // One kill: at most the delivery in flight again.
    let repeats = check_per_sensor(&oracle, &records(&read(&broker)), BATCH);
    eprintln!("{repeats} repeats after the SIGKILL (bound {BATCH})");
}

#[test]
fn kafka_uplink_over_tls_and_a_broker_it_cannot_trust() {
    let pki = TestPki::generate("gw-up").expect("test certificates");
    let broker = Tansu::start_tls(&pki.server_cert, &pki.server_key, &pki.ca_cert).expect("tansu with TLS");
    broker.create_topic(TOPIC, PARTITIONS).expect("the topic over TLS");
    let config = kafka_config(&broker.bootstrap())
        .key("tls", true)
        .key("ca_file", pki.ca_cert.display().to_string())
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let base = base_ms();
    let sensors = 3;
    send(&eddy, &readings(base, sensors, 0, 4));
    wait_for(&eddy, Duration::from_secs(30), "every window over TLS", || {
        all_delivered(&eddy, 3 * sensors, &records(&read(&broker)))
    });
    assert!(eddy.stop().expect("eddy stops").success());
    check_per_sensor(&oracle(&eddy), &records(&read(&broker)), 0);

    // Without trusting the broker's CA, the handshake fails: nothing goes, the reason is logged.
    let untrusting = kafka_config(&broker.bootstrap()).key("tls", true).to_toml();
    let eddy = Eddy::start(&untrusting).expect("eddy starts");
    send(&eddy, &readings(base, sensors, 0, 2));
    wait_for(&eddy, Duration::from_secs(30), "the refused handshake", || {
        eddy.log().contains("Sink is unavailable") && eddy.log().contains("Kafka broker")
    });
    assert_eq!(hub_status(&eddy)["delivered"], 0);
    assert!(wait_until(Duration::from_secs(1), || hub_status(&eddy)["online"] == false));
}
