//! Configuration in two stages: `RawConfig` mirrors the TOML file, `Config` is the validated,
//! typed result every component is built from.
//!
//! Each section has its file (`ingest.rs`, `storage.rs`, `engine.rs`, `sources.rs`,
//! `sinks.rs`, `ops.rs` for `[api]` and `[log]`); the keys of each kind of source and sink
//! are owned by that source or sink in the sensors and sinks crates, selected by `kind`
//! (`entry.rs`). This file loads the file and the environment and validates the whole.

mod clock;
mod engine;
mod entry;
mod ingest;
mod ops;
mod shown;
mod sinks;
mod sources;
mod storage;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eddy_common::{duration_within, KeyError, DAY};
use eddy_sensors::{Limits, Schema};
use serde::Deserialize;

use crate::engine::EngineSpec;

pub use crate::config::clock::{ClockConfig, RawClock};
pub use crate::config::engine::{RawBatch, RawEngine, RawField, RawSchema, RawTag, RawWindow};
pub use crate::config::entry::{RawEntry, SharedKeys};
pub use crate::config::ingest::RawIngest;
pub use crate::config::ops::{RawApi, RawLog};
pub use crate::config::sinks::{
    DeliveryConfig, RawSink, RawSinkEntry, RawSinkShared, SinkConfig, SinkKind, RECORD_KINDS,
};
pub use crate::config::sources::{RawSource, RawSourceEntry, RawSourceShared, SourceConfig, SourceKind};
pub use crate::config::storage::RawStorage;

/// The commented default configuration, used when no file is given.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default_config.toml");

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

impl ConfigError {
    /// The key of an invalid value (None: the file could not be read or parsed).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Load(_) => None,
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

impl From<KeyError> for ConfigError {
    fn from(error: KeyError) -> ConfigError {
        ConfigError::Invalid { key: error.key, message: error.message }
    }
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
    /// When the wall clock may be believed.
    #[serde(default)]
    pub clock: RawClock,
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
    pub sources: Vec<RawSourceEntry>,
    /// Windows.
    #[serde(default)]
    pub windows: Vec<RawWindow>,
    /// Sinks.
    #[serde(default)]
    pub sinks: Vec<RawSinkEntry>,
    /// The local HTTP endpoint (`/health`, `/metrics`, `/status`).
    #[serde(default)]
    pub api: RawApi,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(20)
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
    /// Cap on distinct sensors over all sources (each source has its own, within it).
    pub max_sensors: usize,
    /// When the wall clock is believed.
    pub clock: ClockConfig,
    /// sled cache bytes.
    pub cache_capacity: u64,
    /// Disk budget, full-store policy, ttl, free-space guard.
    pub budget: crate::storage::BudgetConfig,
    /// Engine commit interval.
    pub checkpoint_interval: Duration,
    /// The longest a window result waits for its commit (None: the next checkpoint).
    pub result_commit_delay: Option<Duration>,
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
    /// What the file should say differently although it loads, one line each naming the key
    /// (a deprecated spelling and its new one). Logged once tracing is set up, which the
    /// configuration has to come first for.
    pub warnings: Vec<String>,
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
        let at = path.map_or_else(|| "built-in default".to_owned(), |p| p.display().to_string());
        let raw = with_env_overrides(builder, &at)?;
        Config::from_raw(raw)
    }

    /// Parses `text`, the configuration file at `path` as the caller read it (once), with the
    /// `EDDY__…` environment overrides, as [`load`](Self::load) does with the file: the raw
    /// stage, not yet validated. A reload parses what it read, so what it applies and what it
    /// reports are the same bytes.
    pub fn raw_from_text(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
        let builder =
            config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Toml));
        with_env_overrides(builder, &path.display().to_string())
    }

    /// [`raw_from_text`](Self::raw_from_text), validated.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::from_raw(Config::raw_from_text(path, text)?)
    }

    /// Loads a configuration from TOML text and validates it, without the `EDDY__…`
    /// environment overrides: what [`load`](Self::load) does with a file, minus the
    /// environment. Validation still reads the secret files the text names (`token_file`,
    /// `password_file`) and the variables of `password_env`. The fuzz target `config_loader`
    /// (`fuzz/`) and tests use it.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|error| ConfigError::Load(shown::without_values(&format!("TOML text: {error}"))))
            .and_then(deserialize)?;
        Config::from_raw(raw)
    }

    /// Validates a raw configuration.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        check_device_id(&raw.device_id)?;
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        within("shutdown_timeout", raw.shutdown_timeout, Duration::from_millis(1), DAY)?;
        let api_listen = raw.api.listen()?;
        let log_level = raw.log.level()?;
        let ingest = raw.ingest.validate()?;
        let clock = raw.clock.validate()?;
        let cache_capacity = raw.storage.cache_capacity()?;
        let budget = raw.storage.budget()?;
        let (schema, engine) =
            engine::engine_from_raw(&raw.device_id, &raw.engine, &raw.batch, raw.schema, raw.windows)?;

        let mut warnings = Vec::new();
        let mut names = BTreeSet::new();
        let mut sources = Vec::new();
        let mut sensor_caps = Vec::new();
        for (idx, source) in raw.sources.into_iter().enumerate() {
            let key = format!("sources[{idx}]");
            let (source, sensor_cap) = sources::source_from_raw(&key, idx, source, &mut warnings)?;
            if !names.insert(source.name.clone()) {
                return Err(invalid(format!("{key}.name"), format!("`{}` is used twice", source.name)));
            }
            sources.push(source);
            sensor_caps.push(sensor_cap);
        }
        if sources.is_empty() {
            return Err(invalid("sources", "at least one [[sources]] entry is needed"));
        }
        sources::share_sensor_caps(&mut sources, &sensor_caps, ingest.max_sensors)?;

        let mut sinks = Vec::new();
        for sink in sinks_from_raw(raw.sinks, &raw.device_id, &mut warnings)? {
            sinks.push(sink.map_err(|(_, error)| error)?);
        }
        check_forward_raw(raw.engine.forward_raw, sinks.iter().map(|sink| Some(&sink.records)))?;

        Ok(Config {
            device_id: raw.device_id,
            data_dir: raw.data_dir,
            shutdown_timeout: raw.shutdown_timeout,
            flush_interval: ingest.flush_interval,
            limits: ingest.limits,
            max_sensors: ingest.max_sensors,
            clock,
            cache_capacity,
            budget,
            checkpoint_interval: raw.engine.checkpoint_interval,
            result_commit_delay: raw.engine.result_commit_delay,
            forward_raw: raw.engine.forward_raw,
            schema,
            engine: Arc::new(engine),
            sources,
            sinks,
            api_listen,
            log_level,
            warnings,
        })
    }
}

/// The sinks of a reloaded file, validated on their own: what a reload applies although
/// another section is invalid (that section takes a restart anyway and keeps running as it
/// started).
#[derive(Debug)]
pub struct SinkReload {
    /// The `device_id` the sinks were validated against (MQTT topics and client ids carry it).
    pub device_id: String,
    /// `engine.forward_raw` (a sink taking `raw` needs it).
    pub forward_raw: bool,
    /// Each `[[sinks]]` entry in order: its settings, or its name and why they are invalid (a
    /// sink whose new secret file is empty or unreadable: it keeps running as it is).
    pub sinks: Vec<SinkEntry>,
}

/// One `[[sinks]]` entry of a reload: its settings, or its name and why they are invalid.
pub type SinkEntry = Result<SinkConfig, (String, ConfigError)>;

impl From<&Config> for SinkReload {
    fn from(config: &Config) -> SinkReload {
        SinkReload {
            device_id: config.device_id.clone(),
            forward_raw: config.forward_raw,
            sinks: config.sinks.iter().cloned().map(Ok).collect(),
        }
    }
}

impl RawConfig {
    /// The sinks of this file, each validated on its own ([`SinkReload`]). An error when what
    /// every sink is validated against is not valid: `device_id`, a name used twice,
    /// `engine.forward_raw` and the sinks taking `raw`.
    pub fn sinks_for_reload(self) -> Result<SinkReload, ConfigError> {
        check_device_id(&self.device_id)?;
        let mut warnings = Vec::new();
        let sinks = sinks_from_raw(self.sinks, &self.device_id, &mut warnings)?;
        for warning in &warnings {
            tracing::warn!(%warning, "SIGHUP: configuration: a key to change.");
        }
        // A refused sink is left out of the check (it keeps running as it was).
        let records = sinks.iter().map(|sink| sink.as_ref().ok().map(|sink| &sink.records));
        check_forward_raw(self.engine.forward_raw, records)?;
        Ok(SinkReload { device_id: self.device_id, forward_raw: self.engine.forward_raw, sinks })
    }
}

/// The file source `builder` holds, with the `EDDY__…` environment overrides on top, built
/// and deserialized; a load error names `at` and shows no value (a TOML snippet could hold a
/// secret), at start-up and on SIGHUP alike.
fn with_env_overrides(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    at: &str,
) -> Result<RawConfig, ConfigError> {
    builder
        .add_source(
            config::Environment::with_prefix("EDDY").prefix_separator("__").separator("__").try_parsing(true),
        )
        .build()
        .map_err(|error| ConfigError::Load(shown::without_values(&format!("{at}: {error}"))))
        .and_then(deserialize)
}

fn check_device_id(device_id: &str) -> Result<(), ConfigError> {
    if device_id.is_empty()
        || device_id.len() > 64
        || !device_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(invalid("device_id", "must be 1 to 64 characters of [A-Za-z0-9-_.:]"));
    }
    Ok(())
}

/// Validates each `[[sinks]]` entry on its own: its settings, or its name and its error. A
/// name used twice fails the whole list.
fn sinks_from_raw(
    raw: Vec<RawSinkEntry>,
    device_id: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<SinkEntry>, ConfigError> {
    let mut names = BTreeSet::new();
    let mut sinks = Vec::new();
    for (idx, sink) in raw.into_iter().enumerate() {
        let key = format!("sinks[{idx}]");
        let name = sink.shared.name.clone().unwrap_or_else(|| format!("{}-{idx}", sink.kind_name));
        if !names.insert(name.clone()) {
            return Err(invalid(format!("{key}.name"), format!("`{name}` is used twice")));
        }
        sinks.push(sinks::sink_from_raw(&key, idx, sink, device_id, warnings).map_err(|error| (name, error)));
    }
    Ok(sinks)
}

/// `engine.forward_raw` is on exactly when some sink takes `raw` records (`records` of each
/// sink in order; None: left out).
fn check_forward_raw<'a>(
    forward_raw: bool,
    records: impl Iterator<Item = Option<&'a BTreeSet<String>>>,
) -> Result<(), ConfigError> {
    let takes_raw = records
        .enumerate()
        .find(|(_, records)| records.is_some_and(|r| r.contains("raw")))
        .map(|(idx, _)| idx);
    match (forward_raw, takes_raw) {
        (false, Some(idx)) => {
            Err(invalid(format!("sinks[{idx}].records"), "`raw` needs engine.forward_raw = true"))
        }
        (true, None) => {
            Err(invalid("engine.forward_raw", "no sink takes raw readings (records = [.., \"raw\"])"))
        }
        _ => Ok(()),
    }
}

/// Deserializes the merged configuration, naming the key of any type error
/// (`batch.interval: invalid value ...`), also below a `[[sources]]` or `[[sinks]]` entry
/// (`sources[1].rate: does not apply to kind = "tcp" ...`; see `entry.rs`).
fn deserialize(built: config::Config) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(built).map_err(|error| {
        let path = error.path().to_string();
        let (key, message) = entry::join_key(path, shown::without_values(&error.into_inner().to_string()));
        ConfigError::Invalid { key, message }
    })
}

/// Checks the `name` of a window, source or sink (it appears in ids and cursors).
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

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The longest window, slide, lateness and `engine.forget_after`: a year (366 days). Window
/// arithmetic is in signed milliseconds next to timestamps; a year keeps it far from overflow.
const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

/// The longest `storage.ttl`: ten years.
const MAX_TTL: Duration = Duration::from_secs(3650 * 86_400);

/// `duration` of `key` when within `min..=max` (the shared bound check, `eddy_common`), as a
/// configuration error naming the key otherwise. Every duration key goes through it: a
/// timeout, interval or backoff is at most [`DAY`] unless its key says otherwise.
fn within(key: &str, duration: Duration, min: Duration, max: Duration) -> Result<Duration, ConfigError> {
    Ok(duration_within(key, duration, min, max)?)
}

/// The shortest positive duration, the lower bound of keys that only have to be non-zero.
const TICK: Duration = Duration::from_millis(1);
