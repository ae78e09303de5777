//! `[ingest]`: how readings come in (group commit, line and timestamp limits, sensor cap).

use std::time::Duration;

use eddy_sensors::Limits;
use serde::Deserialize;

use eddy_common::DAY;

use crate::config::{invalid, within, ConfigError, TICK};

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

/// The validated `[ingest]` section.
pub(crate) struct Ingest {
    /// Group-commit interval.
    pub(crate) flush_interval: Duration,
    /// Parser limits.
    pub(crate) limits: Limits,
    /// Cap on distinct sensors.
    pub(crate) max_sensors: usize,
}

impl RawIngest {
    /// Validates the section.
    pub(crate) fn validate(&self) -> Result<Ingest, ConfigError> {
        within("ingest.flush_interval", self.flush_interval, TICK, DAY)?;
        if self.flush_interval > Duration::from_secs(1) {
            return Err(invalid(
                "ingest.flush_interval",
                "must be at most 1s (it delays every acknowledgement)",
            ));
        }
        within("ingest.max_future", self.max_future, Duration::ZERO, DAY)?;
        let max_line_bytes = usize::try_from(self.max_line_bytes)
            .ok()
            .filter(|n| (64..=1 << 20).contains(n))
            .ok_or_else(|| invalid("ingest.max_line_bytes", "must be between 64 and 1048576"))?;
        let max_sensors = usize::try_from(self.max_sensors)
            .ok()
            .filter(|n| (1..=10_000_000).contains(n))
            .ok_or_else(|| invalid("ingest.max_sensors", "must be between 1 and 10000000"))?;
        Ok(Ingest {
            flush_interval: self.flush_interval,
            limits: Limits { max_line_bytes, max_future: self.max_future },
            max_sensors,
        })
    }
}
