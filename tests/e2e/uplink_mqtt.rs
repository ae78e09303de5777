//! The MQTT uplink against a real mosquitto acting as the hub: an outage of the hub, a link
//! reset mid-batch, and a blackholed link, with every window result arriving in order.

use std::time::Duration;

use eddy_tests::config::ConfigToml;
use eddy_tests::mosquitto::Mosquitto;
use eddy_tests::mqtt_hub::MqttCollector;
use eddy_tests::proxy::TcpProxy;
use eddy_tests::Eddy;

use crate::uplink::{
    all_delivered, base_ms, check_every_result_in_order, check_oracle, config, counters, oracle, readings,
    send, wait_for,
};

/// Records per delivery: the duplicate bound is this per failed delivery.
const BATCH: usize = 64;

/// The uplink tests' eddy with an MQTT sink `hub` publishing to the broker at `url`.
fn mqtt_config(url: &str) -> ConfigToml {
    config()
        .mqtt_sink("hub", url)
        .key("records", ["window"])
        .key("batch_max_records", BATCH)
        .key("max_backoff", "300ms")
        .key("connect_timeout", "1s")
        .key("ack_timeout", "1500ms")
        .key("keep_alive", "2s")
}

fn collector(hub: &Mosquitto) -> MqttCollector {
    let collector = MqttCollector::start(hub.addr(), "devices/#");
    assert!(
        eddy_tests::wait_until(Duration::from_secs(10), || collector.subscribed()),
        "the test subscriber could not subscribe to the hub"
    );
    collector
}

fn received(collector: &MqttCollector) -> Vec<serde_json::Value> {
    collector.records().into_iter().map(|(_, record)| record).collect()
}

#[test]
fn mqtt_uplink_delivers_every_window_in_order_across_a_hub_outage() {
    let mut hub = Mosquitto::start().expect("the hub mosquitto starts");
    let collector = collector(&hub);
    let mut eddy = Eddy::start(&mqtt_config(&hub.url()).to_toml()).expect("eddy starts");
    let base = base_ms();
    let sensors = 5;

    send(&eddy, &readings(base, sensors, 0, 3));
    wait_for(&eddy, Duration::from_secs(20), "the first windows at the hub", || {
        received(&collector).len() >= 2 * sensors
    });

    // The hub goes away; readings keep coming and are acknowledged; eddy keeps them.
    hub.stop();
    send(&eddy, &readings(base, sensors, 3, 7));
    wait_for(&eddy, Duration::from_secs(20), "eddy noticing the outage", || {
        eddy.log().contains("Sink is unavailable")
    });
    send(&eddy, &readings(base, sensors, 7, 9));

    hub.restart().expect("the hub comes back");
    send(&eddy, &readings(base, sensors, 9, 10));
    wait_for(&eddy, Duration::from_secs(30), "the backlog at the hub", || {
        all_delivered(&eddy, 9 * sensors, &received(&collector))
    });
    assert!(eddy.stop().expect("eddy stops").success());
    let oracle = oracle(&eddy);
    check_oracle(&oracle, sensors, 10);
    let log = eddy.log();
    let uplink = counters(&log, "Uplink counters.", "hub");
    assert!(uplink["retries"] >= 1, "the outage was seen: {uplink:?}");
    let bound = BATCH * usize::try_from(uplink["retries"]).unwrap();
    check_every_result_in_order(&oracle, &received(&collector), bound);
    // Topic from the default template.
    assert!(collector.records().iter().all(|(topic, _)| topic == "devices/gw-up/window"));
}

#[test]
fn mqtt_uplink_survives_a_reset_mid_batch_and_a_blackhole() {
    let hub = Mosquitto::start().expect("the hub mosquitto starts");
    let collector = collector(&hub);
    let proxy = TcpProxy::start(hub.addr()).expect("proxy");
    let url = format!("mqtt://{}", proxy.addr());
    let mut eddy = Eddy::start(&mqtt_config(&url).to_toml()).expect("eddy starts");
    let base = base_ms();
    let sensors = 20;

    send(&eddy, &readings(base, sensors, 0, 2));
    wait_for(&eddy, Duration::from_secs(20), "the first windows at the hub", || {
        all_delivered(&eddy, sensors, &received(&collector))
    });

    // The link dies with an RST after ~3 messages of the next delivery.
    proxy.reset_after_bytes(400);
    send(&eddy, &readings(base, sensors, 2, 5));
    wait_for(&eddy, Duration::from_secs(20), "the reset", || proxy.resets() >= 1);
    wait_for(&eddy, Duration::from_secs(20), "the results sent across the reset", || {
        all_delivered(&eddy, 4 * sensors, &received(&collector))
    });

    // Now a blackhole: packets vanish, no RST. Only the PUBACK (or CONNACK) timeout can notice;
    // eddy then drops the link and connects again.
    proxy.set_blackhole(true);
    let accepted_before = proxy.accepted();
    send(&eddy, &readings(base, sensors, 5, 7));
    wait_for(&eddy, Duration::from_secs(20), "eddy giving up on the silent link and reconnecting", || {
        proxy.accepted() > accepted_before
    });
    proxy.set_blackhole(false);
    send(&eddy, &readings(base, sensors, 7, 8));
    wait_for(&eddy, Duration::from_secs(30), "every result at the hub", || {
        all_delivered(&eddy, 7 * sensors, &received(&collector))
    });
    assert!(eddy.stop().expect("eddy stops").success());
    let oracle = oracle(&eddy);
    check_oracle(&oracle, sensors, 8);
    let uplink = counters(&eddy.log(), "Uplink counters.", "hub");
    assert!(uplink["retries"] >= 2, "a reset and a blackhole were seen: {uplink:?}");
    let bound = BATCH * usize::try_from(uplink["retries"]).unwrap();
    check_every_result_in_order(&oracle, &received(&collector), bound);
}

#[test]
fn a_blackholed_hub_does_not_hold_up_the_stop() {
    let hub = Mosquitto::start().expect("the hub mosquitto starts");
    let proxy = TcpProxy::start(hub.addr()).expect("proxy");
    let url = format!("mqtt://{}", proxy.addr());
    // The PUBACK wait (30 s) is longer than the stop deadline (20 s), and keep-alive is too slow
    // to notice the blackhole first: only the stop grace can end the delivery.
    let config = mqtt_config(&url).key("ack_timeout", "30s").key("keep_alive", "60s").to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let base = base_ms();
    send(&eddy, &readings(base, 5, 0, 2));
    wait_for(&eddy, Duration::from_secs(20), "the hub connection", || eddy.log().contains("Hub connected."));
    proxy.set_blackhole(true);
    send(&eddy, &readings(base, 5, 2, 4));
    wait_for(&eddy, Duration::from_secs(20), "results in the outbox", || oracle(&eddy).len() == 15);
    let started = std::time::Instant::now();
    let status = eddy.stop().expect("eddy stops");
    assert!(status.success(), "a clean stop, not the deadline: {status}\n{}", eddy.log());
    assert!(started.elapsed() < Duration::from_secs(15), "the stop took {:?}", started.elapsed());
    assert!(eddy.log().contains("of the stop"), "the stop grace ended the delivery:\n{}", eddy.log());
    assert!(eddy.log().contains("undelivered records stay in the outbox"), "{}", eddy.log());
}
