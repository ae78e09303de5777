//! Settings of the MQTT uplink and the parsing of its `mqtt://` / `mqtts://` URL.

use std::time::Duration;

use crate::secret::Secret;
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

/// A broker address from `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]`
/// (TLS, default port 8883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS.
    pub tls: bool,
}

impl MqttUrl {
    /// Parses `url`; the error says what is wrong.
    pub fn parse(url: &str) -> Result<MqttUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!("`{url}` must start with mqtt:// or mqtts://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '@']) {
            return Err(format!("`{url}` must be scheme://host[:port], without path, query or user"));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = parse_authority(authority, default_port)
            .ok_or_else(|| format!("`{url}` has no valid host[:port]"))?;
        Ok(MqttUrl { host, port, tls })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
pub(crate) fn parse_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port.parse().ok()?),
            None => (authority.to_owned(), default_port),
        }
    };
    (!host.is_empty() && port != 0).then_some((host, port))
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
    fn urls_give_host_port_and_tls() {
        let check = |url: &str, host: &str, port: u16, tls: bool| {
            assert_eq!(MqttUrl::parse(url), Ok(MqttUrl { host: host.into(), port, tls }), "{url}");
        };
        check("mqtt://127.0.0.1:1884", "127.0.0.1", 1884, false);
        check("mqtt://hub.local", "hub.local", 1883, false);
        check("mqtts://x.iot.eu-west-1.amazonaws.com", "x.iot.eu-west-1.amazonaws.com", 8883, true);
        check("mqtts://[::1]:8884/", "::1", 8884, true);
        for bad in ["http://x", "mqtt://", "mqtt://h:0", "mqtt://h:99999", "mqtt://u@h", "mqtt://h/t"] {
            assert!(MqttUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_templates_know_two_placeholders() {
        assert!(check_topic_template("devices/{device_id}/{type}").is_ok());
        assert!(check_topic_template("devices/{device_id}/messages/events/").is_ok());
        assert!(check_topic_template("a/{sensor}").is_err());
        assert!(check_topic_template("a/#").is_err());
    }
}
