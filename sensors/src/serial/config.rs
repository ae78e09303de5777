//! Settings of the serial source: the `kind = "serial"` keys as written, and their validation
//! into the typed settings the source runs with.

use std::path::PathBuf;
use std::time::Duration;

use eddy_common::{invalid, KeyError};
use serde::Deserialize;

use crate::parse::{format_from_keys, Format};

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialParity {
    /// No parity bit (the usual 8N1).
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// What ends a line on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineSeparator {
    /// `\n`; `\r\n` works too (the `\r` is stripped).
    Lf,
    /// `\r` alone, as some meters send; `\r\n` works too (the empty line between is skipped).
    Cr,
}

/// How the serial source opens its port and frames its lines (`kind = "serial"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSourceConfig {
    /// The device, e.g. `/dev/ttyUSB0` or a stable `/dev/serial/by-id/...` link.
    pub path: PathBuf,
    /// Line speed in bits per second.
    pub baud: u32,
    /// Data bits per character: 5 to 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: SerialParity,
    /// Stop bits: 1 or 2.
    pub stop_bits: u8,
    /// Line terminator.
    pub line_separator: LineSeparator,
    /// Readings held while the durable log is busy; past it whole lines are dropped and
    /// counted as `overrun` (a serial device cannot be paused).
    pub max_pending_readings: usize,
    /// First pause before reopening a port that went away; doubled per failure.
    pub retry_min: Duration,
    /// Longest pause between reopening attempts.
    pub retry_max: Duration,
}

/// One `[[sources]]` entry with `kind = "serial"`, as written (the daemon takes `kind` and
/// `name`, the keys every source has).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerialSource {
    /// Device path (required).
    pub path: Option<PathBuf>,
    /// Line speed (default 9600).
    pub baud: Option<u64>,
    /// Data bits: 5 to 8 (default 8).
    pub data_bits: Option<u64>,
    /// `none` (default), `odd` or `even`.
    pub parity: Option<String>,
    /// Stop bits: 1 (default) or 2.
    pub stop_bits: Option<u64>,
    /// `lf` (default) or `cr`.
    pub line_separator: Option<String>,
    /// Readings held while the log is busy (default 4096).
    pub max_pending_readings: Option<u64>,
    /// Line format: `json` (default), `csv` or `influx`.
    pub format: Option<String>,
    /// Timestamp unit of `influx` lines: `ns` (default), `us`, `ms` or `s`.
    pub precision: Option<String>,
}

impl SerialSourceConfig {
    /// Default `baud`.
    pub const DEFAULT_BAUD: u32 = 9600;
    /// Default `max_pending_readings`: a few seconds of a fast device at 115200 baud.
    pub const DEFAULT_MAX_PENDING_READINGS: usize = 4096;
    /// Default `retry_min`.
    pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(100);
    /// Default `retry_max`: a replugged adapter is read again within a few seconds.
    pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(5);

    /// 8N1 at the default speed on `path`.
    pub fn new(path: impl Into<PathBuf>) -> SerialSourceConfig {
        SerialSourceConfig {
            path: path.into(),
            baud: SerialSourceConfig::DEFAULT_BAUD,
            data_bits: 8,
            parity: SerialParity::None,
            stop_bits: 1,
            line_separator: LineSeparator::Lf,
            max_pending_readings: SerialSourceConfig::DEFAULT_MAX_PENDING_READINGS,
            retry_min: SerialSourceConfig::DEFAULT_RETRY_MIN,
            retry_max: SerialSourceConfig::DEFAULT_RETRY_MAX,
        }
    }
}

impl RawSerialSource {
    /// Validates the entry at `key` (`sources[N]`) into the port settings and line format.
    pub fn validate(self, key: &str) -> Result<(SerialSourceConfig, Format), KeyError> {
        let path =
            self.path.ok_or_else(|| invalid(format!("{key}.path"), "is required for kind = \"serial\""))?;
        if path.as_os_str().is_empty() || path.to_str().is_none() {
            return Err(invalid(format!("{key}.path"), "must be a non-empty UTF-8 path"));
        }
        let mut serial = SerialSourceConfig::new(path);
        if let Some(baud) = self.baud {
            serial.baud = u32::try_from(baud)
                .ok()
                .filter(|baud| (50..=4_000_000).contains(baud))
                .ok_or_else(|| invalid(format!("{key}.baud"), "must be between 50 and 4000000"))?;
        }
        if let Some(data_bits) = self.data_bits {
            serial.data_bits = u8::try_from(data_bits)
                .ok()
                .filter(|bits| (5..=8).contains(bits))
                .ok_or_else(|| invalid(format!("{key}.data_bits"), "must be 5, 6, 7 or 8"))?;
        }
        serial.parity = match self.parity.as_deref() {
            None | Some("none") => SerialParity::None,
            Some("odd") => SerialParity::Odd,
            Some("even") => SerialParity::Even,
            Some(other) => {
                return Err(invalid(
                    format!("{key}.parity"),
                    format!("`{other}` is not one of: none, odd, even"),
                ))
            }
        };
        if let Some(stop_bits) = self.stop_bits {
            serial.stop_bits = u8::try_from(stop_bits)
                .ok()
                .filter(|bits| (1..=2).contains(bits))
                .ok_or_else(|| invalid(format!("{key}.stop_bits"), "must be 1 or 2"))?;
        }
        serial.line_separator = match self.line_separator.as_deref() {
            None | Some("lf") => LineSeparator::Lf,
            Some("cr") => LineSeparator::Cr,
            Some(other) => {
                return Err(invalid(
                    format!("{key}.line_separator"),
                    format!("`{other}` is not one of: lf, cr"),
                ))
            }
        };
        if let Some(max_pending) = self.max_pending_readings {
            serial.max_pending_readings =
                usize::try_from(max_pending).ok().filter(|n| (1..=1_000_000).contains(n)).ok_or_else(
                    || invalid(format!("{key}.max_pending_readings"), "must be between 1 and 1000000"),
                )?;
        }
        let format = format_from_keys(key, self.format.as_deref(), self.precision.as_deref())?;
        Ok((serial, format))
    }
}
