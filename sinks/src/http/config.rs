//! Settings of the HTTP uplink: the `kind = "http"` keys as written, and their validation into
//! the typed settings the uplink runs with.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use eddy_common::{invalid, secret_from_env, secret_from_file, KeyError};
use serde::Deserialize;

use crate::config_keys::{timeout, tls_files};
use crate::tls::TlsFiles;
use eddy_common::Secret;

/// Where and how the HTTP uplink posts. Plain data, validated from [`RawHttpSink`].
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

/// One `[[sinks]]` entry with `kind = "http"`, as written (the daemon takes `kind`, `name`,
/// `records` and the delivery keys every sink has).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpSink {
    /// The hub's `http://` or `https://` URL (required).
    pub url: Option<String>,
    /// Longest wait for a whole request (default 30s).
    #[serde(with = "humantime_serde", default)]
    pub timeout: Option<Duration>,
    /// Longest wait for the connection (default 10s).
    #[serde(with = "humantime_serde", default)]
    pub connect_timeout: Option<Duration>,
    /// Headers with literal values.
    pub headers: Option<BTreeMap<String, String>>,
    /// Headers whose values are read from files.
    pub header_files: Option<BTreeMap<String, PathBuf>>,
    /// Headers whose values are read from environment variables.
    pub header_env: Option<BTreeMap<String, String>>,
    /// CA certificates, PEM (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate, PEM, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client key, PEM, with `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl RawHttpSink {
    /// Validates the entry at `key` (`sinks[N]`) of the sink `name`. Reads the header files
    /// and variables now, so that a missing secret is a configuration error naming its key.
    pub fn validate(self, key: &str, name: &str) -> Result<HttpConfig, KeyError> {
        let url = self.url.ok_or_else(|| invalid(format!("{key}.url"), "is required for kind = \"http\""))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<hyper::Uri>().is_err()
        {
            return Err(invalid(format!("{key}.url"), format!("`{url}` is not an http:// or https:// URL")));
        }
        let has_tls_files = self.ca_file.is_some() || self.cert_file.is_some();
        let tls = tls_files(key, self.ca_file, self.cert_file, self.key_file)?;
        if url.starts_with("http://") && has_tls_files {
            return Err(invalid(format!("{key}.ca_file"), "TLS files need an https:// url"));
        }
        let mut headers: Vec<(String, Secret)> = Vec::new();
        for (header, value) in self.headers.into_iter().flatten() {
            headers.push((header, Secret::new(value)));
        }
        for (header, path) in self.header_files.into_iter().flatten() {
            let value = secret_from_file(&format!("{key}.header_files.{header}"), &path)?;
            headers.push((header, Secret::new(value)));
        }
        for (header, variable) in self.header_env.into_iter().flatten() {
            let value = secret_from_env(&format!("{key}.header_env.{header}"), &variable)?;
            headers.push((header, Secret::new(value)));
        }
        Ok(HttpConfig {
            name: name.to_owned(),
            url,
            headers,
            tls,
            timeout: timeout(key, "timeout", self.timeout, Duration::from_secs(30))?,
            connect_timeout: timeout(key, "connect_timeout", self.connect_timeout, Duration::from_secs(10))?,
        })
    }
}
