//! Settings of the simulator source: the `kind = "simulator"` keys as written, and their
//! validation into the typed settings the simulator runs with.

use std::num::NonZeroU32;

use eddy_common::{invalid, KeyError};
use serde::Deserialize;

/// Settings of the simulator source.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorConfig {
    /// Number of thermostats, `t-000` upwards.
    pub sensors: NonZeroU32,
    /// Readings per second per thermostat; must be positive.
    pub rate: f64,
    /// Seed of the random generator: the same seed gives the same values.
    pub seed: u64,
}

/// One `[[sources]]` entry with `kind = "simulator"`, as written (the daemon takes `kind` and
/// `name`, the keys every source has).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSimulatorSource {
    /// Thermostats (default 10).
    pub sensors: Option<u64>,
    /// Readings per second per thermostat (default 1).
    pub rate: Option<f64>,
    /// Seed of the random values (default 42).
    pub seed: Option<u64>,
}

impl SimulatorConfig {
    /// Default `sensors`.
    pub const DEFAULT_SENSORS: NonZeroU32 = match NonZeroU32::new(10) {
        Some(sensors) => sensors,
        None => panic!("10 is not zero"),
    };
    /// Default `rate`.
    pub const DEFAULT_RATE: f64 = 1.0;
}

impl Default for SimulatorConfig {
    fn default() -> SimulatorConfig {
        SimulatorConfig {
            sensors: SimulatorConfig::DEFAULT_SENSORS,
            rate: SimulatorConfig::DEFAULT_RATE,
            seed: 0,
        }
    }
}

impl RawSimulatorSource {
    /// Validates the entry at `key` (`sources[N]`).
    pub fn validate(self, key: &str) -> Result<SimulatorConfig, KeyError> {
        let sensors = u32::try_from(self.sensors.unwrap_or(10))
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .and_then(NonZeroU32::new)
            .ok_or_else(|| invalid(format!("{key}.sensors"), "must be between 1 and 100000"))?;
        let rate = self.rate.unwrap_or(1.0);
        // At least one reading per 100 s: the period between rounds is 1 / rate, a timer that
        // must fit (1e-18 readings/s is a period of 3e10 years).
        if !(rate.is_finite() && (0.01..=1_000_000.0).contains(&rate)) {
            return Err(invalid(
                format!("{key}.rate"),
                "must be a number of readings/s from 0.01 to 1000000",
            ));
        }
        Ok(SimulatorConfig { sensors, rate, seed: self.seed.unwrap_or(42) })
    }
}
