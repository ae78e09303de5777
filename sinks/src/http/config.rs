//! Settings of the HTTP uplink: the `kind = "http"` keys as written, and their validation into
//! the typed settings the uplink runs with.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use eddy_common::{invalid, redact_url, secret_from_env, secret_from_file, KeyError, PlainCredential};
use serde::Deserialize;

use crate::config_keys::{timeout, tls_files};
use crate::tls::TlsFiles;
use eddy_common::Secret;

/// Where and how the HTTP uplink posts. Plain data, validated from [`RawHttpSink`]. Its
/// `Debug` shows the URL redacted (a query may carry a token) and no header value.
#[derive(Clone, PartialEq, Eq)]
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

impl fmt::Debug for HttpConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        formatter
            .debug_struct("HttpConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("headers", &header_names)
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// One `[[sinks]]` entry with `kind = "http"`, as written (the daemon takes `kind`, `name`,
/// `records` and the delivery keys every sink has). Its `Debug` shows neither the URL nor a
/// header value: they may hold credentials as written.
#[derive(Default, Deserialize)]
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
    /// Accept credentials over plain `http://` (default false: refused), with a warning.
    pub allow_insecure: Option<bool>,
}

impl fmt::Debug for RawHttpSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RawHttpSink")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("headers", &self.headers.as_ref().map(|headers| headers.keys().collect::<Vec<_>>()))
            .field("header_files", &self.header_files)
            .field("header_env", &self.header_env)
            .field("allow_insecure", &self.allow_insecure)
            .finish_non_exhaustive()
    }
}

impl RawHttpSink {
    /// Validates the entry at `key` (`sinks[N]`) of the sink `name`. Reads the header files
    /// and variables now, so that a missing secret is a configuration error naming its key.
    /// Credentials over plain `http://` are refused unless `allow_insecure = true`, which adds
    /// a line to `warnings`.
    pub fn validate(self, key: &str, name: &str, warnings: &mut Vec<String>) -> Result<HttpConfig, KeyError> {
        let url = self.url.ok_or_else(|| invalid(format!("{key}.url"), "is required for kind = \"http\""))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<hyper::Uri>().is_err()
        {
            return Err(invalid(
                format!("{key}.url"),
                format!("`{}` is not an http:// or https:// URL", redact_url(&url)),
            ));
        }
        // The client never sends a user part as credentials, but its trace logs print it.
        let authority =
            url.split_once("://").map_or("", |(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
        if authority.contains('@') {
            return Err(invalid(
                format!("{key}.url"),
                "a user part is never sent as credentials: remove it and give them as a header \
                 (header_files = { authorization = \"…\" })",
            ));
        }
        let has_tls_files = self.ca_file.is_some() || self.cert_file.is_some();
        let tls = tls_files(key, self.ca_file, self.cert_file, self.key_file)?;
        if url.starts_with("http://") && has_tls_files {
            return Err(invalid(format!("{key}.ca_file"), "TLS files need an https:// url"));
        }
        let credential = plain_credential(key, self.headers.as_ref(), &self.header_files, &self.header_env);
        if let (true, Some(credential)) = (url.starts_with("http://"), credential) {
            PlainCredential { key: credential, transport: "http://", instead: "an https:// url" }
                .check(self.allow_insecure.unwrap_or(false), warnings)?;
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

/// The key of the first credential the sink would send: a header from a file or the
/// environment, or an `Authorization` / `Proxy-Authorization` header.
fn plain_credential(
    key: &str,
    headers: Option<&BTreeMap<String, String>>,
    header_files: &Option<BTreeMap<String, PathBuf>>,
    header_env: &Option<BTreeMap<String, String>>,
) -> Option<String> {
    if let Some(header) = header_files.iter().flatten().map(|(header, _)| header).next() {
        return Some(format!("{key}.header_files.{header}"));
    }
    if let Some(header) = header_env.iter().flatten().map(|(header, _)| header).next() {
        return Some(format!("{key}.header_env.{header}"));
    }
    let is_credential = |header: &&String| {
        header.eq_ignore_ascii_case("authorization") || header.eq_ignore_ascii_case("proxy-authorization")
    };
    headers
        .into_iter()
        .flatten()
        .map(|(header, _)| header)
        .find(is_credential)
        .map(|header| format!("{key}.headers.{header}"))
}
