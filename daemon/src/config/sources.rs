//! `[[sources]]`: the kinds of source, each with its own keys (owned by its source in the
//! sensors crate), the keys every source has, and the validated [`SourceConfig`].
//!
//! A new kind of source is one line in [`RawSource`], one in [`SourceKind`] and one arm in
//! [`source_from_raw`]; its keys, defaults and checks live with the source.

use eddy_sensors::{
    Format, MqttSourceConfig, RawMqttSource, RawSerialSource, RawSimulatorSource, RawTcpSource,
    SerialSourceConfig, SimulatorConfig, TcpSourceConfig,
};
use serde::Deserialize;

use crate::config::entry::{RawEntry, SharedKeys};
use crate::config::{check_name, ConfigError};

/// One `[[sources]]` entry as written.
pub type RawSourceEntry = RawEntry<RawSourceShared, RawSource>;

/// The kind of a `[[sources]]` entry (`kind = "..."`) with the keys of that kind; a key of
/// another kind is refused by serde.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RawSource {
    /// `kind = "tcp"`: a TCP listener for JSON, CSV or Influx lines.
    Tcp(RawTcpSource),
    /// `kind = "serial"`: a serial port.
    Serial(RawSerialSource),
    /// `kind = "mqtt"`: an MQTT subscription.
    Mqtt(Box<RawMqttSource>),
    /// `kind = "simulator"`: built-in thermostats.
    Simulator(RawSimulatorSource),
}

/// The keys every `[[sources]]` entry has, whatever its kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourceShared {
    /// Unique name (default `kind-N`).
    pub name: Option<String>,
}

impl SharedKeys for RawSourceShared {
    const KEYS: &'static [&'static str] = &["name"];
}

/// A validated source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique name.
    pub name: String,
    /// What it is.
    pub kind: SourceKind,
}

/// The kinds of source, each with the typed settings of its source.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// TCP listener.
    Tcp {
        /// Address, acks, connection and session caps.
        tcp: TcpSourceConfig,
        /// Line format.
        format: Format,
    },
    /// A serial port.
    Serial {
        /// Port and line settings.
        serial: SerialSourceConfig,
        /// Line format.
        format: Format,
    },
    /// An MQTT subscription.
    Mqtt {
        /// Broker, session and topics.
        mqtt: Box<MqttSourceConfig>,
        /// Payload format.
        format: Format,
    },
    /// Built-in thermostats.
    Simulator(SimulatorConfig),
}

/// Validates entry `idx` (at `key`, `sources[idx]`); a deprecated key spelling adds a line to
/// `warnings`.
pub(crate) fn source_from_raw(
    key: &str,
    idx: usize,
    raw: RawSourceEntry,
    warnings: &mut Vec<String>,
) -> Result<SourceConfig, ConfigError> {
    let name = raw.shared.name.unwrap_or_else(|| format!("{}-{idx}", raw.kind_name));
    check_name(&format!("{key}.name"), &name)?;
    let kind = match raw.kind {
        RawSource::Tcp(tcp) => {
            let (tcp, format) = tcp.validate(key)?;
            SourceKind::Tcp { tcp, format }
        }
        RawSource::Serial(serial) => {
            let (serial, format) = serial.validate(key)?;
            SourceKind::Serial { serial, format }
        }
        RawSource::Mqtt(mqtt) => {
            let (mqtt, format) = mqtt.validate(key, warnings)?;
            tracing::debug!(source = name, broker = %mqtt.broker, "MQTT source configured.");
            SourceKind::Mqtt { mqtt: Box::new(mqtt), format }
        }
        RawSource::Simulator(simulator) => SourceKind::Simulator(simulator.validate(key)?),
    };
    Ok(SourceConfig { name, kind })
}
