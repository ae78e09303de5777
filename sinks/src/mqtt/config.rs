//! Settings of the MQTT uplink, already validated and typed (the URL is parsed by `eddy_common::BrokerUrl`).

use std::time::Duration;

pub use eddy_common::BrokerUrl as MqttUrl;
use eddy_common::Secret;

use crate::tls::TlsFiles;

/// Where and how the MQTT uplink publishes. Plain data, validated by the daemon's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// The sink's name (logs, cursor).
    pub name: String,
    /// The broker, from `url`.
    pub broker: MqttUrl,
    /// TLS files (used when `broker.tls`).
    pub tls: TlsFiles,
    /// MQTT client id (Azure IoT Hub and AWS IoT Core want the device / thing name).
    pub client_id: String,
    /// Topic template: `{device_id}` and `{type}` (the record kind) are replaced.
    pub topic: String,
    /// Value of `{device_id}`.
    pub device_id: String,
    /// User name (Azure IoT Hub: `{hub}.azure-devices.net/{device}/?api-version=2021-04-12`).
    pub username: Option<String>,
    /// Password (Azure IoT Hub: a SAS token).
    pub password: Option<Secret>,
    /// Records per message: 1 sends each record as its own JSON object; more sends JSON arrays.
    pub records_per_message: usize,
    /// Largest payload; an array is cut before it would grow past this (AWS IoT Core: 128 KiB).
    pub max_message_bytes: usize,
    /// MQTT keep-alive: a silent link is probed with PINGREQ and dropped if no answer comes.
    pub keep_alive: Duration,
    /// Longest wait for the TCP/TLS connection and the CONNACK.
    pub connect_timeout: Duration,
    /// Longest wait for every PUBACK of one delivery; past it the link is dropped and rebuilt
    /// (a blackholed link that sends no RST is noticed here).
    pub ack_timeout: Duration,
}

/// Checks a topic template: only `{device_id}` and `{type}` placeholders, no MQTT wildcards.
pub fn check_topic_template(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if template.contains(['#', '+']) {
        return Err("must not contain the MQTT wildcards # or +".to_owned());
    }
    let stripped = template.replace("{device_id}", "").replace("{type}", "");
    if stripped.contains(['{', '}']) {
        return Err("only the placeholders {device_id} and {type} are known".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_templates_know_two_placeholders() {
        assert!(check_topic_template("devices/{device_id}/{type}").is_ok());
        assert!(check_topic_template("devices/{device_id}/messages/events/").is_ok());
        assert!(check_topic_template("a/{sensor}").is_err());
        assert!(check_topic_template("a/#").is_err());
    }
}
