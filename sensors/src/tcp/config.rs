//! Settings of the TCP source: the `kind = "tcp"` keys as written, and their validation into
//! the typed settings the source runs with.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use eddy_common::{
    duration_within, invalid, secret_from_file, tls_server_config, KeyError, PemFile, PlainCredential,
    Secret, TlsError, DAY,
};
use serde::Deserialize;

use crate::parse::{format_from_keys, Format};
use crate::tcp::peer::PeerNet;

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
    /// one of the same owner (or one nobody has claimed since the start) is forgotten.
    pub max_sessions: usize,
    /// Numbered sessions one owner (credential, or peer address without one) may have; past
    /// it its own least recently declared one is forgotten.
    pub max_sessions_per_peer: usize,
    /// How far `FIRST` of `#session ID FIRST` may jump past the session's settled line.
    pub max_session_skip_lines: u64,
    /// TLS: the server's certificate and key, and the CA client certificates must chain to.
    pub tls: Option<TcpTls>,
    /// Networks peers may connect from; empty: any.
    pub allow: Vec<PeerNet>,
    /// The shared token a connection's first line must present (`#auth TOKEN`).
    pub token: Option<Secret>,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// The TLS handshake and the `#auth` line must be done within this from the accept.
    pub auth_timeout: Duration,
    /// Replies (with `ack`) a connection may have queued, in bytes; past it the connection
    /// stops reading until its peer reads them.
    pub max_reply_bytes: usize,
    /// A connection whose replies cannot be written for this long (its peer does not read
    /// them) is closed.
    pub reply_timeout: Duration,
}

/// The files of the TCP source's TLS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTls {
    /// The server certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// With it, every client must present a certificate that chains to one of these CAs.
    pub client_ca_file: Option<PathBuf>,
}

impl TcpTls {
    /// The rustls server configuration (reads the files).
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        tls_server_config(&self.cert_file, &self.key_file, self.client_ca_file.as_deref())
    }
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
    /// Numbered sessions one owner may have (default 64, or `max_sessions` if smaller).
    pub max_sessions_per_peer: Option<u64>,
    /// Lines a `#session` may skip past the settled line (default 1000000).
    pub max_session_skip_lines: Option<u64>,
    /// The TLS server certificate (PEM); with `tls_key_file`, the source speaks TLS only.
    pub tls_cert_file: Option<PathBuf>,
    /// The TLS server key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to; set, a client certificate is
    /// required.
    pub tls_client_ca_file: Option<PathBuf>,
    /// Networks peers may connect from, like `192.168.10.0/24` (default: any).
    pub allow: Option<Vec<String>>,
    /// A file holding the token every connection must send first (`#auth TOKEN`).
    pub token_file: Option<PathBuf>,
    /// Accept the token over plain TCP, without `tls_cert_file` (default false: refused),
    /// with a warning.
    pub allow_insecure: Option<bool>,
    /// Close a connection silent this long (default 5m).
    #[serde(with = "humantime_serde", default)]
    pub idle_timeout: Option<Duration>,
    /// Time to finish the TLS handshake and `#auth` (default 10s).
    #[serde(with = "humantime_serde", default)]
    pub auth_timeout: Option<Duration>,
    /// Queued reply bytes per connection before it stops reading (default 65536).
    pub max_reply_bytes: Option<u64>,
    /// Close a connection whose replies cannot be written this long (default 30s).
    #[serde(with = "humantime_serde", default)]
    pub reply_timeout: Option<Duration>,
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
    /// Default `max_sessions_per_peer`: a gateway's sender has a handful of streams.
    pub const DEFAULT_MAX_SESSIONS_PER_PEER: usize = 64;
    /// Default `max_session_skip_lines`: far more than a sender loses in one outage, far less
    /// than a number that would silence a session for good.
    pub const DEFAULT_MAX_SESSION_SKIP_LINES: u64 = 1_000_000;
    /// Default `idle_timeout`.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Default `auth_timeout`.
    pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `max_reply_bytes`: a few thousand replies, against the megabytes a full
    /// pipeline of rejections took before.
    pub const DEFAULT_MAX_REPLY_BYTES: usize = 64 * 1024;
    /// Default `reply_timeout`.
    pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
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
            max_sessions_per_peer: TcpSourceConfig::DEFAULT_MAX_SESSIONS_PER_PEER,
            max_session_skip_lines: TcpSourceConfig::DEFAULT_MAX_SESSION_SKIP_LINES,
            tls: None,
            allow: Vec::new(),
            token: None,
            idle_timeout: TcpSourceConfig::DEFAULT_IDLE_TIMEOUT,
            auth_timeout: TcpSourceConfig::DEFAULT_AUTH_TIMEOUT,
            max_reply_bytes: TcpSourceConfig::DEFAULT_MAX_REPLY_BYTES,
            reply_timeout: TcpSourceConfig::DEFAULT_REPLY_TIMEOUT,
        }
    }
}

impl RawTcpSource {
    /// Validates the entry at `key` (`sources[N]`) into the source's settings and line format.
    /// A token without TLS is refused unless `allow_insecure = true`, which adds to `warnings`.
    pub fn validate(
        self,
        key: &str,
        warnings: &mut Vec<String>,
    ) -> Result<(TcpSourceConfig, Format), KeyError> {
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
        // The default never exceeds a smaller `max_sessions`.
        let max_sessions_per_peer = match self.max_sessions_per_peer {
            Some(n) => usize::try_from(n).ok(),
            None => Some(TcpSourceConfig::DEFAULT_MAX_SESSIONS_PER_PEER.min(max_sessions)),
        }
        .filter(|n| (1..=max_sessions).contains(n))
        .ok_or_else(|| {
            invalid(format!("{key}.max_sessions_per_peer"), "must be between 1 and max_sessions")
        })?;
        let max_session_skip_lines =
            self.max_session_skip_lines.unwrap_or(TcpSourceConfig::DEFAULT_MAX_SESSION_SKIP_LINES);
        if max_session_skip_lines > u64::MAX / 2 {
            return Err(invalid(
                format!("{key}.max_session_skip_lines"),
                "must be at most 9223372036854775807",
            ));
        }
        let allow = self
            .allow
            .unwrap_or_default()
            .iter()
            .map(|text| PeerNet::parse(text).map_err(|message| invalid(format!("{key}.allow"), message)))
            .collect::<Result<Vec<_>, _>>()?;
        let token = match &self.token_file {
            None => None,
            Some(path) => {
                let key = format!("{key}.token_file");
                let text = secret_from_file(&key, path)?;
                // Not empty: `secret_from_file` refuses a file of white space alone.
                let token = Secret::new(text.trim());
                if token.expose().bytes().any(|byte| byte.is_ascii_whitespace() || byte.is_ascii_control()) {
                    return Err(invalid(key, "the token must be one word of printable characters"));
                }
                Some(token)
            }
        };
        let tls = tls_from_keys(key, self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)?;
        if token.is_some() && tls.is_none() {
            let instead = "tls_cert_file and tls_key_file";
            PlainCredential { key: format!("{key}.token_file"), transport: "plain TCP", instead }
                .check(self.allow_insecure.unwrap_or(false), warnings)?;
        }
        let duration = |name: &str, value: Option<Duration>, default: Duration, min: Duration| {
            duration_within(&format!("{key}.{name}"), value.unwrap_or(default), min, DAY)
        };
        let idle_timeout = duration(
            "idle_timeout",
            self.idle_timeout,
            TcpSourceConfig::DEFAULT_IDLE_TIMEOUT,
            Duration::from_secs(1),
        )?;
        let auth_timeout = duration(
            "auth_timeout",
            self.auth_timeout,
            TcpSourceConfig::DEFAULT_AUTH_TIMEOUT,
            Duration::from_millis(100),
        )?;
        let reply_timeout = duration(
            "reply_timeout",
            self.reply_timeout,
            TcpSourceConfig::DEFAULT_REPLY_TIMEOUT,
            Duration::from_millis(100),
        )?;
        let max_reply_bytes = usize::try_from(self.max_reply_bytes.unwrap_or(64 * 1024))
            .ok()
            .filter(|n| (1024..=64 * 1024 * 1024).contains(n))
            .ok_or_else(|| invalid(format!("{key}.max_reply_bytes"), "must be between 1024 and 67108864"))?;
        let tcp = TcpSourceConfig {
            listen,
            max_connections,
            max_sessions,
            max_sessions_per_peer,
            max_session_skip_lines,
            ack: self.ack.unwrap_or(false),
            tls,
            allow,
            token,
            idle_timeout,
            auth_timeout,
            max_reply_bytes,
            reply_timeout,
            ..TcpSourceConfig::default()
        };
        Ok((tcp, format))
    }
}

/// The TLS keys: certificate and key together, a client CA only with them; the files are
/// loaded once here so that `check-config` reports a broken file, naming its key.
fn tls_from_keys(
    key: &str,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
) -> Result<Option<TcpTls>, KeyError> {
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => (cert_file, key_file),
        (None, None) if client_ca_file.is_none() => return Ok(None),
        (None, None) => {
            return Err(invalid(
                format!("{key}.tls_client_ca_file"),
                "needs tls_cert_file and tls_key_file (client certificates are a TLS feature)",
            ))
        }
        (Some(_), None) => {
            return Err(invalid(format!("{key}.tls_key_file"), "is required with tls_cert_file"))
        }
        (None, Some(_)) => {
            return Err(invalid(format!("{key}.tls_cert_file"), "is required with tls_key_file"))
        }
    };
    let tls = TcpTls { cert_file, key_file, client_ca_file };
    tls.server_config().map_err(|error| tls_key_error(key, &error))?;
    Ok(Some(tls))
}

/// A TLS set-up error as a key error naming the key of the file at fault.
pub(crate) fn tls_key_error(key: &str, error: &TlsError) -> KeyError {
    let name = match error {
        TlsError::Pem { file, .. } | TlsError::NoCertificate { file, .. } => match file {
            PemFile::ServerKey | PemFile::ClientKey => "tls_key_file",
            PemFile::CaCertificate => "tls_client_ca_file",
            PemFile::ServerCertificate | PemFile::ClientCertificate => "tls_cert_file",
        },
        TlsError::CaRefused { .. } | TlsError::ClientVerifier { .. } => "tls_client_ca_file",
        TlsError::ServerCertificate { .. } => "tls_key_file",
        TlsError::Versions(_) | TlsError::NoSystemRoots | TlsError::ClientAuth { .. } => "tls_cert_file",
    };
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    invalid(format!("{key}.{name}"), message)
}
