//! Fuzz target: arbitrary text as a configuration file (`Config::from_toml_str`, no
//! environment): the loader returns a configuration or a `ConfigError`, never panics, and a
//! configuration it accepts is consistent (a source at least, names unique).
//!
//! Validation reads the files a configuration names (every such key ends in `_file`:
//! `token_file`, `password_file`, `tls_cert_file`, ...). So that a fuzzed `token_file =
//! "/dev/zero"` cannot make a run read for ever, a text is skipped when it names a `file` and
//! a path under `/dev`, `/proc` or `/sys`, or when it holds a `\u`, `\U` or `\x` escape
//! (which could spell either). Serial ports (`/dev/ttyUSB0`) are still fuzzed without a file.
#![no_main]

use std::collections::BTreeSet;

use eddy::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let names_a_file =
        text.contains("file") && ["/dev", "/proc", "/sys"].iter().any(|dir| text.contains(dir));
    if names_a_file || ["\\u", "\\U", "\\x"].iter().any(|escape| text.contains(escape)) {
        return;
    }
    match Config::from_toml_str(text) {
        Ok(config) => {
            assert!(!config.sources.is_empty(), "a configuration without sources was accepted");
            let names: BTreeSet<&str> = config.sources.iter().map(|source| source.name.as_str()).collect();
            assert_eq!(names.len(), config.sources.len(), "source names are unique");
            let names: BTreeSet<&str> = config.sinks.iter().map(|sink| sink.name.as_str()).collect();
            assert_eq!(names.len(), config.sinks.len(), "sink names are unique");
            assert!(!config.device_id.is_empty() && config.device_id.len() <= 64);
        }
        Err(ConfigError::Load(message) | ConfigError::Invalid { message, .. }) => {
            assert!(!message.is_empty(), "an error without a message");
        }
    }
});
