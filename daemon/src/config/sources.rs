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
use crate::config::{check_name, invalid, ConfigError};

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
    /// Cap on the distinct sensor ids this source may introduce (default: its share of
    /// `ingest.max_sensors`, see [`crate::config::Config`]).
    pub max_sensors: Option<u64>,
}

impl SharedKeys for RawSourceShared {
    const KEYS: &'static [&'static str] = &["name", "max_sensors"];
}

/// A validated source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique name.
    pub name: String,
    /// Cap on the distinct sensor ids this source may introduce; the caps of all sources add
    /// up to at most `ingest.max_sensors`, so no source can lock another one's sensors out.
    pub max_sensors: usize,
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
/// `warnings`. Returns the source with `max_sensors` 0 and the cap written in the file, if
/// any: [`share_sensor_caps`] sets it once every source is known.
pub(crate) fn source_from_raw(
    key: &str,
    idx: usize,
    raw: RawSourceEntry,
    warnings: &mut Vec<String>,
) -> Result<(SourceConfig, Option<usize>), ConfigError> {
    let name = raw.shared.name.unwrap_or_else(|| format!("{}-{idx}", raw.kind_name));
    check_name(&format!("{key}.name"), &name)?;
    let max_sensors = match raw.shared.max_sensors {
        None => None,
        Some(cap) => Some(
            usize::try_from(cap)
                .ok()
                .filter(|cap| (1..=10_000_000).contains(cap))
                .ok_or_else(|| invalid(format!("{key}.max_sensors"), "must be between 1 and 10000000"))?,
        ),
    };
    let kind = match raw.kind {
        RawSource::Tcp(tcp) => {
            let (tcp, format) = tcp.validate(key, warnings)?;
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
    Ok((SourceConfig { name, max_sensors: 0, kind }, max_sensors))
}

/// Sets each source's sensor cap: the one written, or an even share of what `gateway_cap`
/// (`ingest.max_sensors`) leaves after the written ones. The caps may not add up to more than
/// `gateway_cap`: then one source inventing ids could fill the gateway's room and lock the
/// others' new sensors out (issue #14).
pub(crate) fn share_sensor_caps(
    sources: &mut [SourceConfig],
    written: &[Option<usize>],
    gateway_cap: usize,
) -> Result<(), ConfigError> {
    let written_total: usize = written.iter().flatten().sum();
    let n_shared = written.iter().filter(|cap| cap.is_none()).count();
    let left = gateway_cap.checked_sub(written_total).ok_or_else(|| {
        invalid(
            "ingest.max_sensors",
            format!(
                "the sources' max_sensors add up to {written_total}, more than ingest.max_sensors \
                 ({gateway_cap}): one source could lock the others' sensors out"
            ),
        )
    })?;
    let share = left.checked_div(n_shared).unwrap_or(0);
    if n_shared > 0 && share == 0 {
        return Err(invalid(
            "ingest.max_sensors",
            format!(
                "leaves no sensor for the {n_shared} source(s) without max_sensors after the \
                 {written_total} the others take"
            ),
        ));
    }
    for (source, cap) in sources.iter_mut().zip(written) {
        source.max_sensors = cap.unwrap_or(share);
    }
    Ok(())
}
