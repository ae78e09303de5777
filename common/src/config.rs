//! The key-path error of configuration validation, the bounds every duration setting is
//! checked against, and the readers of secrets named by a configuration key (a file or an
//! environment variable).

use std::path::Path;
use std::time::Duration;

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

/// One day: the upper bound of every timeout, interval and backoff setting unless its key
/// documents another. A deadline is `Instant::now() + setting`, which panics past what the
/// clock can hold (`Instant + 100000000y`); a day is long past any useful timeout and far
/// within every such limit.
pub const DAY: Duration = Duration::from_secs(86_400);

/// `value` of `key` when it lies within `min..=max`, else an error naming the key and the
/// bounds (never the value, which the operator wrote and can read in the file). The one check
/// every duration setting goes through, so that no duration a file holds reaches a panic
/// (`Instant + huge`, a millisecond count that does not fit, a division by zero).
pub fn duration_within(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, KeyError> {
    if (min..=max).contains(&value) {
        return Ok(value);
    }
    let message = if min.is_zero() {
        format!("must be at most {}", show(max))
    } else {
        format!("must be between {} and {}", show(min), show(max))
    };
    Err(invalid(key, message))
}

/// A bound as an operator writes it: `100ms`, `30s`, `1day`.
fn show(bound: Duration) -> String {
    let secs = bound.as_secs();
    if bound.subsec_nanos() != 0 {
        format!("{}ms", bound.as_millis())
    } else if secs != 0 && secs % 86_400 == 0 {
        format!("{}day{}", secs / 86_400, if secs == 86_400 { "" } else { "s" })
    } else {
        format!("{secs}s")
    }
}

/// Reads the secret in the file `path`, named by `key`. One trailing line end (`\n` or
/// `\r\n`) is removed: it is an artefact of `echo secret > file`, never part of the secret.
/// A file that holds nothing but white space is refused: it is a half-written token file (a
/// `> file` that has not been filled yet), and an empty credential would be sent as such.
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
    if text.trim().is_empty() {
        return Err(invalid(key, format!("{} holds no secret (it is empty)", path.display())));
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

/// The password of a source or sink at `key` (`sinks[0]`): read from `password_file` or from
/// the variable `password_env` — one of them, not both (an error naming `key.password_file`)
/// — or `None` when neither is given.
///
/// The value is returned as a plain string: wrap it in the caller's secret type at once.
pub fn password_from(
    key: &str,
    password_file: Option<&Path>,
    password_env: Option<&str>,
) -> Result<Option<String>, KeyError> {
    match (password_file, password_env) {
        (Some(_), Some(_)) => {
            Err(invalid(format!("{key}.password_file"), "give password_file or password_env, not both"))
        }
        (Some(path), None) => secret_from_file(&format!("{key}.password_file"), path).map(Some),
        (None, Some(variable)) => secret_from_env(&format!("{key}.password_env"), variable).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_comes_from_one_place_named_by_its_key() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"s3cret\n").unwrap();
        assert_eq!(password_from("sinks[0]", Some(file.path()), None).unwrap().as_deref(), Some("s3cret"));
        assert_eq!(password_from("sinks[0]", None, None).unwrap(), None);
        let both = password_from("sinks[0]", Some(file.path()), Some("HOME")).unwrap_err().to_string();
        assert!(both.starts_with("sinks[0].password_file: "), "{both}");
        let unset = password_from("sources[1]", None, Some("EDDY_TEST_SURELY_UNSET_VARIABLE")).unwrap_err();
        assert!(unset.to_string().starts_with("sources[1].password_env: "), "{unset}");
    }

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
        for empty in ["", "\n", "  \r\n", "\t\n\n"] {
            let path = dir.join("pw");
            std::fs::write(&path, empty).expect("write");
            let error = secret_from_file("sinks[0].token_file", &path).expect_err("an empty secret");
            assert_eq!(error.key, "sinks[0].token_file");
            assert!(error.message.contains("holds no secret"), "{error}");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_duration_out_of_bounds_names_its_key_and_the_bounds() {
        let (min, max) = (Duration::from_millis(100), DAY);
        assert_eq!(duration_within("k", Duration::from_secs(1), min, max), Ok(Duration::from_secs(1)));
        assert_eq!(duration_within("k", DAY, min, max), Ok(DAY));
        let error = duration_within("sinks[0].ack_timeout", Duration::MAX, min, max).expect_err("huge");
        assert_eq!(error.to_string(), "sinks[0].ack_timeout: must be between 100ms and 1day");
        let error = duration_within("k", Duration::ZERO, min, max).expect_err("zero");
        assert_eq!(error.message, "must be between 100ms and 1day");
        let error = duration_within("k", Duration::from_secs(61), Duration::ZERO, Duration::from_secs(60))
            .expect_err("long");
        assert_eq!(error.message, "must be at most 60s");
        assert_eq!(show(Duration::from_secs(7 * 86_400)), "7days");
    }

    #[test]
    fn an_unset_variable_names_its_key() {
        let error =
            secret_from_env("sinks[0].password_env", "EDDY_TEST_SURELY_UNSET_VARIABLE").expect_err("unset");
        assert_eq!(error.key, "sinks[0].password_env");
    }
}
