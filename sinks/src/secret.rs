//! A secret string (password, SAS token, `Authorization` value) that never shows in logs.

use std::fmt;

/// A secret read from a file or the environment. `Debug` and `Display` print `<redacted>`, so
/// a configuration dump or an error message cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`; trailing newlines (as `echo` leaves in a file) are removed.
    pub fn new(value: impl Into<String>) -> Secret {
        let mut value = value.into();
        while value.ends_with('\n') || value.ends_with('\r') {
            value.pop();
        }
        Secret(value)
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let secret = Secret::new("SharedAccessSignature sr=x&sig=y\n");
        assert_eq!(secret.expose(), "SharedAccessSignature sr=x&sig=y");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
    }
}
