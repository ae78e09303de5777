//! Settings of the Kafka uplink: the `kind = "kafka"` keys as written ([`RawKafkaSink`]) and
//! their validation into the typed [`KafkaConfig`] the uplink runs with.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use eddy_common::{invalid, password_from, KeyError, PlainCredential, Secret};
use serde::Deserialize;

use crate::config_keys::{timeout, tls_files};
use crate::mqtt::check_topic_template;
use crate::tls::TlsFiles;

/// Kafka's default `message.max.bytes` is 1048588 bytes for a whole record batch; the default
/// limit stays a little below it so the batch header and record framing fit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// How produce requests are compressed (only codecs in pure Rust: no lz4 or zstd, which
/// would link C libraries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaCompression {
    /// No compression (the default).
    None,
    /// gzip (flate2 on miniz_oxide).
    Gzip,
    /// Snappy (the `snap` crate).
    Snappy,
}

/// SASL mechanisms the uplink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `PLAIN` (Azure Event Hubs, Confluent Cloud): only over TLS.
    Plain,
    /// `SCRAM-SHA-256` (AWS MSK, Redpanda).
    ScramSha256,
    /// `SCRAM-SHA-512` (AWS MSK, Redpanda).
    ScramSha512,
}

/// SASL credentials. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// User name (Event Hubs: `$ConnectionString`).
    pub username: String,
    /// Password (Event Hubs: the namespace's connection string).
    pub password: Secret,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Where and how the Kafka uplink produces. Plain data, validated from [`RawKafkaSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// The sink's name (logs, cursor).
    pub name: String,
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// TLS to every broker (`tls = true`), with these files.
    pub tls: Option<TlsFiles>,
    /// SASL authentication.
    pub sasl: Option<SaslCredentials>,
    /// Kafka client id.
    pub client_id: String,
    /// Topic template: `{device_id}` and `{type}` (the record kind) are replaced.
    pub topic: String,
    /// Message key template: `{device_id}`, `{type}` and `{sensor}` (the record's sensor).
    pub key: String,
    /// Value of `{device_id}`.
    pub device_id: String,
    /// Records per message: 1 sends each record as its own JSON object; more sends JSON
    /// arrays of records with the same topic and key.
    pub records_per_message: usize,
    /// Largest message value, and largest record batch of one produce request.
    pub max_message_bytes: usize,
    /// Compression of produce requests.
    pub compression: KafkaCompression,
    /// Longest wait for the connection and the cluster's metadata.
    pub connect_timeout: Duration,
    /// Longest wait for every produce of one delivery to be acknowledged (`acks = all`).
    pub ack_timeout: Duration,
}

/// One `[[sinks]]` entry with `kind = "kafka"`, as written (the daemon takes `kind`, `name`,
/// `records` and the delivery keys every sink has). Holds no secret itself (only where to read
/// one), so its `Debug` is derived.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaSink {
    /// Bootstrap brokers, `host:port` (required).
    pub brokers: Option<Vec<String>>,
    /// Topic template (default `eddy.{type}`).
    pub topic: Option<String>,
    /// Message key template (default `{device_id}/{sensor}`).
    pub key: Option<String>,
    /// Client id (default `eddy-{device_id}`).
    pub client_id: Option<String>,
    /// Records per message (default 1).
    pub records_per_message: Option<u64>,
    /// Largest message and record batch, bytes (default 1000000).
    pub max_message_bytes: Option<u64>,
    /// `none` (default), `gzip` or `snappy`.
    pub compression: Option<String>,
    /// TLS to the brokers (default false).
    pub tls: Option<bool>,
    /// CA certificates, PEM (default: the system's roots); needs `tls = true`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate, PEM, with `key_file`; needs `tls = true`.
    pub cert_file: Option<PathBuf>,
    /// Client key, PEM, with `cert_file`.
    pub key_file: Option<PathBuf>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub username: Option<String>,
    /// File holding the SASL password.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the SASL password.
    pub password_env: Option<String>,
    /// Longest wait for the connection and metadata (default 10s).
    #[serde(with = "humantime_serde", default)]
    pub connect_timeout: Option<Duration>,
    /// Longest wait for the acknowledgements of a delivery (default 30s).
    #[serde(with = "humantime_serde", default)]
    pub ack_timeout: Option<Duration>,
    /// Accept SASL credentials without TLS (default false: refused), with a warning.
    pub allow_insecure: Option<bool>,
}

impl RawKafkaSink {
    /// Validates the entry at `key` (`sinks[N]`) of the sink `name` on gateway `device_id`.
    /// Reads the password file or variable now, so that a missing secret is a configuration
    /// error naming its key. SASL without `tls = true` is refused unless `allow_insecure =
    /// true`, which adds a line to `warnings`.
    pub fn validate(
        self,
        key: &str,
        name: &str,
        device_id: &str,
        warnings: &mut Vec<String>,
    ) -> Result<KafkaConfig, KeyError> {
        let brokers = self
            .brokers
            .ok_or_else(|| invalid(format!("{key}.brokers"), "is required for kind = \"kafka\""))?;
        if brokers.is_empty() {
            return Err(invalid(format!("{key}.brokers"), "must name at least one host:port"));
        }
        for broker in &brokers {
            check_broker(broker).map_err(|message| invalid(format!("{key}.brokers"), message))?;
        }
        let tls_on = self.tls.unwrap_or(false);
        let has_tls_files = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        let files = tls_files(key, self.ca_file, self.cert_file, self.key_file)?;
        if has_tls_files && !tls_on {
            return Err(invalid(format!("{key}.ca_file"), "TLS files need tls = true"));
        }
        let topic = self.topic.unwrap_or_else(|| "eddy.{type}".to_owned());
        check_topic_template(&topic).map_err(|message| invalid(format!("{key}.topic"), message))?;
        if !topic.replace("{device_id}", "").replace("{type}", "").chars().all(is_topic_char) {
            return Err(invalid(
                format!("{key}.topic"),
                "a Kafka topic holds only letters, digits, '.', '_' and '-' besides placeholders",
            ));
        }
        let message_key = self.key.unwrap_or_else(|| "{device_id}/{sensor}".to_owned());
        check_key_template(&message_key).map_err(|message| invalid(format!("{key}.key"), message))?;
        let client_id = self.client_id.unwrap_or_else(|| format!("eddy-{device_id}"));
        if client_id.is_empty() || client_id.len() > 128 {
            return Err(invalid(format!("{key}.client_id"), "must be 1 to 128 characters"));
        }
        let sasl = sasl(key, self.sasl_mechanism, self.username, self.password_file, self.password_env)?;
        if let (false, Some(_)) = (tls_on, &sasl) {
            PlainCredential {
                key: format!("{key}.sasl_mechanism"),
                transport: "a plain-text Kafka connection",
                instead: "tls = true",
            }
            .check(self.allow_insecure.unwrap_or(false), warnings)?;
        }
        let compression = match self.compression.as_deref().unwrap_or("none") {
            "none" => KafkaCompression::None,
            "gzip" => KafkaCompression::Gzip,
            "snappy" => KafkaCompression::Snappy,
            other => {
                return Err(invalid(
                    format!("{key}.compression"),
                    format!("`{other}` is not one of: none, gzip, snappy (lz4 and zstd need C libraries)"),
                ))
            }
        };
        let records_per_message = usize::try_from(self.records_per_message.unwrap_or(1))
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| invalid(format!("{key}.records_per_message"), "must be between 1 and 10000"))?;
        let max_message_bytes =
            usize::try_from(self.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES as u64))
                .ok()
                .filter(|n| (1024..=64 * 1024 * 1024).contains(n))
                .ok_or_else(|| {
                    invalid(format!("{key}.max_message_bytes"), "must be between 1024 and 67108864")
                })?;
        Ok(KafkaConfig {
            name: name.to_owned(),
            brokers,
            tls: tls_on.then_some(files),
            sasl,
            client_id,
            topic,
            key: message_key,
            device_id: device_id.to_owned(),
            records_per_message,
            max_message_bytes,
            compression,
            connect_timeout: timeout(key, "connect_timeout", self.connect_timeout, Duration::from_secs(10))?,
            ack_timeout: timeout(key, "ack_timeout", self.ack_timeout, Duration::from_secs(30))?,
        })
    }
}

/// The SASL keys: all or nothing of mechanism, user name and one password source.
fn sasl(
    key: &str,
    mechanism: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
) -> Result<Option<SaslCredentials>, KeyError> {
    let password = password_from(key, password_file.as_deref(), password_env.as_deref())?.map(Secret::new);
    let Some(mechanism) = mechanism else {
        if username.is_some() || password.is_some() {
            return Err(invalid(
                format!("{key}.sasl_mechanism"),
                "is required with a user name or password (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
            ));
        }
        return Ok(None);
    };
    let mechanism = match mechanism.to_ascii_uppercase().as_str() {
        "PLAIN" => SaslMechanism::Plain,
        "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
        "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
        _ => {
            return Err(invalid(
                format!("{key}.sasl_mechanism"),
                format!("`{mechanism}` is not one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
            ))
        }
    };
    let username =
        username.ok_or_else(|| invalid(format!("{key}.username"), "is required with sasl_mechanism"))?;
    let password = password.ok_or_else(|| {
        invalid(format!("{key}.password_file"), "sasl_mechanism needs password_file or password_env")
    })?;
    Ok(Some(SaslCredentials { mechanism, username, password }))
}

/// A broker address: `host:port`, the port a number from 1.
fn check_broker(broker: &str) -> Result<(), String> {
    let refuse = || format!("`{broker}` is not host:port (e.g. kafka.example.com:9093)");
    if broker.contains("://") {
        return Err(format!("`{broker}`: give host:port without a scheme (TLS is `tls = true`)"));
    }
    let (host, port) = broker.rsplit_once(':').ok_or_else(refuse)?;
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(refuse());
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(refuse()),
    }
}

/// Characters Kafka allows in a topic name.
fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks a message key template: only `{device_id}`, `{type}` and `{sensor}`.
fn check_key_template(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let stripped = template.replace("{device_id}", "").replace("{type}", "").replace("{sensor}", "");
    if stripped.contains(['{', '}']) {
        return Err("only the placeholders {device_id}, {type} and {sensor} are known".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn raw() -> RawKafkaSink {
        RawKafkaSink { brokers: Some(vec!["127.0.0.1:9092".into()]), ..RawKafkaSink::default() }
    }

    fn validate(raw: RawKafkaSink) -> Result<KafkaConfig, KeyError> {
        raw.validate("sinks[0]", "kafka", "gw-1", &mut Vec::new())
    }

    fn error_of(raw: RawKafkaSink) -> String {
        validate(raw).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let config = validate(raw()).unwrap();
        assert_eq!(config.topic, "eddy.{type}");
        assert_eq!(config.key, "{device_id}/{sensor}");
        assert_eq!(config.client_id, "eddy-gw-1");
        assert_eq!(config.records_per_message, 1);
        assert_eq!(config.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(config.compression, KafkaCompression::None);
        assert_eq!(config.tls, None);
        assert_eq!(config.sasl, None);
        assert_eq!(config.ack_timeout, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(error_of(RawKafkaSink::default()).contains("sinks[0].brokers"));
        for broker in ["kafka", "kafka:0", "kafka:x", ":9092", "kafka://h:9092"] {
            let message = error_of(RawKafkaSink { brokers: Some(vec![broker.into()]), ..raw() });
            assert!(message.contains("sinks[0].brokers"), "{broker}: {message}");
        }
        let message = error_of(RawKafkaSink { topic: Some("a/{type}".into()), ..raw() });
        assert!(message.contains("sinks[0].topic"), "{message}");
        let message = error_of(RawKafkaSink { key: Some("{gateway}".into()), ..raw() });
        assert!(message.contains("sinks[0].key"), "{message}");
        let message = error_of(RawKafkaSink { compression: Some("zstd".into()), ..raw() });
        assert!(message.contains("sinks[0].compression"), "{message}");
        let message = error_of(RawKafkaSink { records_per_message: Some(0), ..raw() });
        assert!(message.contains("sinks[0].records_per_message"), "{message}");
        let message = error_of(RawKafkaSink { ack_timeout: Some(Duration::ZERO), ..raw() });
        assert!(message.contains("sinks[0].ack_timeout"), "{message}");
        let message = error_of(RawKafkaSink { sasl_mechanism: Some("GSSAPI".into()), ..raw() });
        assert!(message.contains("sinks[0].sasl_mechanism"), "{message}");
    }

    #[test]
    fn tls_files_need_tls() {
        let mut ca = tempfile::NamedTempFile::new().unwrap();
        writeln!(ca, "pem").unwrap();
        let message = error_of(RawKafkaSink { ca_file: Some(ca.path().to_owned()), ..raw() });
        assert!(message.contains("sinks[0].ca_file") && message.contains("tls = true"), "{message}");
        let config =
            validate(RawKafkaSink { tls: Some(true), ca_file: Some(ca.path().to_owned()), ..raw() }).unwrap();
        assert_eq!(config.tls.unwrap().ca_file.as_deref(), Some(ca.path()));
    }

    #[test]
    fn sasl_needs_all_its_keys_and_tls_unless_allowed() {
        let mut password = tempfile::NamedTempFile::new().unwrap();
        writeln!(password, "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=s3cr3t").unwrap();
        let sasl = || RawKafkaSink {
            sasl_mechanism: Some("PLAIN".into()),
            username: Some("$ConnectionString".into()),
            password_file: Some(password.path().to_owned()),
            ..raw()
        };
        let message = error_of(sasl());
        assert!(
            message.contains("sinks[0].sasl_mechanism") && message.contains("allow_insecure"),
            "{message}"
        );
        let mut warnings = Vec::new();
        let config = RawKafkaSink { allow_insecure: Some(true), ..sasl() }
            .validate("sinks[0]", "kafka", "gw", &mut warnings)
            .unwrap();
        assert_eq!(warnings.len(), 1);
        let credentials = config.sasl.clone().unwrap();
        assert_eq!(credentials.mechanism, SaslMechanism::Plain);
        assert!(credentials.password.expose().contains("SharedAccessKey=s3cr3t"));
        assert!(!format!("{config:?}").contains("s3cr3t"), "{config:?}");
        let config = validate(RawKafkaSink { tls: Some(true), ..sasl() }).unwrap();
        assert!(config.sasl.is_some() && config.tls.is_some());
        let message = error_of(RawKafkaSink { username: None, tls: Some(true), ..sasl() });
        assert!(message.contains("sinks[0].username"), "{message}");
        let message = error_of(RawKafkaSink { password_file: None, tls: Some(true), ..sasl() });
        assert!(message.contains("sinks[0].password_file"), "{message}");
        let message = error_of(RawKafkaSink { sasl_mechanism: None, tls: Some(true), ..sasl() });
        assert!(message.contains("sinks[0].sasl_mechanism"), "{message}");
        let scram = validate(RawKafkaSink {
            tls: Some(true),
            sasl_mechanism: Some("scram-sha-512".into()),
            ..sasl()
        })
        .unwrap();
        assert_eq!(scram.sasl.unwrap().mechanism, SaslMechanism::ScramSha512);
    }
}
