//! The `kind = "mqtt"` uplink keys as written, and their validation into the typed
//! [`MqttConfig`]. (Apart from `config.rs`, which holds the typed settings.)

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use eddy_common::{invalid, password_from, redact_url, KeyError, PlainCredential};
use serde::Deserialize;

use crate::config_keys::{keep_alive, timeout, tls_files};
use crate::mqtt::config::{check_topic_template, MqttConfig, MqttUrl};
use eddy_common::Secret;

/// One `[[sinks]]` entry with `kind = "mqtt"`, as written (the daemon takes `kind`, `name`,
/// `records` and the delivery keys every sink has). Its `Debug` shows the URL redacted.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttSink {
    /// The hub's `mqtt://` or `mqtts://` URL (required).
    pub url: Option<String>,
    /// Topic template (default `devices/{device_id}/{type}`).
    pub topic: Option<String>,
    /// Client id (default `eddy-{device_id}`).
    pub client_id: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// File holding the password (SAS token).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password (SAS token).
    pub password_env: Option<String>,
    /// Records per message (default 1).
    pub records_per_message: Option<u64>,
    /// Largest message payload, bytes (default 131072).
    pub max_message_bytes: Option<u64>,
    /// Keep-alive interval (default 30s).
    #[serde(with = "humantime_serde", default)]
    pub keep_alive: Option<Duration>,
    /// Longest wait for all PUBACKs of a delivery (default 30s).
    #[serde(with = "humantime_serde", default)]
    pub ack_timeout: Option<Duration>,
    /// Longest wait for the connection (default 10s).
    #[serde(with = "humantime_serde", default)]
    pub connect_timeout: Option<Duration>,
    /// CA certificates, PEM (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate, PEM, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client key, PEM, with `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Accept a user name and password over plain `mqtt://` (default false: refused), with a
    /// warning.
    pub allow_insecure: Option<bool>,
}

impl fmt::Debug for RawMqttSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RawMqttSink")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("client_id", &self.client_id)
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("allow_insecure", &self.allow_insecure)
            .finish_non_exhaustive()
    }
}

impl RawMqttSink {
    /// Validates the entry at `key` (`sinks[N]`) of the sink `name` on gateway `device_id`.
    /// Reads the password file or variable now, so that a missing secret is a configuration
    /// error naming its key. A user name or password over plain `mqtt://` is refused unless
    /// `allow_insecure = true`, which adds a line to `warnings`.
    pub fn validate(
        self,
        key: &str,
        name: &str,
        device_id: &str,
        warnings: &mut Vec<String>,
    ) -> Result<MqttConfig, KeyError> {
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| invalid(format!("{key}.url"), "is required for kind = \"mqtt\""))?;
        let broker = MqttUrl::parse(url).map_err(|message| invalid(format!("{key}.url"), message))?;
        let has_tls_files = self.ca_file.is_some() || self.cert_file.is_some();
        let tls = tls_files(key, self.ca_file, self.cert_file, self.key_file)?;
        if !broker.tls && has_tls_files {
            return Err(invalid(format!("{key}.ca_file"), "TLS files need an mqtts:// url"));
        }
        let topic = self.topic.unwrap_or_else(|| "devices/{device_id}/{type}".to_owned());
        check_topic_template(&topic).map_err(|message| invalid(format!("{key}.topic"), message))?;
        let client_id = self.client_id.unwrap_or_else(|| format!("eddy-{device_id}"));
        if client_id.is_empty() || client_id.len() > 128 {
            return Err(invalid(format!("{key}.client_id"), "must be 1 to 128 characters"));
        }
        let password =
            password_from(key, self.password_file.as_deref(), self.password_env.as_deref())?.map(Secret::new);
        if password.is_some() && self.username.is_none() {
            return Err(invalid(format!("{key}.username"), "is required with a password"));
        }
        let credential = match (&self.password_file, &self.password_env, &self.username) {
            (Some(_), _, _) => Some("password_file"),
            (_, Some(_), _) => Some("password_env"),
            (_, _, Some(_)) => Some("username"),
            _ => None,
        };
        if let (false, Some(credential)) = (broker.tls, credential) {
            PlainCredential {
                key: format!("{key}.{credential}"),
                transport: "mqtt://",
                instead: "an mqtts:// url",
            }
            .check(self.allow_insecure.unwrap_or(false), warnings)?;
        }
        let records_per_message = usize::try_from(self.records_per_message.unwrap_or(1))
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| invalid(format!("{key}.records_per_message"), "must be between 1 and 10000"))?;
        let max_message_bytes = usize::try_from(self.max_message_bytes.unwrap_or(128 * 1024))
            .ok()
            .filter(|n| (1024..=256 * 1024 * 1024).contains(n))
            .ok_or_else(|| {
                invalid(format!("{key}.max_message_bytes"), "must be between 1024 and 268435456")
            })?;
        Ok(MqttConfig {
            name: name.to_owned(),
            broker,
            tls,
            client_id,
            topic,
            device_id: device_id.to_owned(),
            username: self.username,
            password,
            records_per_message,
            max_message_bytes,
            keep_alive: keep_alive(key, self.keep_alive, Duration::from_secs(30))?,
            connect_timeout: timeout(key, "connect_timeout", self.connect_timeout, Duration::from_secs(10))?,
            ack_timeout: timeout(key, "ack_timeout", self.ack_timeout, Duration::from_secs(30))?,
        })
    }
}
