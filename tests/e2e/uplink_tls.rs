//! The MQTT uplink over TLS (mqtts://) against mosquitto, authenticated the two ways hubs do it:
//! a client certificate (AWS IoT Core) and a user name with a password from a file (Azure IoT
//! Hub's SAS token).

use std::time::Duration;

use eddy_tests::mosquitto::{free_port, Mosquitto};
use eddy_tests::mqtt_hub::MqttCollector;
use eddy_tests::pki::TestPki;
use eddy_tests::Eddy;

use crate::uplink::{
    all_delivered, base_ms, check_every_result_in_order, config, counters, oracle, readings, send, wait_for,
};

fn tls_listener(pki: &TestPki) -> String {
    format!(
        "cafile {}\ncertfile {}\nkeyfile {}\n",
        pki.ca_cert.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    )
}

#[test]
fn mqtts_uplink_authenticates_with_a_client_certificate() {
    let pki = TestPki::generate("gw-up").expect("a test PKI (openssl)");
    // The TLS listener requires a client certificate; a second, plain listener is for the
    // test's subscriber.
    let plain_port = free_port();
    let hub = Mosquitto::start_with(&format!(
        "{}require_certificate true\nuse_identity_as_username true\nlistener {plain_port} 127.0.0.1\n",
        tls_listener(&pki)
    ))
    .expect("a TLS mosquitto starts");
    let collector =
        MqttCollector::start(std::net::SocketAddr::from(([127, 0, 0, 1], plain_port)), "devices/#");
    assert!(eddy_tests::wait_until(Duration::from_secs(10), || collector.subscribed()));
    let config = config()
        .mqtt_sink("hub", &format!("mqtts://127.0.0.1:{}", hub.port))
        .key("client_id", "gw-up")
        .key("ca_file", pki.ca_cert.display().to_string())
        .key("cert_file", pki.client_cert.display().to_string())
        .key("key_file", pki.client_key.display().to_string())
        .key("records", ["window"])
        .key("records_per_message", 50)
        .key("max_backoff", "300ms")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    send(&eddy, &readings(base_ms(), 4, 0, 4));
    let received = || collector.records().into_iter().map(|(_, record)| record).collect::<Vec<_>>();
    wait_for(&eddy, Duration::from_secs(20), "the results over TLS", || {
        all_delivered(&eddy, 12, &received())
    });
    assert!(eddy.stop().expect("eddy stops").success());
    // The listener requires a certificate signed by the CA: delivery proves eddy presented one.
    check_every_result_in_order(&oracle(&eddy), &received(), 0);
}

#[test]
fn mqtts_uplink_authenticates_with_a_user_name_and_a_password_file() {
    let pki = TestPki::generate("unused").expect("a test PKI (openssl)");
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("sas-token");
    std::fs::write(&password_file, "SharedAccessSignature sr=hub%2Fdevices%2Fgw-up&sig=abc&se=1\n").unwrap();
    let mosquitto_passwords = secrets.path().join("passwd");
    Mosquitto::write_password_file(
        &mosquitto_passwords,
        "hub.example/gw-up/?api-version=2021-04-12",
        "SharedAccessSignature sr=hub%2Fdevices%2Fgw-up&sig=abc&se=1",
    )
    .expect("mosquitto_passwd");
    eddy_tests::pki::make_readable(secrets.path()).unwrap();
    let hub = Mosquitto::start_with(&format!(
        "{}allow_anonymous false\npassword_file {}\n",
        tls_listener(&pki),
        mosquitto_passwords.display()
    ))
    .expect("a TLS mosquitto starts");
    let config = config()
        .mqtt_sink("hub", &format!("mqtts://127.0.0.1:{}", hub.port))
        .key("client_id", "gw-up")
        .key("username", "hub.example/gw-up/?api-version=2021-04-12")
        .key("password_file", password_file.display().to_string())
        .key("ca_file", pki.ca_cert.display().to_string())
        .key("topic", "devices/{device_id}/messages/events/type={type}")
        .key("records", ["window"])
        .key("max_backoff", "300ms")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    send(&eddy, &readings(base_ms(), 3, 0, 4));
    wait_for(&eddy, Duration::from_secs(20), "nine results in the outbox", || oracle(&eddy).len() == 9);
    // Delivered means PUBACKed by the broker that checked the password.
    wait_for(&eddy, Duration::from_secs(20), "the hub connection", || eddy.log().contains("Hub connected."));
    assert!(eddy.stop().expect("eddy stops").success());
    let uplink = counters(&eddy.log(), "Uplink counters.", "hub");
    assert_eq!(uplink["delivered"], 9, "{uplink:?}\n{}", eddy.log());
    assert_eq!(uplink["outbox_depth"], 0);
    assert!(!eddy.log().contains("sig=abc"), "the SAS token leaked into the log");
}
