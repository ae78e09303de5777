//! Settings of the MQTT source, already validated and typed by the daemon's config loader,
//! and the broker URL they start from.

use std::path::PathBuf;
use std::time::Duration;

pub use eddy_common::{BrokerUrl as MqttBroker, Secret};

/// Files of a TLS connection (`mqtts://`), PEM encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    /// The CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// A client certificate (chain) and its key, for brokers that require one.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// The MQTT quality of service of the subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttQos {
    /// At most once: the broker does not redeliver; nothing to acknowledge.
    AtMostOnce,
    /// At least once: each message is acknowledged once its readings are durable.
    AtLeastOnce,
    /// Exactly once between broker and eddy's receipt: acknowledged (PUBREC) once durable.
    ExactlyOnce,
}

/// How the MQTT source connects and what it subscribes to (`kind = "mqtt"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSourceConfig {
    /// The broker.
    pub broker: MqttBroker,
    /// The client id; with a persistent session it names the session at the broker, so it
    /// must be stable and unique per gateway.
    pub client_id: String,
    /// Topic filters, wildcards allowed (`sensors/+/reading`, `plant/#`).
    pub topics: Vec<String>,
    /// The QoS of the subscriptions.
    pub qos: MqttQos,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password (read from a file or the environment by the daemon).
    pub password: Option<Secret>,
    /// TLS files; required with `mqtts://`.
    pub tls: Option<MqttTls>,
    /// `false` (the default): a persistent session, so the broker keeps the subscriptions
    /// and queues messages while eddy is away, and redelivers unacknowledged ones.
    pub clean_session: bool,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Take the sensor id from this topic segment (0-based): `1` for `sensors/{id}/reading`.
    pub sensor_from_topic: Option<usize>,
    /// Messages handed to the log and not yet acknowledged, at most; past it the source
    /// stops taking messages until the log catches up (the broker holds them).
    pub max_in_flight: usize,
    /// Largest payload decoded; larger ones (up to [`MqttSourceConfig::MAX_PACKET_BYTES`])
    /// are rejected as `message_too_large` and acknowledged.
    pub max_payload_bytes: usize,
    /// Subscribe to the broker's dropped-messages counter
    /// ([`MqttSourceConfig::BROKER_DROPPED_TOPIC`]) and report it.
    pub broker_stats: bool,
    /// First pause before reconnecting; doubled per failure.
    pub retry_min: Duration,
    /// Longest pause between connection attempts.
    pub retry_max: Duration,
    /// Test only (the daemon sets it from `EDDY_TEST_MQTT_HOLD=1`): messages are received
    /// and counted but neither handed to the log nor acknowledged, as if the log had
    /// stalled, so a test can kill eddy while the broker still owes a redelivery.
    #[doc(hidden)]
    pub test_hold_messages: bool,
    /// Test only (the daemon sets it from `EDDY_TEST_MQTT_NO_ACK=1`): messages are stored as
    /// usual but their acknowledgements are never written, as if eddy died between the fsync
    /// and the PUBACK, so a test can check that their redelivery is not stored again.
    #[doc(hidden)]
    pub test_skip_acks: bool,
}

impl MqttSourceConfig {
    /// Default `keep_alive`.
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
    /// Default `max_in_flight`. Throughput is about `max_in_flight` messages per group
    /// commit (BENCHMARKS.md: about 16k readings/s at 256, 48k/s at 1024 with 10 ms commits); a held
    /// message costs a few hundred bytes.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
    /// Default `max_payload_bytes`.
    pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
    /// The largest MQTT packet the client reads (the remaining length: topic, packet id and
    /// payload), at least: `max_payload_bytes` plus room for the longest topic when that is
    /// more. A message up to this size is read, and rejected by eddy if its payload is over
    /// `max_payload_bytes`; a larger one cannot be read (rumqttc stops at its header and
    /// drops the connection), so the broker's `max_packet_size` should be at most this.
    pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;
    /// mosquitto's count of messages it dropped (queue limits), broker-wide; published every
    /// `sys_interval` (10 s by default) and retained.
    pub const BROKER_DROPPED_TOPIC: &'static str = "$SYS/broker/publish/messages/dropped";
    /// Default `retry_min`.
    pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(100);
    /// Default `retry_max`.
    pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);

    /// The packet size limit handed to rumqttc: [`MqttSourceConfig::MAX_PACKET_BYTES`], or
    /// more when `max_payload_bytes` with the longest topic (65535 bytes, its length and the
    /// packet id) needs it.
    pub fn read_limit_bytes(&self) -> usize {
        MqttSourceConfig::MAX_PACKET_BYTES.max(self.max_payload_bytes.saturating_add(65_539))
    }

    /// A persistent QoS 1 session of `client_id` at `broker` on `topics`, other settings at
    /// their defaults.
    pub fn new(broker: MqttBroker, client_id: impl Into<String>, topics: Vec<String>) -> MqttSourceConfig {
        MqttSourceConfig {
            broker,
            client_id: client_id.into(),
            topics,
            qos: MqttQos::AtLeastOnce,
            username: None,
            password: None,
            tls: None,
            clean_session: false,
            keep_alive: MqttSourceConfig::DEFAULT_KEEP_ALIVE,
            sensor_from_topic: None,
            max_in_flight: MqttSourceConfig::DEFAULT_MAX_IN_FLIGHT,
            max_payload_bytes: MqttSourceConfig::DEFAULT_MAX_PAYLOAD_BYTES,
            broker_stats: true,
            retry_min: MqttSourceConfig::DEFAULT_RETRY_MIN,
            retry_max: MqttSourceConfig::DEFAULT_RETRY_MAX,
            test_hold_messages: false,
            test_skip_acks: false,
        }
    }
}
