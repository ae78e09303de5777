//! Helpers that more than one of eddy's crates needs (rust-analyzer's `stdx`): a secret that
//! never prints, URLs and outside text as they may be logged, broker URL parsing, TLS files,
//! backoff with jitter, the wall clock, and the key-path error of configuration validation. A
//! leaf: it depends on none of eddy's crates.
#![deny(missing_docs)]

mod backoff;
mod broker_url;
mod clock;
mod config;
mod insecure;
mod redact;
mod secret;
mod tls;

pub use crate::backoff::Backoff;
pub use crate::broker_url::BrokerUrl;
pub use crate::clock::{
    boottime_ms, build_floor_ms, kernel_synchronized, wall_clock_ms, ClockTrust, GatewayClock,
};
pub use crate::config::{
    duration_within, invalid, password_from, secret_from_env, secret_from_file, KeyError, DAY,
};
pub use crate::insecure::PlainCredential;
pub use crate::redact::{redact_url, truncate_for_log, LOG_VALUE_CHARS};
pub use crate::secret::Secret;
pub use crate::tls::{tls_client_config, tls_server_config, PemFile, TlsError};
