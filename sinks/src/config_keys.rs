//! Validation steps the uplinks' configurations share: their TLS file keys and their
//! timeouts.

use std::path::PathBuf;
use std::time::Duration;

use eddy_common::{duration_within, invalid, KeyError, DAY};

use crate::tls::TlsFiles;

/// `ca_file`, `cert_file` and `key_file` of the sink at `key`: each must be a readable file,
/// and a certificate goes with its key.
pub(crate) fn tls_files(
    key: &str,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
) -> Result<TlsFiles, KeyError> {
    for (name, path) in [("ca_file", &ca_file), ("cert_file", &cert_file), ("key_file", &key_file)] {
        if let Some(path) = path {
            if !path.is_file() {
                return Err(invalid(
                    format!("{key}.{name}"),
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
    }
    if cert_file.is_some() != key_file.is_some() {
        return Err(invalid(format!("{key}.cert_file"), "cert_file and key_file go together"));
    }
    Ok(TlsFiles { ca_file, cert_file, key_file })
}

/// The timeout `name` of the sink at `key`, `default` when not given; from 100 ms to a day
/// (each is a deadline `Instant::now() + timeout`).
pub(crate) fn timeout(
    key: &str,
    name: &str,
    value: Option<Duration>,
    default: Duration,
) -> Result<Duration, KeyError> {
    duration_within(&format!("{key}.{name}"), value.unwrap_or(default), Duration::from_millis(100), DAY)
}

/// `keep_alive` of the MQTT sink at `key`, `default` when not given: from 1 s (rumqttc
/// asserts whole seconds) to 65535 s (a 16-bit count of seconds on the wire).
pub(crate) fn keep_alive(
    key: &str,
    value: Option<Duration>,
    default: Duration,
) -> Result<Duration, KeyError> {
    let max = Duration::from_secs(u64::from(u16::MAX));
    duration_within(&format!("{key}.keep_alive"), value.unwrap_or(default), Duration::from_secs(1), max)
}
