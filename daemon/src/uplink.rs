//! Validated settings of the hub uplinks (`[[sinks]]` with `kind = "mqtt"` or `"http"`), of
//! every sink's delivery pacing, and of the store's disk budget, built from the raw config.
//! Secrets (MQTT password, header values from files or the environment) are read here, once,
//! at start-up, and never logged.

use std::path::Path;
use std::time::Duration;

use eddy_sinks::{check_topic_template, HttpConfig, MqttConfig, MqttUrl, Secret, TlsFiles};

use crate::config::{invalid, ConfigError, RawSink, RawStorage, SinkKind};
use crate::storage::{BudgetConfig, Policy};

/// How a sink's delivery task batches, paces and retries.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// Most records handed to the sink per delivery.
    pub batch_max_records: usize,
    /// When fewer records are waiting, wait this long for more before delivering.
    pub linger: Duration,
    /// Most records per second (`None`: no cap), so a drained backlog does not flood the hub.
    pub rate_limit: Option<f64>,
    /// Longest pause between retries of a failing delivery.
    pub max_backoff: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> DeliveryConfig {
        DeliveryConfig {
            batch_max_records: 512,
            linger: Duration::ZERO,
            rate_limit: None,
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// `[storage]` budget keys.
pub(crate) fn budget_from_raw(raw: &RawStorage) -> Result<BudgetConfig, ConfigError> {
    let policy = match raw.policy.as_str() {
        "drop_oldest" => Policy::DropOldest,
        "reject_new" => Policy::RejectNew,
        other => {
            return Err(invalid(
                "storage.policy",
                format!("`{other}` is not one of: drop_oldest, reject_new"),
            ))
        }
    };
    if raw.max_bytes != 0 && raw.max_bytes < 64 * 1024 {
        return Err(invalid("storage.max_bytes", "must be 0 (no budget) or at least 65536 bytes"));
    }
    if raw.ttl.is_some_and(|ttl| ttl.is_zero()) {
        return Err(invalid("storage.ttl", "must be greater than zero (leave it out to keep records)"));
    }
    Ok(BudgetConfig {
        max_bytes: (raw.max_bytes != 0).then_some(raw.max_bytes),
        policy,
        ttl: raw.ttl,
        min_free_bytes: raw.min_free_bytes,
    })
}

/// Delivery keys, valid for every kind of sink.
pub(crate) fn delivery_from_raw(key: &str, raw: &RawSink) -> Result<DeliveryConfig, ConfigError> {
    let defaults = DeliveryConfig::default();
    let batch_max_records = match raw.batch_max_records {
        None => defaults.batch_max_records,
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| invalid(format!("{key}.batch_max_records"), "must be between 1 and 10000"))?,
    };
    let rate_limit = match raw.rate_limit {
        None => None,
        Some(rate) if rate.is_finite() && rate > 0.0 => Some(rate),
        Some(_) => {
            return Err(invalid(format!("{key}.rate_limit"), "must be a positive number of records/s"))
        }
    };
    let max_backoff = raw.max_backoff.unwrap_or(defaults.max_backoff);
    if max_backoff < Duration::from_millis(100) {
        return Err(invalid(format!("{key}.max_backoff"), "must be at least 100ms"));
    }
    let linger = raw.linger.unwrap_or(defaults.linger);
    if linger > Duration::from_secs(60) {
        return Err(invalid(format!("{key}.linger"), "must be at most 60s"));
    }
    Ok(DeliveryConfig { batch_max_records, linger, rate_limit, max_backoff })
}

/// A console or file sink must not carry uplink keys (a typo would otherwise be silent).
pub(crate) fn reject_uplink_keys(key: &str, raw: &RawSink) -> Result<(), ConfigError> {
    let present = uplink_keys(raw).into_iter().find(|(_, present)| *present);
    match present {
        Some((name, _)) => {
            Err(invalid(format!("{key}.{name}"), format!("does not apply to kind = \"{}\"", raw.kind)))
        }
        None => Ok(()),
    }
}

fn uplink_keys(raw: &RawSink) -> Vec<(&'static str, bool)> {
    vec![
        ("url", raw.url.is_some()),
        ("topic", raw.topic.is_some()),
        ("client_id", raw.client_id.is_some()),
        ("username", raw.username.is_some()),
        ("password_file", raw.password_file.is_some()),
        ("password_env", raw.password_env.is_some()),
        ("records_per_message", raw.records_per_message.is_some()),
        ("max_message_bytes", raw.max_message_bytes.is_some()),
        ("keep_alive", raw.keep_alive.is_some()),
        ("ack_timeout", raw.ack_timeout.is_some()),
        ("connect_timeout", raw.connect_timeout.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("headers", raw.headers.is_some()),
        ("header_files", raw.header_files.is_some()),
        ("header_env", raw.header_env.is_some()),
        ("ca_file", raw.ca_file.is_some()),
        ("cert_file", raw.cert_file.is_some()),
        ("key_file", raw.key_file.is_some()),
    ]
}

fn not_for(key: &str, raw: &RawSink, names: &[&str]) -> Result<(), ConfigError> {
    for (name, present) in uplink_keys(raw) {
        if present && names.contains(&name) {
            return Err(invalid(
                format!("{key}.{name}"),
                format!("does not apply to kind = \"{}\"", raw.kind),
            ));
        }
    }
    if raw.path.is_some() {
        return Err(invalid(format!("{key}.path"), format!("does not apply to kind = \"{}\"", raw.kind)));
    }
    Ok(())
}

fn tls_files(key: &str, raw: &RawSink) -> Result<TlsFiles, ConfigError> {
    for (name, path) in
        [("ca_file", &raw.ca_file), ("cert_file", &raw.cert_file), ("key_file", &raw.key_file)]
    {
        if let Some(path) = path {
            if !path.is_file() {
                return Err(invalid(
                    format!("{key}.{name}"),
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
    }
    if raw.cert_file.is_some() != raw.key_file.is_some() {
        return Err(invalid(format!("{key}.cert_file"), "cert_file and key_file go together"));
    }
    Ok(TlsFiles {
        ca_file: raw.ca_file.clone(),
        cert_file: raw.cert_file.clone(),
        key_file: raw.key_file.clone(),
    })
}

fn duration(
    key: &str,
    name: &str,
    value: Option<Duration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(default);
    if value < Duration::from_millis(100) {
        return Err(invalid(format!("{key}.{name}"), "must be at least 100ms"));
    }
    Ok(value)
}

fn secret_from_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    std::fs::read_to_string(path)
        .map(Secret::new)
        .map_err(|error| invalid(key, format!("cannot read {}: {error}", path.display())))
}

fn secret_from_env(key: &str, variable: &str) -> Result<Secret, ConfigError> {
    std::env::var(variable)
        .map(Secret::new)
        .map_err(|_| invalid(key, format!("environment variable {variable} is not set")))
}

/// `kind = "mqtt"`.
pub(crate) fn mqtt_from_raw(
    key: &str,
    name: &str,
    raw: &RawSink,
    device_id: &str,
) -> Result<SinkKind, ConfigError> {
    not_for(key, raw, &["timeout", "headers", "header_files", "header_env"])?;
    let url =
        raw.url.as_deref().ok_or_else(|| invalid(format!("{key}.url"), "is required for kind = \"mqtt\""))?;
    let broker = MqttUrl::parse(url).map_err(|message| invalid(format!("{key}.url"), message))?;
    let tls = tls_files(key, raw)?;
    if !broker.tls && (raw.ca_file.is_some() || raw.cert_file.is_some()) {
        return Err(invalid(format!("{key}.ca_file"), "TLS files need an mqtts:// url"));
    }
    let topic = raw.topic.clone().unwrap_or_else(|| "devices/{device_id}/{type}".to_owned());
    check_topic_template(&topic).map_err(|message| invalid(format!("{key}.topic"), message))?;
    let client_id = raw.client_id.clone().unwrap_or_else(|| format!("eddy-{device_id}"));
    if client_id.is_empty() || client_id.len() > 128 {
        return Err(invalid(format!("{key}.client_id"), "must be 1 to 128 characters"));
    }
    let password = match (&raw.password_file, &raw.password_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{key}.password_file"),
                "give password_file or password_env, not both",
            ))
        }
        (Some(path), None) => Some(secret_from_file(&format!("{key}.password_file"), path)?),
        (None, Some(variable)) => Some(secret_from_env(&format!("{key}.password_env"), variable)?),
        (None, None) => None,
    };
    if password.is_some() && raw.username.is_none() {
        return Err(invalid(format!("{key}.username"), "is required with a password"));
    }
    let records_per_message = usize::try_from(raw.records_per_message.unwrap_or(1))
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| invalid(format!("{key}.records_per_message"), "must be between 1 and 10000"))?;
    let max_message_bytes = usize::try_from(raw.max_message_bytes.unwrap_or(128 * 1024))
        .ok()
        .filter(|n| (1024..=256 * 1024 * 1024).contains(n))
        .ok_or_else(|| invalid(format!("{key}.max_message_bytes"), "must be between 1024 and 268435456"))?;
    Ok(SinkKind::Mqtt(Box::new(MqttConfig {
        name: name.to_owned(),
        broker,
        tls,
        client_id,
        topic,
        device_id: device_id.to_owned(),
        username: raw.username.clone(),
        password,
        records_per_message,
        max_message_bytes,
        keep_alive: duration(key, "keep_alive", raw.keep_alive, Duration::from_secs(30))?,
        connect_timeout: duration(key, "connect_timeout", raw.connect_timeout, Duration::from_secs(10))?,
        ack_timeout: duration(key, "ack_timeout", raw.ack_timeout, Duration::from_secs(30))?,
    })))
}

/// `kind = "http"`.
pub(crate) fn http_from_raw(key: &str, name: &str, raw: &RawSink) -> Result<SinkKind, ConfigError> {
    not_for(
        key,
        raw,
        &[
            "topic",
            "client_id",
            "username",
            "password_file",
            "password_env",
            "records_per_message",
            "max_message_bytes",
            "keep_alive",
            "ack_timeout",
        ],
    )?;
    let url =
        raw.url.clone().ok_or_else(|| invalid(format!("{key}.url"), "is required for kind = \"http\""))?;
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || url.parse::<eddy_sinks::HttpUri>().is_err()
    {
        return Err(invalid(format!("{key}.url"), format!("`{url}` is not an http:// or https:// URL")));
    }
    let tls = tls_files(key, raw)?;
    if url.starts_with("http://") && (raw.ca_file.is_some() || raw.cert_file.is_some()) {
        return Err(invalid(format!("{key}.ca_file"), "TLS files need an https:// url"));
    }
    let mut headers: Vec<(String, Secret)> = Vec::new();
    for (header, value) in raw.headers.iter().flatten() {
        headers.push((header.clone(), Secret::new(value.clone())));
    }
    for (header, path) in raw.header_files.iter().flatten() {
        headers.push((header.clone(), secret_from_file(&format!("{key}.header_files.{header}"), path)?));
    }
    for (header, variable) in raw.header_env.iter().flatten() {
        headers.push((header.clone(), secret_from_env(&format!("{key}.header_env.{header}"), variable)?));
    }
    Ok(SinkKind::Http(Box::new(HttpConfig {
        name: name.to_owned(),
        url,
        headers,
        tls,
        timeout: duration(key, "timeout", raw.timeout, Duration::from_secs(30))?,
        connect_timeout: duration(key, "connect_timeout", raw.connect_timeout, Duration::from_secs(10))?,
    })))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, RawConfig, SinkKind};

    const MINIMAL: &str = "device_id = \"gw\"\ndata_dir = \"/tmp/x\"\n[[sources]]\nkind = \"simulator\"\n";

    fn load(extra: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from_str(&format!("{MINIMAL}{extra}"), config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|error| ConfigError::Load(error.to_string()))?;
        Config::from_raw(raw)
    }

    fn check_err(extra: &str, key: &str) {
        let error = load(extra).expect_err("must be rejected").to_string();
        assert!(error.starts_with(key), "error `{error}` should name `{key}`");
    }

    #[test]
    fn uplink_and_budget_mistakes_name_their_key() {
        check_err("[[sinks]]\nkind = \"mqtt\"\n", "sinks[0].url");
        check_err("[[sinks]]\nkind = \"mqtt\"\nurl = \"tcp://x\"\n", "sinks[0].url");
        check_err(
            "[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://x\"\ntopic = \"a/{sensor}\"\n",
            "sinks[0].topic",
        );
        check_err(
            "[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://x\"\npassword_env = \"EDDY_TEST_UNSET_VAR\"\n",
            "sinks[0].password_env",
        );
        check_err("[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://x\"\ntimeout = \"1s\"\n", "sinks[0].timeout");
        check_err(
            "[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtt://x\"\nca_file = \"/nonexistent.pem\"\n",
            "sinks[0].ca_file",
        );
        check_err("[[sinks]]\nkind = \"http\"\nurl = \"ftp://x\"\n", "sinks[0].url");
        check_err("[[sinks]]\nkind = \"http\"\nurl = \"http://x\"\ntopic = \"t\"\n", "sinks[0].topic");
        check_err("[[sinks]]\nkind = \"http\"\nurl = \"http://x\"\nheader_env = { authorization = \"EDDY_TEST_UNSET_VAR\" }\n", "sinks[0].header_env.authorization");
        check_err("[[sinks]]\nkind = \"console\"\nurl = \"http://x\"\n", "sinks[0].url");
        check_err("[[sinks]]\nkind = \"console\"\nrate_limit = 0.0\n", "sinks[0].rate_limit");
        check_err("[[sinks]]\nkind = \"console\"\nbatch_max_records = 0\n", "sinks[0].batch_max_records");
        check_err("[[sinks]]\nkind = \"console\"\nrecords = [\"raw\"]\n", "sinks[0].records");
        check_err("[engine]\nforward_raw = true\n[[sinks]]\nkind = \"console\"\n", "engine.forward_raw");
        check_err("[storage]\npolicy = \"panic\"\n", "storage.policy");
        check_err("[storage]\nmax_bytes = 1000\n", "storage.max_bytes");
    }

    #[test]
    fn an_mqtt_sink_gets_its_defaults_and_secret() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let config = load(&format!(
            "[[sinks]]\nkind = \"mqtt\"\nurl = \"mqtts://hub.local\"\nusername = \"u\"\npassword_file = \"{}\"\n",
            password.display()
        ))
        .expect("valid");
        let SinkKind::Mqtt(mqtt) = &config.sinks[0].kind else { panic!("not mqtt") };
        assert_eq!(mqtt.broker.port, 8883);
        assert_eq!(mqtt.topic, "devices/{device_id}/{type}");
        assert_eq!(mqtt.client_id, "eddy-gw");
        assert_eq!(mqtt.password.as_ref().map(|secret| secret.expose()), Some("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"), "the password must not show in Debug");
        assert_eq!(config.sinks[0].delivery.batch_max_records, 512);
    }
}
