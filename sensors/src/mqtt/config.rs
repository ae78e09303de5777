//! Settings of the MQTT source, already validated and typed by the daemon's config loader,
//! and the broker URL they start from.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where the broker is: `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]`
/// (TLS, default port 8883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttBroker {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://`: TLS, verified against the configured CA.
    pub tls: bool,
}

impl MqttBroker {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]`; the error says what is wrong.
    pub fn parse_url(url: &str) -> Result<MqttBroker, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(format!("`{url}` must start with mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "`{url}` must be mqtt(s)://host[:port] without a path, query or credentials \
                 (credentials have their own keys)"
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) =
                bracketed.split_once(']').ok_or_else(|| format!("`{url}`: unclosed `[` in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(format!("`{url}`: unexpected text after the host")),
            };
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let port = match port {
            None => default_port,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("`{url}`: `{port}` is not a port number"))?,
        };
        Ok(MqttBroker { host: host.to_owned(), port, tls })
    }
}

impl fmt::Display for MqttBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A password: never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The password itself, for the CONNECT packet only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

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
    /// Largest payload decoded; larger ones are rejected as `line_too_long` (and acked).
    pub max_payload_bytes: usize,
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
    /// Default `retry_min`.
    pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(100);
    /// Default `retry_max`.
    pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);

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
            retry_min: MqttSourceConfig::DEFAULT_RETRY_MIN,
            retry_max: MqttSourceConfig::DEFAULT_RETRY_MAX,
            test_hold_messages: false,
            test_skip_acks: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports_and_refuse_the_rest() {
        let parse = |url| MqttBroker::parse_url(url);
        let broker = |host: &str, port, tls| Ok(MqttBroker { host: host.to_owned(), port, tls });
        assert_eq!(parse("mqtt://localhost"), broker("localhost", 1883, false));
        assert_eq!(parse("mqtts://10.0.0.2:8884/"), broker("10.0.0.2", 8884, true));
        assert_eq!(parse("mqtts://broker.local"), broker("broker.local", 8883, true));
        assert_eq!(parse("mqtt://[::1]:1884"), broker("::1", 1884, false));
        for bad in
            ["tcp://x", "mqtt://", "mqtt://h:0", "mqtt://h:x", "mqtt://u:p@h", "mqtt://h/t", "mqtt://[::1"]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse("mqtt://[::1]:1884").unwrap().to_string(), "mqtt://[::1]:1884");
    }

    #[test]
    fn secrets_are_not_printed() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "hunter2");
    }
}
