//! The `kind = "file"` sink keys as written, and their validation into [`FileConfig`].

use std::path::PathBuf;

use eddy_common::{invalid, KeyError};
use serde::Deserialize;

/// Default size at which the live file is rotated: 16 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Default number of files kept, the live one included: with the default size, at most
/// 64 MiB of results on disk.
pub const DEFAULT_MAX_FILES: u32 = 4;

/// The smallest `max_file_bytes` accepted (other than 0): one page.
const MIN_MAX_FILE_BYTES: u64 = 4096;

/// Most files a sink may keep.
const MAX_MAX_FILES: u32 = 1000;

/// Where and how a file sink writes. Plain data, validated from [`RawFileSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// The live file the JSON lines are appended to.
    pub path: PathBuf,
    /// The live file is rotated before a delivery would take it past this many bytes (`None`:
    /// never rotated by eddy).
    pub max_file_bytes: Option<u64>,
    /// Files kept in all, the live one included: rotated files are `PATH.1` (the newest) to
    /// `PATH.{max_files - 1}`; the oldest is deleted. At least 1 (then a rotation deletes the
    /// live file's records and starts it afresh).
    pub max_files: u32,
}

impl FileConfig {
    /// `path` with the default rotation ([`DEFAULT_MAX_FILE_BYTES`], [`DEFAULT_MAX_FILES`]).
    pub fn new(path: impl Into<PathBuf>) -> FileConfig {
        FileConfig {
            path: path.into(),
            max_file_bytes: Some(DEFAULT_MAX_FILE_BYTES),
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

/// One `[[sinks]]` entry with `kind = "file"`, as written (the daemon takes `kind`, `name`,
/// `records` and the delivery keys every sink has).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileSink {
    /// The file the JSON lines are appended to (required).
    pub path: Option<PathBuf>,
    /// Rotate the file before it grows past this many bytes (default 16 MiB; 0: never).
    pub max_file_bytes: Option<u64>,
    /// Files kept, the live one included (default 4).
    pub max_files: Option<u32>,
}

impl RawFileSink {
    /// Validates the entry at `key` (`sinks[N]`).
    pub fn validate(self, key: &str) -> Result<FileConfig, KeyError> {
        let path =
            self.path.ok_or_else(|| invalid(format!("{key}.path"), "is required for kind = \"file\""))?;
        if path.as_os_str().is_empty() {
            return Err(invalid(format!("{key}.path"), "must not be empty"));
        }
        let max_file_bytes = match self.max_file_bytes {
            None => Some(DEFAULT_MAX_FILE_BYTES),
            Some(0) => None,
            Some(bytes) if bytes >= MIN_MAX_FILE_BYTES => Some(bytes),
            Some(_) => {
                return Err(invalid(
                    format!("{key}.max_file_bytes"),
                    format!("must be 0 (never rotate) or at least {MIN_MAX_FILE_BYTES} bytes"),
                ))
            }
        };
        let max_files = self.max_files.unwrap_or(DEFAULT_MAX_FILES);
        if !(1..=MAX_MAX_FILES).contains(&max_files) {
            return Err(invalid(
                format!("{key}.max_files"),
                format!("must be between 1 and {MAX_MAX_FILES}"),
            ));
        }
        if max_file_bytes.is_none() && self.max_files.is_some() {
            return Err(invalid(
                format!("{key}.max_files"),
                "applies only with rotation (max_file_bytes > 0)",
            ));
        }
        Ok(FileConfig { path, max_file_bytes, max_files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: RawFileSink) -> Result<FileConfig, String> {
        raw.validate("sinks[0]").map_err(|error| error.to_string())
    }

    #[test]
    fn rotation_has_defaults_and_can_be_turned_off() {
        let path = Some(PathBuf::from("out.jsonl"));
        assert_eq!(
            check(RawFileSink { path: path.clone(), ..RawFileSink::default() }),
            Ok(FileConfig::new("out.jsonl"))
        );
        let off = check(RawFileSink { path: path.clone(), max_file_bytes: Some(0), max_files: None });
        assert_eq!(
            off,
            Ok(FileConfig { path: "out.jsonl".into(), max_file_bytes: None, max_files: DEFAULT_MAX_FILES })
        );
        let set = check(RawFileSink { path, max_file_bytes: Some(1 << 20), max_files: Some(2) });
        assert_eq!(
            set,
            Ok(FileConfig { path: "out.jsonl".into(), max_file_bytes: Some(1 << 20), max_files: 2 })
        );
    }

    #[test]
    fn errors_name_the_key() {
        let path = Some(PathBuf::from("out.jsonl"));
        let error = check(RawFileSink { path: path.clone(), max_file_bytes: Some(100), max_files: None });
        assert!(error.as_ref().is_err_and(|error| error.contains("sinks[0].max_file_bytes")), "{error:?}");
        let error = check(RawFileSink { path: path.clone(), max_file_bytes: None, max_files: Some(0) });
        assert!(error.as_ref().is_err_and(|error| error.contains("sinks[0].max_files")), "{error:?}");
        let error = check(RawFileSink { path, max_file_bytes: Some(0), max_files: Some(3) });
        assert!(error.as_ref().is_err_and(|error| error.contains("sinks[0].max_files")), "{error:?}");
        let error = check(RawFileSink::default());
        assert!(error.as_ref().is_err_and(|error| error.contains("sinks[0].path")), "{error:?}");
    }
}
