//! Errors of the sinks, each naming the output that failed.

use std::error::Error;
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

/// Why a sink could not be opened or could not write.
///
/// Only the constructors return it (`FileSink::open`, `MqttSink::new`, `HttpSink::new`); during
/// delivery the same errors become the reason of [`Delivery::Offline`](crate::Delivery::Offline).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The output file's parent directory does not exist and could not be created.
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The output file could not be opened for appending.
    #[error("cannot open output file {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The output file's metadata or last byte could not be read.
    #[error("cannot inspect output file {}", path.display())]
    Inspect {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing to the output file failed (for instance no space left on the device).
    #[error("cannot write output file {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// fsync of the output file or of its directory failed; the data may not be on disk.
    #[error("cannot sync {} to disk", path.display())]
    Sync {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Rotating the output file (deleting the oldest kept file, renaming the others) failed.
    #[error("cannot rotate output file {}", path.display())]
    Rotate {
        /// The file that could not be removed or renamed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A TLS certificate or key file is unreadable or invalid.
    #[error("TLS setting from {}: {reason}", path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An uplink's URL or header is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which setting.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Writing to the console failed (for instance stdout was closed).
    #[error("cannot write to the console")]
    ConsoleWrite {
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl SinkError {
    /// Whether the disk is full or failing (ENOSPC, EDQUOT, EIO): a condition to wait out,
    /// not a configuration mistake.
    pub(crate) fn is_disk_full_or_failing(&self) -> bool {
        const EIO: i32 = 5;
        let source = match self {
            SinkError::CreateDir { source, .. }
            | SinkError::Open { source, .. }
            | SinkError::Inspect { source, .. }
            | SinkError::Write { source, .. }
            | SinkError::Sync { source, .. }
            | SinkError::Rotate { source, .. }
            | SinkError::ConsoleWrite { source } => source,
            SinkError::Tls { .. } | SinkError::Invalid { .. } => return false,
        };
        matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
            || source.raw_os_error() == Some(EIO)
    }
}

/// Renders an error and its causes on one line, `outer: inner: innermost`, for an `Offline`
/// reason that the daemon logs as one field.
pub(crate) fn reason_of(error: &dyn Error) -> String {
    let mut reason = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Writing to a String cannot fail.
        let _ = write!(reason, ": {cause}");
        source = cause.source();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_the_path_and_the_cause() {
        let error = SinkError::Write {
            path: PathBuf::from("/var/lib/eddy/out.jsonl"),
            source: io::Error::new(io::ErrorKind::StorageFull, "disk full"),
        };
        assert_eq!(reason_of(&error), "cannot write output file /var/lib/eddy/out.jsonl: disk full");
    }
}
