//! `[api]` and `[log]`: the daemon's own HTTP endpoint and its log filter.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::{invalid, ConfigError};

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

impl RawApi {
    /// The endpoint's address (none: off).
    pub(crate) fn listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match &self.listen {
            None => Ok(None),
            Some(text) => Ok(Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid("api.listen", format!("`{text}` is not an address such as 127.0.0.1:7879"))
            })?)),
        }
    }
}

impl RawLog {
    /// The log filter, checked.
    pub(crate) fn level(&self) -> Result<Option<String>, ConfigError> {
        if let Some(level) = &self.level {
            if let Err(error) = level.parse::<tracing_subscriber::filter::Targets>() {
                return Err(invalid("log.level", format!("`{level}` is not a log filter: {error}")));
            }
        }
        Ok(self.level.clone())
    }
}
