//! `[clock]`: when the gateway's wall clock may be believed (see `eddy_common::GatewayClock`).

use std::path::PathBuf;

use eddy_common::ClockTrust;
use serde::Deserialize;

use crate::config::{invalid, ConfigError};

/// `[clock]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClock {
    /// `auto` (the default): believed once the kernel says an NTP client synchronised it, or
    /// while `synchronized_file` exists; `always`: a battery-backed clock with no time daemon.
    /// Never believed while it reads earlier than eddy's build.
    pub trust: Option<String>,
    /// A file whose existence says the clock is synchronised (systemd-timesyncd writes
    /// `/run/systemd/timesync/synchronized`), for time daemons that do not tell the kernel.
    pub synchronized_file: Option<PathBuf>,
}

/// The validated `[clock]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClockConfig {
    /// When the wall clock is believed.
    pub trust: ClockTrust,
    /// A file that says the clock is synchronised while it exists.
    pub synchronized_file: Option<PathBuf>,
}

impl RawClock {
    /// Validates the section.
    pub(crate) fn validate(&self) -> Result<ClockConfig, ConfigError> {
        let trust = match self.trust.as_deref() {
            None | Some("auto") => ClockTrust::Auto,
            Some("always") => ClockTrust::Always,
            Some(other) => {
                return Err(invalid("clock.trust", format!("`{other}` is not one of: auto, always")))
            }
        };
        if let Some(path) = &self.synchronized_file {
            if !path.is_absolute() {
                return Err(invalid("clock.synchronized_file", "must be an absolute path"));
            }
            if trust == ClockTrust::Always {
                return Err(invalid("clock.synchronized_file", "has no use with trust = \"always\""));
            }
        }
        Ok(ClockConfig { trust, synchronized_file: self.synchronized_file.clone() })
    }
}
