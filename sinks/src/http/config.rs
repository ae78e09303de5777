//! Settings of the HTTP uplink.

use std::time::Duration;

use crate::secret::Secret;
use crate::tls::TlsFiles;

/// Where and how the HTTP uplink posts. Plain data, validated by the daemon's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The sink's name (logs, cursor).
    pub name: String,
    /// `http://…` or `https://…` URL the batches are POSTed to.
    pub url: String,
    /// Extra request headers (e.g. `Authorization`), values kept secret.
    pub headers: Vec<(String, Secret)>,
    /// TLS files for `https://` (CA to trust, optional client certificate).
    pub tls: TlsFiles,
    /// Longest wait for one request: connect, send, response and its body. A blackholed link is
    /// noticed here.
    pub timeout: Duration,
    /// Longest wait for the TCP connection.
    pub connect_timeout: Duration,
}
