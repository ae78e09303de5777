//! Settings of the TCP source, already validated and typed by the daemon's config loader.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

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
