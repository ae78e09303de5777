//! Settings of the serial source, already validated and typed by the daemon's config loader.

use std::path::PathBuf;
use std::time::Duration;

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
