//! Configuration in two stages: `RawConfig` mirrors the TOML file, `Config` is the validated,
//! typed result every component is built from.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::{FieldSpec, Format, Limits, Schema, TagSpec, TsPrecision, MAX_SENSOR_BYTES};
use serde::Deserialize;

use crate::engine::{Aggregate, EngineSpec, TimeDomain, WindowSpec};

mod serial_mqtt;

/// The commented default configuration, used when no file is given.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default_config.toml");

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not valid TOML, or a value has the wrong type.
    #[error("{0}")]
    Load(String),
    /// A value is invalid.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, e.g. `windows[0].slide`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

// ---------------------------------------------------------------- stage 1: raw

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Id of this gateway, first part of every result id.
    pub device_id: String,
    /// Directory of the sled database.
    pub data_dir: PathBuf,
    /// Deadline of a graceful stop.
    #[serde(with = "humantime_serde", default = "default_shutdown_timeout")]
    pub shutdown_timeout: Duration,
    /// Ingest settings.
    #[serde(default)]
    pub ingest: RawIngest,
    /// Storage settings.
    #[serde(default)]
    pub storage: RawStorage,
    /// Engine settings.
    #[serde(default)]
    pub engine: RawEngine,
    /// Micro-batch settings.
    #[serde(default)]
    pub batch: RawBatch,
    /// The reading schema (default: the thermostat's).
    #[serde(default)]
    pub schema: Option<RawSchema>,
    /// Sources.
    #[serde(default)]
    pub sources: Vec<RawSource>,
    /// Windows.
    #[serde(default)]
    pub windows: Vec<RawWindow>,
    /// Sinks.
    #[serde(default)]
    pub sinks: Vec<RawSink>,
    /// The local HTTP endpoint (`/health`, `/metrics`, `/status`).
    #[serde(default)]
    pub api: RawApi,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
}

/// `[api]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// Address of the HTTP endpoint (none: off).
    pub listen: Option<String>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// Log filter: a default level and `target=level` pairs, e.g. `info` or `eddy=debug,info`
    /// (`EDDY_LOG` overrides it).
    pub level: Option<String>,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(20)
}

/// `[ingest]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIngest {
    /// Group-commit interval.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Longest line in bytes.
    pub max_line_bytes: u64,
    /// Furthest accepted future timestamp.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Cap on distinct sensor ids.
    pub max_sensors: u64,
}

impl Default for RawIngest {
    fn default() -> RawIngest {
        RawIngest {
            flush_interval: Duration::from_millis(10),
            max_line_bytes: 4096,
            max_future: Duration::from_secs(300),
            max_sensors: 10_000,
        }
    }
}

/// `[storage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    /// sled cache, bytes.
    pub cache_capacity: u64,
    /// Disk budget of log + outbox, bytes (0: none).
    pub max_bytes: u64,
    /// `drop_oldest` or `reject_new`.
    pub policy: String,
    /// Drop outbox records older than this (none: keep until delivered).
    #[serde(with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Refuse readings when the file system has less free space, bytes (0: no check).
    pub min_free_bytes: u64,
}

impl Default for RawStorage {
    fn default() -> RawStorage {
        RawStorage {
            cache_capacity: 4 * 1024 * 1024,
            max_bytes: 0,
            policy: "drop_oldest".to_owned(),
            ttl: None,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[engine]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEngine {
    /// Commit interval of results + state + log position.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Idle time after which a sensor's windows are closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Also forward every raw reading (to sinks with `records` including `raw`).
    pub forward_raw: bool,
}

impl Default for RawEngine {
    fn default() -> RawEngine {
        RawEngine {
            checkpoint_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(300),
            forward_raw: false,
        }
    }
}

/// `[batch]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBatch {
    /// Micro-batch interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RawBatch {
    fn default() -> RawBatch {
        RawBatch { interval: Duration::from_secs(2) }
    }
}

/// `[schema]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchema {
    /// Numeric fields.
    pub fields: Vec<RawField>,
    /// String tags.
    #[serde(default)]
    pub tags: Vec<RawTag>,
}

/// One schema field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    /// Key name.
    pub name: String,
    /// Must be present.
    #[serde(default)]
    pub required: bool,
    /// Smallest plausible value.
    #[serde(default = "default_min")]
    pub min: f64,
    /// Largest plausible value.
    #[serde(default = "default_max")]
    pub max: f64,
}

fn default_min() -> f64 {
    -1e12
}
fn default_max() -> f64 {
    1e12
}

/// One schema tag.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTag {
    /// Key name.
    pub name: String,
    /// Must be present.
    #[serde(default)]
    pub required: bool,
    /// Allowed values (empty: any).
    #[serde(default)]
    pub values: Vec<String>,
}

/// One `[[sources]]` entry; which keys apply depends on `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// `tcp` or `simulator`.
    pub kind: String,
    /// Unique name (default `kind-N`).
    pub name: Option<String>,
    /// tcp: listen address.
    pub listen: Option<String>,
    /// tcp: `json`, `csv` or `influx`.
    pub format: Option<String>,
    /// tcp, format influx: `ns`, `us`, `ms` or `s`.
    pub precision: Option<String>,
    /// tcp: reply with durable acks.
    pub ack: Option<bool>,
    /// tcp: connection cap.
    pub max_connections: Option<u64>,
    /// tcp: numbered sessions (`#session`) remembered at once.
    pub max_sessions: Option<u64>,
    /// simulator: thermostats.
    pub sensors: Option<u64>,
    /// simulator: readings per second per thermostat.
    pub rate: Option<f64>,
    /// simulator: seed.
    pub seed: Option<u64>,
    /// serial: device path.
    pub path: Option<PathBuf>,
    /// serial: line speed.
    pub baud: Option<u64>,
    /// serial: 5 to 8.
    pub data_bits: Option<u64>,
    /// serial: `none`, `odd` or `even`.
    pub parity: Option<String>,
    /// serial: 1 or 2.
    pub stop_bits: Option<u64>,
    /// serial: `lf` or `cr`.
    pub line_separator: Option<String>,
    /// serial: readings held while the log is busy.
    pub max_pending_readings: Option<u64>,
    /// mqtt: `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: Option<String>,
    /// mqtt: client id (names the persistent session).
    pub client_id: Option<String>,
    /// mqtt: topic filters.
    pub topics: Option<Vec<String>>,
    /// mqtt: 0, 1 or 2.
    pub qos: Option<u64>,
    /// mqtt: user name.
    pub username: Option<String>,
    /// mqtt: file holding the password.
    pub password_file: Option<PathBuf>,
    /// mqtt: environment variable holding the password.
    pub password_env: Option<String>,
    /// mqtt: CA certificate(s), PEM.
    pub ca_file: Option<PathBuf>,
    /// mqtt: client certificate, PEM.
    pub client_cert: Option<PathBuf>,
    /// mqtt: client key, PEM.
    pub client_key: Option<PathBuf>,
    /// mqtt: `false` (default) for a persistent session.
    pub clean_session: Option<bool>,
    /// mqtt: keep-alive interval.
    #[serde(with = "humantime_serde", default)]
    pub keep_alive: Option<Duration>,
    /// mqtt: topic segment (0-based) holding the sensor id.
    pub sensor_from_topic: Option<u64>,
    /// mqtt: messages awaiting durability at most.
    pub max_in_flight: Option<u64>,
    /// mqtt: largest payload decoded.
    pub max_payload_bytes: Option<u64>,
}

/// One `[[windows]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// Unique name.
    pub name: String,
    /// Window length.
    #[serde(with = "humantime_serde")]
    pub length: Duration,
    /// Slide (default: length, tumbling).
    #[serde(with = "humantime_serde", default)]
    pub slide: Option<Duration>,
    /// `event` or `processing`.
    #[serde(default)]
    pub time: Option<String>,
    /// Allowed lateness.
    #[serde(with = "humantime_serde", default)]
    pub lateness: Option<Duration>,
    /// Fields (default: all).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Aggregates (default: count, sum, min, max, mean).
    #[serde(default)]
    pub aggregates: Option<Vec<String>>,
    /// Tags counted by value.
    #[serde(default)]
    pub count_by: Vec<String>,
}

/// One `[[sinks]]` entry; which keys apply depends on `kind` (see `crate::uplink` for the
/// hub uplinks, `mqtt` and `http`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// `console`, `file`, `mqtt` or `http`.
    pub kind: String,
    /// Unique name (default `kind-N`); it names the sink's durable cursor, so keep it stable.
    pub name: Option<String>,
    /// file: path.
    pub path: Option<PathBuf>,
    /// Record kinds taken (default: window, batch).
    pub records: Option<Vec<String>>,
    /// Records handed to the sink per delivery (default 512).
    pub batch_max_records: Option<u64>,
    /// Wait this long for a delivery to fill up (default 0).
    #[serde(with = "humantime_serde", default)]
    pub linger: Option<Duration>,
    /// Most records per second delivered (default: no cap).
    pub rate_limit: Option<f64>,
    /// Longest pause between retries (default 60s).
    #[serde(with = "humantime_serde", default)]
    pub max_backoff: Option<Duration>,
    /// mqtt, http: the hub's URL.
    pub url: Option<String>,
    /// mqtt: topic template.
    pub topic: Option<String>,
    /// mqtt: client id.
    pub client_id: Option<String>,
    /// mqtt: user name.
    pub username: Option<String>,
    /// mqtt: file holding the password (SAS token).
    pub password_file: Option<PathBuf>,
    /// mqtt: environment variable holding the password (SAS token).
    pub password_env: Option<String>,
    /// mqtt: records per message.
    pub records_per_message: Option<u64>,
    /// mqtt: largest message payload, bytes.
    pub max_message_bytes: Option<u64>,
    /// mqtt: keep-alive interval.
    #[serde(with = "humantime_serde", default)]
    pub keep_alive: Option<Duration>,
    /// mqtt: longest wait for all PUBACKs of a delivery.
    #[serde(with = "humantime_serde", default)]
    pub ack_timeout: Option<Duration>,
    /// mqtt, http: longest wait for the connection.
    #[serde(with = "humantime_serde", default)]
    pub connect_timeout: Option<Duration>,
    /// http: longest wait for a whole request.
    #[serde(with = "humantime_serde", default)]
    pub timeout: Option<Duration>,
    /// http: headers with literal values.
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// http: headers whose values are read from files.
    pub header_files: Option<std::collections::BTreeMap<String, PathBuf>>,
    /// http: headers whose values are read from environment variables.
    pub header_env: Option<std::collections::BTreeMap<String, String>>,
    /// mqtts, https: CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// mqtts, https: client certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// mqtts, https: client key (PEM).
    pub key_file: Option<PathBuf>,
}

// ---------------------------------------------------------------- stage 2: typed

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Gateway id.
    pub device_id: String,
    /// sled directory.
    pub data_dir: PathBuf,
    /// Stop deadline.
    pub shutdown_timeout: Duration,
    /// Group-commit interval.
    pub flush_interval: Duration,
    /// Parser limits.
    pub limits: Limits,
    /// Cap on distinct sensors.
    pub max_sensors: usize,
    /// sled cache bytes.
    pub cache_capacity: u64,
    /// Disk budget, full-store policy, ttl, free-space guard.
    pub budget: crate::storage::BudgetConfig,
    /// Engine commit interval.
    pub checkpoint_interval: Duration,
    /// Raw readings go to the outbox's raw lane too.
    pub forward_raw: bool,
    /// The schema.
    pub schema: Arc<Schema>,
    /// The engine's specification.
    pub engine: Arc<EngineSpec>,
    /// Sources.
    pub sources: Vec<SourceConfig>,
    /// Sinks.
    pub sinks: Vec<SinkConfig>,
    /// Address of the local HTTP endpoint (`[api] listen`; none: off).
    pub api_listen: Option<SocketAddr>,
    /// Log filter from `[log] level` (none: `info`; `EDDY_LOG` overrides it).
    pub log_level: Option<String>,
}

/// A validated source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique name.
    pub name: String,
    /// What it is.
    pub kind: SourceKind,
}

/// The kinds of source.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// TCP listener.
    Tcp {
        /// Address.
        listen: SocketAddr,
        /// Line format.
        format: Format,
        /// Durable acks.
        ack: bool,
        /// Connection cap.
        max_connections: usize,
        /// Numbered sessions remembered.
        max_sessions: usize,
    },
    /// A serial port.
    Serial {
        /// Port and line settings.
        serial: eddy_sensors::SerialSourceConfig,
        /// Line format.
        format: Format,
    },
    /// An MQTT subscription.
    Mqtt {
        /// Broker, session and topics.
        mqtt: Box<eddy_sensors::MqttSourceConfig>,
        /// Payload format.
        format: Format,
    },
    /// Built-in thermostats.
    Simulator {
        /// Thermostats.
        sensors: u32,
        /// Readings per second per thermostat.
        rate: f64,
        /// Seed.
        seed: u64,
    },
}

/// Kinds of outbox record a sink can take (`raw` needs `engine.forward_raw`).
pub const RECORD_KINDS: [&str; 4] = ["window", "batch", "late", "raw"];

/// A validated sink. Compared on a reload: any difference (secrets included) restarts it.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// Unique name (names the durable cursor).
    pub name: String,
    /// What it is.
    pub kind: SinkKind,
    /// Record kinds taken.
    pub records: BTreeSet<String>,
    /// Batching, rate cap and retry pacing of its deliveries.
    pub delivery: crate::uplink::DeliveryConfig,
}

/// The kinds of sink.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// Readable tables on stdout.
    Console,
    /// JSON lines appended to a file.
    File {
        /// The file.
        path: PathBuf,
    },
    /// A hub over MQTT.
    Mqtt(Box<eddy_sinks::MqttConfig>),
    /// A hub over HTTP.
    Http(Box<eddy_sinks::HttpConfig>),
}

impl Config {
    /// Loads `path` (or the built-in default), applies `EDDY__…` environment overrides, and
    /// validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let builder = config::Config::builder();
        let builder = match path {
            Some(path) => {
                builder.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true))
            }
            None => builder.add_source(config::File::from_str(DEFAULT_CONFIG_TOML, config::FileFormat::Toml)),
        };
        let raw: RawConfig = builder
            .add_source(
                config::Environment::with_prefix("EDDY")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(|error| {
                let at = path.map_or_else(|| "built-in default".to_owned(), |p| p.display().to_string());
                ConfigError::Load(format!("{at}: {error}"))
            })
            .and_then(deserialize)?;
        Config::from_raw(raw)
    }

    /// Validates a raw configuration.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        if raw.device_id.is_empty()
            || raw.device_id.len() > 64
            || !raw.device_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(invalid("device_id", "must be 1 to 64 characters of [A-Za-z0-9-_.:]"));
        }
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        positive("shutdown_timeout", raw.shutdown_timeout)?;
        let api_listen = match &raw.api.listen {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid("api.listen", format!("`{text}` is not an address such as 127.0.0.1:7879"))
            })?),
        };
        let log_level = raw.log.level.clone();
        if let Some(level) = &log_level {
            if let Err(error) = level.parse::<tracing_subscriber::filter::Targets>() {
                return Err(invalid("log.level", format!("`{level}` is not a log filter: {error}")));
            }
        }
        positive("ingest.flush_interval", raw.ingest.flush_interval)?;
        if raw.ingest.flush_interval > Duration::from_secs(1) {
            return Err(invalid(
                "ingest.flush_interval",
                "must be at most 1s (it delays every acknowledgement)",
            ));
        }
        let max_line_bytes = usize::try_from(raw.ingest.max_line_bytes)
            .ok()
            .filter(|n| (64..=1 << 20).contains(n))
            .ok_or_else(|| invalid("ingest.max_line_bytes", "must be between 64 and 1048576"))?;
        let max_sensors = usize::try_from(raw.ingest.max_sensors)
            .ok()
            .filter(|n| (1..=10_000_000).contains(n))
            .ok_or_else(|| invalid("ingest.max_sensors", "must be between 1 and 10000000"))?;
        if raw.storage.cache_capacity < 256 * 1024 {
            return Err(invalid("storage.cache_capacity", "must be at least 262144 bytes"));
        }
        let budget = crate::uplink::budget_from_raw(&raw.storage)?;
        positive("engine.checkpoint_interval", raw.engine.checkpoint_interval)?;
        positive("engine.idle_timeout", raw.engine.idle_timeout)?;
        let batch_interval = raw.batch.interval;
        if batch_interval.as_millis() == 0 || Duration::from_millis(millis(batch_interval)) != batch_interval
        {
            return Err(invalid("batch.interval", "must be a positive whole number of milliseconds"));
        }

        let schema = match raw.schema {
            None => Schema::thermostat(),
            Some(raw_schema) => schema_from_raw(raw_schema)?,
        };
        let schema = Arc::new(schema);

        let mut windows = Vec::new();
        let mut window_names = BTreeSet::new();
        for (idx, window) in raw.windows.into_iter().enumerate() {
            let key = format!("windows[{idx}]");
            if window.name == "batch" {
                return Err(invalid(
                    format!("{key}.name"),
                    "`batch` is reserved (micro-batch result ids use it)",
                ));
            }
            if !window_names.insert(window.name.clone()) {
                return Err(invalid(format!("{key}.name"), format!("`{}` is used twice", window.name)));
            }
            windows.push(window_from_raw(&key, window, &schema)?);
        }

        let mut names = BTreeSet::new();
        let mut sources = Vec::new();
        for (idx, source) in raw.sources.into_iter().enumerate() {
            let key = format!("sources[{idx}]");
            let source = source_from_raw(&key, idx, source)?;
            if !names.insert(source.name.clone()) {
                return Err(invalid(format!("{key}.name"), format!("`{}` is used twice", source.name)));
            }
            sources.push(source);
        }
        if sources.is_empty() {
            return Err(invalid("sources", "at least one [[sources]] entry is needed"));
        }

        let mut sink_names = BTreeSet::new();
        let mut sinks = Vec::new();
        for (idx, sink) in raw.sinks.into_iter().enumerate() {
            let key = format!("sinks[{idx}]");
            let sink = sink_from_raw(&key, idx, sink, &raw.device_id)?;
            if !sink_names.insert(sink.name.clone()) {
                return Err(invalid(format!("{key}.name"), format!("`{}` is used twice", sink.name)));
            }
            sinks.push(sink);
        }

        let takes_raw = sinks.iter().position(|sink| sink.records.contains("raw"));
        match (raw.engine.forward_raw, takes_raw) {
            (false, Some(idx)) => {
                return Err(invalid(format!("sinks[{idx}].records"), "`raw` needs engine.forward_raw = true"))
            }
            (true, None) => {
                return Err(invalid(
                    "engine.forward_raw",
                    "no sink takes raw readings (records = [.., \"raw\"])",
                ))
            }
            _ => {}
        }

        let engine = EngineSpec {
            device_id: raw.device_id.clone(),
            field_names: schema.fields.iter().map(|field| field.name.clone()).collect(),
            tag_names: schema.tags.iter().map(|tag| tag.name.clone()).collect(),
            batch_interval,
            windows,
            idle_timeout: raw.engine.idle_timeout,
        };

        Ok(Config {
            device_id: raw.device_id,
            data_dir: raw.data_dir,
            shutdown_timeout: raw.shutdown_timeout,
            flush_interval: raw.ingest.flush_interval,
            limits: Limits { max_line_bytes, max_future: raw.ingest.max_future },
            max_sensors,
            cache_capacity: raw.storage.cache_capacity,
            budget,
            checkpoint_interval: raw.engine.checkpoint_interval,
            forward_raw: raw.engine.forward_raw,
            schema,
            engine: Arc::new(engine),
            sources,
            sinks,
            api_listen,
            log_level,
        })
    }
}

/// Deserializes the merged configuration, naming the key of any type error
/// (`batch.interval: invalid value ...`).
fn deserialize(built: config::Config) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(built).map_err(|error| {
        let key = error.path().to_string();
        ConfigError::Invalid { key, message: error.into_inner().to_string() }
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn positive(key: &str, duration: Duration) -> Result<(), ConfigError> {
    if duration.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(())
}

fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(key, format!("`{name}` must be 1 to 64 characters of [A-Za-z0-9-_.]")))
    }
}

fn schema_from_raw(raw: RawSchema) -> Result<Schema, ConfigError> {
    if raw.fields.is_empty() {
        return Err(invalid("schema.fields", "at least one field is needed"));
    }
    let mut seen = BTreeSet::new();
    // `late` would make a window result id look like a late-reading id.
    let reserved = ["sensor", "ts", "late"];
    let mut fields = Vec::new();
    for (idx, field) in raw.fields.into_iter().enumerate() {
        let key = format!("schema.fields[{idx}]");
        check_name(&format!("{key}.name"), &field.name)?;
        if reserved.contains(&field.name.as_str()) || !seen.insert(field.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}` is reserved or used twice", field.name),
            ));
        }
        if !(field.min.is_finite() && field.max.is_finite() && field.min <= field.max) {
            return Err(invalid(key, "min and max must be finite numbers with min <= max"));
        }
        fields.push(FieldSpec { name: field.name, required: field.required, min: field.min, max: field.max });
    }
    let mut tags = Vec::new();
    for (idx, tag) in raw.tags.into_iter().enumerate() {
        let key = format!("schema.tags[{idx}]");
        check_name(&format!("{key}.name"), &tag.name)?;
        if reserved.contains(&tag.name.as_str()) || !seen.insert(tag.name.clone()) {
            return Err(invalid(format!("{key}.name"), format!("`{}` is reserved or used twice", tag.name)));
        }
        if tag.values.iter().any(|value| value.is_empty() || value.len() > MAX_SENSOR_BYTES) {
            return Err(invalid(format!("{key}.values"), "values must be 1 to 64 bytes"));
        }
        tags.push(TagSpec { name: tag.name, required: tag.required, values: tag.values });
    }
    Ok(Schema { fields, tags })
}

fn window_from_raw(key: &str, raw: RawWindow, schema: &Schema) -> Result<WindowSpec, ConfigError> {
    let time = match raw.time.as_deref() {
        None | Some("event") => TimeDomain::Event,
        Some("processing") => TimeDomain::Processing,
        Some(other) => {
            return Err(invalid(format!("{key}.time"), format!("`{other}` is not one of: event, processing")))
        }
    };
    let fields = match raw.fields {
        None => (0..schema.fields.len()).collect(),
        Some(names) => names
            .iter()
            .map(|name| {
                schema.field_index(name).ok_or_else(|| {
                    invalid(format!("{key}.fields"), format!("`{name}` is not a field of the schema"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let aggregates = match raw.aggregates {
        None => vec![Aggregate::Count, Aggregate::Sum, Aggregate::Min, Aggregate::Max, Aggregate::Mean],
        Some(names) => names
            .iter()
            .map(|name| {
                Aggregate::from_name(name).ok_or_else(|| {
                    invalid(
                        format!("{key}.aggregates"),
                        format!("`{name}` is not one of: count, sum, min, max, mean, stddev, first, last"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let count_by = raw
        .count_by
        .iter()
        .map(|name| {
            schema.tag_index(name).ok_or_else(|| {
                invalid(format!("{key}.count_by"), format!("`{name}` is not a tag of the schema"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let slide = raw.slide.unwrap_or(raw.length);
    let lateness = raw.lateness.unwrap_or(Duration::ZERO);
    WindowSpec::new(&raw.name, raw.length, slide, time, lateness, fields, aggregates, count_by)
        .map_err(|error| invalid(key, error.to_string()))
}

fn source_from_raw(key: &str, idx: usize, raw: RawSource) -> Result<SourceConfig, ConfigError> {
    let name = raw.name.clone().unwrap_or_else(|| format!("{}-{idx}", raw.kind));
    check_name(&format!("{key}.name"), &name)?;
    let not_for = |what: &str, present: bool| -> Result<(), ConfigError> {
        if present {
            Err(invalid(format!("{key}.{what}"), format!("does not apply to kind = \"{}\"", raw.kind)))
        } else {
            Ok(())
        }
    };
    serial_mqtt::check_keys_apply(key, &raw)?;
    let kind = match raw.kind.as_str() {
        "serial" => serial_mqtt::serial_from_raw(key, &raw)?,
        "mqtt" => serial_mqtt::mqtt_from_raw(key, &name, &raw)?,
        "tcp" => {
            not_for("sensors", raw.sensors.is_some())?;
            not_for("rate", raw.rate.is_some())?;
            not_for("seed", raw.seed.is_some())?;
            let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:7878");
            let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    format!("{key}.listen"),
                    format!("`{listen_text}` is not an address like 127.0.0.1:7878"),
                )
            })?;
            let format = parse_format(key, raw.format.as_deref(), raw.precision.as_deref())?;
            let max_connections = usize::try_from(raw.max_connections.unwrap_or(64))
                .ok()
                .filter(|n| (1..=65_536).contains(n))
                .ok_or_else(|| invalid(format!("{key}.max_connections"), "must be between 1 and 65536"))?;
            let max_sessions = usize::try_from(raw.max_sessions.unwrap_or(4096))
                .ok()
                .filter(|n| (1..=1_000_000).contains(n) && *n >= max_connections)
                .ok_or_else(|| {
                    invalid(
                        format!("{key}.max_sessions"),
                        "must be between max_connections (a connection owns at most one session) and 1000000",
                    )
                })?;
            SourceKind::Tcp { listen, format, ack: raw.ack.unwrap_or(false), max_connections, max_sessions }
        }
        "simulator" => {
            not_for("listen", raw.listen.is_some())?;
            not_for("format", raw.format.is_some())?;
            not_for("ack", raw.ack.is_some())?;
            not_for("max_connections", raw.max_connections.is_some())?;
            not_for("max_sessions", raw.max_sessions.is_some())?;
            let sensors = u32::try_from(raw.sensors.unwrap_or(10))
                .ok()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| invalid(format!("{key}.sensors"), "must be between 1 and 100000"))?;
            let rate = raw.rate.unwrap_or(1.0);
            if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
                return Err(invalid(format!("{key}.rate"), "must be a number of readings/s in (0, 1000000]"));
            }
            SourceKind::Simulator { sensors, rate, seed: raw.seed.unwrap_or(42) }
        }
        other => {
            return Err(invalid(
                format!("{key}.kind"),
                format!("`{other}` is not one of: tcp, serial, mqtt, simulator"),
            ));
        }
    };
    Ok(SourceConfig { name, kind })
}

fn parse_format(key: &str, format: Option<&str>, precision: Option<&str>) -> Result<Format, ConfigError> {
    let format = match format.unwrap_or("json") {
        "json" => Format::Json,
        "csv" => Format::Csv,
        "influx" => Format::Influx(match precision.unwrap_or("ns") {
            "ns" => TsPrecision::Nanoseconds,
            "us" => TsPrecision::Microseconds,
            "ms" => TsPrecision::Milliseconds,
            "s" => TsPrecision::Seconds,
            other => {
                return Err(invalid(
                    format!("{key}.precision"),
                    format!("`{other}` is not one of: ns, us, ms, s"),
                ))
            }
        }),
        other => {
            return Err(invalid(
                format!("{key}.format"),
                format!("`{other}` is not one of: json, csv, influx"),
            ))
        }
    };
    if precision.is_some() && !matches!(format, Format::Influx(_)) {
        return Err(invalid(format!("{key}.precision"), "applies only to format = \"influx\""));
    }
    Ok(format)
}

fn sink_from_raw(key: &str, idx: usize, raw: RawSink, device_id: &str) -> Result<SinkConfig, ConfigError> {
    let name = raw.name.clone().unwrap_or_else(|| format!("{}-{idx}", raw.kind));
    check_name(&format!("{key}.name"), &name)?;
    let records: BTreeSet<String> = match raw.records.clone() {
        None => ["window", "batch"].map(String::from).into(),
        Some(kinds) => {
            for kind in &kinds {
                if !RECORD_KINDS.contains(&kind.as_str()) {
                    return Err(invalid(
                        format!("{key}.records"),
                        format!("`{kind}` is not one of: {}", RECORD_KINDS.join(", ")),
                    ));
                }
            }
            if kinds.is_empty() {
                return Err(invalid(format!("{key}.records"), "must name at least one kind"));
            }
            kinds.into_iter().collect()
        }
    };
    let delivery = crate::uplink::delivery_from_raw(key, &raw)?;
    let kind = match raw.kind.as_str() {
        "mqtt" => crate::uplink::mqtt_from_raw(key, &name, &raw, device_id)?,
        "http" => crate::uplink::http_from_raw(key, &name, &raw)?,
        "console" => {
            crate::uplink::reject_uplink_keys(key, &raw)?;
            if raw.path.is_some() {
                return Err(invalid(format!("{key}.path"), "does not apply to kind = \"console\""));
            }
            SinkKind::Console
        }
        "file" => {
            crate::uplink::reject_uplink_keys(key, &raw)?;
            let path =
                raw.path.ok_or_else(|| invalid(format!("{key}.path"), "is required for kind = \"file\""))?;
            if path.as_os_str().is_empty() {
                return Err(invalid(format!("{key}.path"), "must not be empty"));
            }
            SinkKind::File { path }
        }
        other => {
            return Err(invalid(
                format!("{key}.kind"),
                format!("`{other}` is not one of: console, file, mqtt, http"),
            ))
        }
    };
    Ok(SinkConfig { name, kind, records, delivery })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, ConfigError> {
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|error| ConfigError::Load(error.to_string()))?;
        Config::from_raw(deserialize(built)?)
    }

    const MINIMAL: &str = "device_id = \"gw\"\ndata_dir = \"/tmp/x\"\n[[sources]]\nkind = \"simulator\"\n";

    fn check_err(extra: &str, expected_fragment: &str) {
        let text = format!("{MINIMAL}{extra}");
        let error = load_str(&text).expect_err("config should be rejected").to_string();
        assert!(error.contains(expected_fragment), "error `{error}` should mention `{expected_fragment}`");
    }

    #[test]
    fn built_in_default_config_is_valid_and_matches_the_documented_pipeline() {
        let config = Config::load(None).expect("default config loads");
        assert_eq!(config.device_id, "gw-01");
        assert_eq!(config.engine.windows.len(), 1);
        assert_eq!(config.engine.windows[0].length_ms(), 10_000);
        assert_eq!(config.engine.windows[0].slide_ms(), 5_000);
        assert_eq!(config.engine.batch_interval, Duration::from_secs(2));
        assert!(matches!(config.sources[0].kind, SourceKind::Simulator { .. }));
        assert!(matches!(config.sinks[0].kind, SinkKind::Console));
        assert_eq!(config.data_dir, PathBuf::from("./eddy-data"));
    }

    #[test]
    fn invalid_values_are_reported_with_their_key() {
        check_err("[batch]\ninterval = \"0s\"\n", "batch.interval");
        check_err("[ingest]\nflush_interval = \"5s\"\n", "ingest.flush_interval");
        check_err("[[windows]]\nname = \"w\"\nlength = \"5s\"\nslide = \"10s\"\n", "windows[0]: slide");
        check_err("[[windows]]\nname = \"w\"\nlength = \"5s\"\nfields = [\"nope\"]\n", "windows[0].fields");
        check_err(
            "[[windows]]\nname = \"w\"\nlength = \"5s\"\naggregates = [\"median\"]\n",
            "windows[0].aggregates",
        );
        check_err("[[windows]]\nname = \"w\"\nlength = \"5s\"\ntime = \"wall\"\n", "windows[0].time");
        check_err("[[sources]]\nkind = \"tcp\"\nlisten = \"nowhere\"\n", "sources[1].listen");
        check_err("[[sources]]\nkind = \"tcp\"\nformat = \"xml\"\n", "sources[1].format");
        check_err("[[sources]]\nkind = \"tcp\"\nrate = 2.0\n", "sources[1].rate");
        check_err("[[sources]]\nkind = \"modbus\"\n", "sources[1].kind");
        check_err("[[sources]]\nkind = \"tcp\"\nmax_sessions = 8\n", "sources[1].max_sessions");
        check_err("[[sources]]\nkind = \"simulator\"\nmax_sessions = 8\n", "sources[1].max_sessions");
        check_err("[[sinks]]\nkind = \"file\"\n", "sinks[0].path");
        check_err("[[windows]]\nname = \"batch\"\nlength = \"5s\"\n", "windows[0].name");
        check_err("[schema]\nfields = [{ name = \"late\" }]\n", "schema.fields[0].name");
        check_err("[[sinks]]\nkind = \"console\"\nrecords = [\"raw\"]\n", "sinks[0].records");
        check_err(
            "[[sinks]]\nkind = \"console\"\n[[sinks]]\nkind = \"console\"\nname = \"console-0\"\n",
            "used twice",
        );
    }

    #[test]
    fn log_level_takes_a_default_level_and_target_levels() {
        for level in ["info", "WARN", "off", "eddy=debug,info", "eddy::storage=trace,rumqttc=warn,error"] {
            let config = load_str(&format!("{MINIMAL}[log]\nlevel = \"{level}\"\n")).expect(level);
            assert_eq!(config.log_level.as_deref(), Some(level));
        }
        check_err("[log]\nlevel = \"eddy=loud\"\n", "log.level");
        check_err("[log]\nlevel = \"eddy=debug=info\"\n", "log.level");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_rejected() {
        check_err("colour = \"blue\"\n", "colour");
        check_err("[batch]\ninterval = 5\n", "interval");
    }

    #[test]
    fn a_custom_schema_drives_window_fields() {
        let config = load_str(&format!(
            "{MINIMAL}[schema]\nfields = [{{ name = \"pressure\", required = true, min = 0.0, max = 2000.0 }}]\n\
             [[windows]]\nname = \"p\"\nlength = \"1m\"\n"
        ))
        .expect("valid");
        assert_eq!(config.engine.field_names, vec!["pressure".to_owned()]);
        assert_eq!(config.engine.windows[0].fields(), &[0]);
    }
}
