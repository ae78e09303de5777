//! Settings of the TCP source: the `kind = "tcp"` keys as written, and their validation into
//! the typed settings the source runs with.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use eddy_common::{invalid, KeyError};
use serde::Deserialize;

use crate::parse::{format_from_keys, Format};

/// How the TCP source listens and answers (`kind = "tcp"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSourceConfig {
    /// Address to listen on. Loopback by default: exposing the port to the network is a
    /// decision the operator makes in the config file.
    pub listen: SocketAddr,
    /// Connections served at once; further ones are accepted and closed at once, and counted.
    pub max_connections: usize,
    /// Answer each connection with `ack`/`err`/`nack` lines once readings are durable (see the
    /// protocol in [`TcpSource`](crate::TcpSource)). Off by default, so that plain senders
    /// that never read (`nc`, a logger) cannot stall on a full socket buffer.
    pub ack: bool,
    /// Most lines (accepted or rejected) put into one batch for the durable log.
    pub max_batch_lines: usize,
    /// Most batches of one connection waiting for durability at once (with `ack`); past it the
    /// connection stops reading until the oldest batch is answered.
    pub max_in_flight_batches: usize,
    /// Numbered sessions (`#session`) remembered at once; past it the least recently declared
    /// one is forgotten.
    pub max_sessions: usize,
}

/// One `[[sources]]` entry with `kind = "tcp"`, as written (the daemon takes `kind` and
/// `name`, the keys every source has).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcpSource {
    /// Address to listen on (default `127.0.0.1:7878`).
    pub listen: Option<String>,
    /// Line format: `json` (default), `csv` or `influx`.
    pub format: Option<String>,
    /// Timestamp unit of `influx` lines: `ns` (default), `us`, `ms` or `s`.
    pub precision: Option<String>,
    /// Reply with durable acks (default `false`).
    pub ack: Option<bool>,
    /// Connection cap (default 64).
    pub max_connections: Option<u64>,
    /// Numbered sessions (`#session`) remembered at once (default 4096).
    pub max_sessions: Option<u64>,
}

impl TcpSourceConfig {
    /// Default `listen`: `127.0.0.1:7878`.
    pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7878));
    /// Default `max_connections`.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
    /// Default `max_batch_lines`.
    pub const DEFAULT_MAX_BATCH_LINES: usize = 1024;
    /// Default `max_in_flight_batches`: enough to keep the disk busy while acks travel back.
    pub const DEFAULT_MAX_IN_FLIGHT_BATCHES: usize = 16;
    /// Default `max_sessions`: far more senders than a gateway has, a few dozen KiB.
    pub const DEFAULT_MAX_SESSIONS: usize = 4096;
}

impl Default for TcpSourceConfig {
    fn default() -> TcpSourceConfig {
        TcpSourceConfig {
            listen: TcpSourceConfig::DEFAULT_LISTEN,
            max_connections: TcpSourceConfig::DEFAULT_MAX_CONNECTIONS,
            ack: false,
            max_batch_lines: TcpSourceConfig::DEFAULT_MAX_BATCH_LINES,
            max_in_flight_batches: TcpSourceConfig::DEFAULT_MAX_IN_FLIGHT_BATCHES,
            max_sessions: TcpSourceConfig::DEFAULT_MAX_SESSIONS,
        }
    }
}

impl RawTcpSource {
    /// Validates the entry at `key` (`sources[N]`) into the source's settings and line format.
    pub fn validate(self, key: &str) -> Result<(TcpSourceConfig, Format), KeyError> {
        let listen_text = self.listen.as_deref().unwrap_or("127.0.0.1:7878");
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            invalid(format!("{key}.listen"), format!("`{listen_text}` is not an address like 127.0.0.1:7878"))
        })?;
        let format = format_from_keys(key, self.format.as_deref(), self.precision.as_deref())?;
        let max_connections = usize::try_from(self.max_connections.unwrap_or(64))
            .ok()
            .filter(|n| (1..=65_536).contains(n))
            .ok_or_else(|| invalid(format!("{key}.max_connections"), "must be between 1 and 65536"))?;
        let max_sessions = usize::try_from(self.max_sessions.unwrap_or(4096))
            .ok()
            .filter(|n| (1..=1_000_000).contains(n) && *n >= max_connections)
            .ok_or_else(|| {
                invalid(
                    format!("{key}.max_sessions"),
                    "must be between max_connections (a connection owns at most one session) and 1000000",
                )
            })?;
        let tcp = TcpSourceConfig {
            listen,
            max_connections,
            max_sessions,
            ack: self.ack.unwrap_or(false),
            ..TcpSourceConfig::default()
        };
        Ok((tcp, format))
    }
}
