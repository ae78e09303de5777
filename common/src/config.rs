//! The key-path error of configuration validation, and the readers of secrets named by a
//! configuration key (a file or an environment variable).

use std::path::Path;

/// A configuration value that is not valid, naming its key path (`sources[1].max_sessions`).
///
/// Each component validates its own section into its typed settings and reports with this;
/// the daemon turns it into its configuration error (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyError {
    /// The full key path, e.g. `sinks[0].url` or `storage.policy`.
    pub key: String,
    /// What is wrong, in lower case without a final period.
    pub message: String,
}

/// A [`KeyError`] for `key`.
pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> KeyError {
    KeyError { key: key.into(), message: message.into() }
}

/// Reads the secret in the file `path`, named by `key`. One trailing line end (`\n` or
/// `\r\n`) is removed: it is an artefact of `echo secret > file`, never part of the secret.
///
/// The value is returned as a plain string: wrap it in the caller's secret type at once.
pub fn secret_from_file(key: &str, path: &Path) -> Result<String, KeyError> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|error| invalid(key, format!("cannot read {}: {error}", path.display())))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// Reads the secret in the environment variable `variable`, named by `key`, as it is.
///
/// The value is returned as a plain string: wrap it in the caller's secret type at once.
pub fn secret_from_env(key: &str, variable: &str) -> Result<String, KeyError> {
    std::env::var(variable)
        .map_err(|_| invalid(key, format!("the environment variable `{variable}` is not set")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_error_names_its_key_first() {
        assert_eq!(invalid("sinks[0].url", "is required").to_string(), "sinks[0].url: is required");
    }

    #[test]
    fn a_secret_file_loses_one_line_end_only() {
        let dir = std::env::temp_dir().join(format!("eddy-common-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (written, read) in
            [("s3cret\n", "s3cret"), ("s3cret\r\n", "s3cret"), ("s3cret", "s3cret"), ("a\n\n", "a\n")]
        {
            let path = dir.join("pw");
            std::fs::write(&path, written).expect("write");
            assert_eq!(secret_from_file("k", &path).as_deref(), Ok(read));
        }
        let error = secret_from_file("sources[0].password_file", &dir.join("missing")).expect_err("missing");
        assert_eq!(error.key, "sources[0].password_file");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn an_unset_variable_names_its_key() {
        let error =
            secret_from_env("sinks[0].password_env", "EDDY_TEST_SURELY_UNSET_VARIABLE").expect_err("unset");
        assert_eq!(error.key, "sinks[0].password_env");
    }
}
