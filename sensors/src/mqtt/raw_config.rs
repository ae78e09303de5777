//! The `kind = "mqtt"` source keys as written, and their validation into the typed
//! [`MqttSourceConfig`]. (Apart from `config.rs`, which holds the typed settings.)

use std::path::PathBuf;
use std::time::Duration;

use eddy_common::{invalid, password_from, KeyError, PlainCredential};
use serde::Deserialize;

use crate::mqtt::config::{MqttBroker, MqttQos, MqttSourceConfig, MqttTls, Secret};
use crate::parse::{format_from_keys, Format};

/// One `[[sources]]` entry with `kind = "mqtt"`, as written (the daemon takes `kind` and
/// `name`, the keys every source has).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttSource {
    /// `mqtt://host[:port]` or `mqtts://host[:port]` (required).
    pub url: Option<String>,
    /// Client id; names the persistent session (required).
    pub client_id: Option<String>,
    /// Topic filters (at least one).
    pub topics: Option<Vec<String>>,
    /// QoS of the subscriptions: 0, 1 (default) or 2.
    pub qos: Option<u64>,
    /// User name.
    pub username: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Accept a user name and password over plain `mqtt://` (default false: refused), with a
    /// warning.
    pub allow_insecure: Option<bool>,
    /// CA certificate(s), PEM; required with `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (chain), PEM, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client key, PEM, with `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Deprecated spelling of `cert_file`: still loads, with a warning.
    pub client_cert: Option<PathBuf>,
    /// Deprecated spelling of `key_file`: still loads, with a warning.
    pub client_key: Option<PathBuf>,
    /// `false` (default) for a persistent session.
    pub clean_session: Option<bool>,
    /// Keep-alive interval (default 30s).
    #[serde(with = "humantime_serde", default)]
    pub keep_alive: Option<Duration>,
    /// Topic segment (0-based) holding the sensor id (JSON payloads only).
    pub sensor_from_topic: Option<u64>,
    /// Messages awaiting durability at most (default 1024).
    pub max_in_flight: Option<u64>,
    /// Largest payload decoded, bytes (default 262144); larger messages are acknowledged and
    /// counted as `message_too_large`.
    pub max_payload_bytes: Option<u64>,
    /// Read the broker's dropped-messages counter from `$SYS` (default true).
    pub broker_stats: Option<bool>,
    /// Payload format: `json` (default), `csv` or `influx`.
    pub format: Option<String>,
    /// Timestamp unit of `influx` payloads: `ns` (default), `us`, `ms` or `s`.
    pub precision: Option<String>,
}

impl RawMqttSource {
    /// Validates the entry at `key` (`sources[N]`) into the subscription settings and payload
    /// format. Reads the password file or variable now, so that a missing secret is a
    /// configuration error naming its key. A deprecated key spelling adds a line to `warnings`,
    /// and so do credentials over plain `mqtt://`, refused unless `allow_insecure = true`.
    pub fn validate(
        self,
        key: &str,
        warnings: &mut Vec<String>,
    ) -> Result<(MqttSourceConfig, Format), KeyError> {
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| invalid(format!("{key}.url"), "is required for kind = \"mqtt\""))?;
        let broker = MqttBroker::parse_url(url).map_err(|message| invalid(format!("{key}.url"), message))?;
        let client_id = self.client_id.clone().ok_or_else(|| {
            invalid(
                format!("{key}.client_id"),
                "is required for kind = \"mqtt\": it names the persistent session at the broker, so it \
                 must be stable and unique per gateway",
            )
        })?;
        if client_id.is_empty() || client_id.len() > 128 || client_id.contains(['/', '+', '#']) {
            return Err(invalid(format!("{key}.client_id"), "must be 1 to 128 characters, without / + #"));
        }
        let topics = self.topics.clone().unwrap_or_default();
        if topics.is_empty() {
            return Err(invalid(format!("{key}.topics"), "at least one topic filter is needed"));
        }
        for (topic_idx, topic) in topics.iter().enumerate() {
            check_topic_filter(topic).map_err(|message| {
                invalid(format!("{key}.topics[{topic_idx}]"), format!("`{topic}` {message}"))
            })?;
        }
        let mut mqtt = MqttSourceConfig::new(broker, client_id, topics);
        mqtt.qos = match self.qos {
            None | Some(1) => MqttQos::AtLeastOnce,
            Some(0) => MqttQos::AtMostOnce,
            Some(2) => MqttQos::ExactlyOnce,
            Some(_) => return Err(invalid(format!("{key}.qos"), "must be 0, 1 or 2")),
        };
        mqtt.username = self.username.clone();
        mqtt.password = password_from(key, self.password_file.as_deref(), self.password_env.as_deref())?
            .map(Secret::verbatim);
        if mqtt.password.is_some() && mqtt.username.is_none() {
            return Err(invalid(format!("{key}.username"), "is required when a password is given"));
        }
        let credential = match (&self.password_file, &self.password_env, &self.username) {
            (Some(_), _, _) => Some("password_file"),
            (_, Some(_), _) => Some("password_env"),
            (_, _, Some(_)) => Some("username"),
            _ => None,
        };
        if let (false, Some(credential)) = (mqtt.broker.tls, credential) {
            PlainCredential {
                key: format!("{key}.{credential}"),
                transport: "mqtt://",
                instead: "an mqtts:// url",
            }
            .check(self.allow_insecure.unwrap_or(false), warnings)?;
        }
        let cert_file = renamed(key, "cert_file", self.cert_file, "client_cert", self.client_cert, warnings)?;
        let key_file = renamed(key, "key_file", self.key_file, "client_key", self.client_key, warnings)?;
        mqtt.tls = match (&self.ca_file, cert_file, key_file) {
            (None, None, None) => None,
            (None, _, _) => {
                return Err(invalid(format!("{key}.ca_file"), "is required with cert_file/key_file"))
            }
            (Some(ca_file), cert_file, key_file) => {
                let client_auth = match (cert_file, key_file) {
                    (Some(cert_file), Some(key_file)) => Some((cert_file, key_file)),
                    (None, None) => None,
                    _ => {
                        return Err(invalid(format!("{key}.cert_file"), "cert_file and key_file go together"))
                    }
                };
                Some(MqttTls { ca_file: ca_file.clone(), client_auth })
            }
        };
        if mqtt.broker.tls && mqtt.tls.is_none() {
            return Err(invalid(format!("{key}.ca_file"), "is required with an mqtts:// url"));
        }
        if !mqtt.broker.tls && mqtt.tls.is_some() {
            return Err(invalid(format!("{key}.ca_file"), "applies only to an mqtts:// url"));
        }
        if let Some(clean_session) = self.clean_session {
            mqtt.clean_session = clean_session;
        }
        if let Some(keep_alive) = self.keep_alive {
            if !(Duration::from_secs(5)..=Duration::from_secs(65_535)).contains(&keep_alive) {
                return Err(invalid(format!("{key}.keep_alive"), "must be between 5s and 65535s"));
            }
            mqtt.keep_alive = keep_alive;
        }
        let format = format_from_keys(key, self.format.as_deref(), self.precision.as_deref())?;
        if let Some(segment) = self.sensor_from_topic {
            if !matches!(format, Format::Json) {
                return Err(invalid(format!("{key}.sensor_from_topic"), "applies only to format = \"json\""));
            }
            mqtt.sensor_from_topic =
                Some(usize::try_from(segment).ok().filter(|segment| *segment < 64).ok_or_else(|| {
                    invalid(format!("{key}.sensor_from_topic"), "must be a topic segment 0 to 63")
                })?);
        }
        if let Some(max_in_flight) = self.max_in_flight {
            mqtt.max_in_flight = usize::try_from(max_in_flight)
                .ok()
                .filter(|n| (1..=65_535).contains(n))
                .ok_or_else(|| invalid(format!("{key}.max_in_flight"), "must be between 1 and 65535"))?;
        }
        if let Some(max_payload) = self.max_payload_bytes {
            mqtt.max_payload_bytes =
                usize::try_from(max_payload).ok().filter(|n| (64..=16 << 20).contains(n)).ok_or_else(
                    || invalid(format!("{key}.max_payload_bytes"), "must be between 64 and 16777216"),
                )?;
        }
        if let Some(broker_stats) = self.broker_stats {
            mqtt.broker_stats = broker_stats;
        }
        Ok((mqtt, format))
    }
}

/// The value of a key that has a canonical and a deprecated spelling: an error if both are
/// given, a warning if only the old one is.
fn renamed(
    key: &str,
    name: &str,
    value: Option<PathBuf>,
    old_name: &str,
    old_value: Option<PathBuf>,
    warnings: &mut Vec<String>,
) -> Result<Option<PathBuf>, KeyError> {
    match (value, old_value) {
        (Some(_), Some(_)) => Err(invalid(
            format!("{key}.{old_name}"),
            format!("give {name} or its old spelling {old_name}, not both"),
        )),
        (None, Some(old_value)) => {
            warnings.push(format!("{key}.{old_name} is deprecated: write {key}.{name} instead"));
            Ok(Some(old_value))
        }
        (value, None) => Ok(value),
    }
}

/// An MQTT topic filter: non-empty, `+` and `#` only as whole levels, `#` last.
fn check_topic_filter(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() || topic.len() > 65_535 || topic.contains('\0') {
        return Err("is not a topic filter (empty, too long, or with a NUL)");
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (level_idx, level) in levels.iter().enumerate() {
        if level.contains(['+', '#']) && level.len() > 1 {
            return Err("has a wildcard that is not a whole level");
        }
        if *level == "#" && level_idx + 1 != levels.len() {
            return Err("has `#` before its last level");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RawMqttSource {
        RawMqttSource {
            url: Some("mqtts://broker".to_owned()),
            client_id: Some("gw".to_owned()),
            topics: Some(vec!["a/#".to_owned()]),
            ca_file: Some(PathBuf::from("/ca.pem")),
            ..RawMqttSource::default()
        }
    }

    #[test]
    fn client_cert_and_client_key_still_load_with_a_warning() {
        let raw = RawMqttSource {
            client_cert: Some(PathBuf::from("/c.pem")),
            client_key: Some(PathBuf::from("/k.pem")),
            ..base()
        };
        let mut warnings = Vec::new();
        let (mqtt, _) = raw.validate("sources[2]", &mut warnings).expect("valid");
        let tls = mqtt.tls.expect("tls");
        assert_eq!(tls.client_auth, Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem"))));
        assert_eq!(
            warnings,
            [
                "sources[2].client_cert is deprecated: write sources[2].cert_file instead",
                "sources[2].client_key is deprecated: write sources[2].key_file instead",
            ]
        );
    }

    #[test]
    fn both_spellings_of_a_key_are_refused() {
        let raw = RawMqttSource {
            cert_file: Some(PathBuf::from("/c.pem")),
            client_cert: Some(PathBuf::from("/c.pem")),
            key_file: Some(PathBuf::from("/k.pem")),
            ..base()
        };
        let error = raw.validate("sources[0]", &mut Vec::new()).expect_err("both spellings");
        assert_eq!(error.key, "sources[0].client_cert");
    }
}
