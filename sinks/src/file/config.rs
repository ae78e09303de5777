//! The `kind = "file"` sink keys as written, and their validation.

use std::path::PathBuf;

use eddy_common::{invalid, KeyError};
use serde::Deserialize;

/// One `[[sinks]]` entry with `kind = "file"`, as written (the daemon takes `kind`, `name`,
/// `records` and the delivery keys every sink has).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileSink {
    /// The file the JSON lines are appended to (required).
    pub path: Option<PathBuf>,
}

impl RawFileSink {
    /// Validates the entry at `key` (`sinks[N]`) into the file's path.
    pub fn validate(self, key: &str) -> Result<PathBuf, KeyError> {
        let path =
            self.path.ok_or_else(|| invalid(format!("{key}.path"), "is required for kind = \"file\""))?;
        if path.as_os_str().is_empty() {
            return Err(invalid(format!("{key}.path"), "must not be empty"));
        }
        Ok(path)
    }
}
