//! Helpers that more than one of eddy's crates needs (rust-analyzer's `stdx`): a secret that
//! never prints, broker URL parsing, TLS files, backoff with jitter, the wall clock, and the
//! key-path error of configuration validation. A leaf: it depends on none of eddy's crates.
#![deny(missing_docs)]

mod config;

pub use crate::config::{invalid, secret_from_env, secret_from_file, KeyError};
