//! A secret string (password, SAS token, `Authorization` value) that never shows in logs.

use std::fmt;

/// A secret read from a file, the environment or the configuration. `Debug` and `Display`
/// print `<redacted>`, so a configuration dump or an error message cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`; trailing newlines (`\n`, `\r`, as `echo` leaves in a file) are removed.
    pub fn new(value: impl Into<String>) -> Secret {
        let mut value = value.into();
        while value.ends_with('\n') || value.ends_with('\r') {
            value.pop();
        }
        Secret(value)
    }

    /// Wraps `value` exactly as given, trailing newlines included, for callers that decide
    /// themselves what to strip (the MQTT source's password).
    pub fn verbatim(value: impl Into<String>) -> Secret {
        Secret(value.into())
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
    use crate::secret::Secret;

    #[test]
    fn a_secret_never_prints_its_value() {
        let secret = Secret::new("SharedAccessSignature sr=x&sig=y\n");
        assert_eq!(secret.expose(), "SharedAccessSignature sr=x&sig=y");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
    }

    #[test]
    fn new_drops_every_trailing_newline_and_verbatim_none() {
        assert_eq!(Secret::new("hunter2\r\n\n").expose(), "hunter2");
        assert_eq!(Secret::new("a\nb\r").expose(), "a\nb");
        assert_eq!(Secret::verbatim("hunter2\r\n").expose(), "hunter2\r\n");
        assert_eq!(format!("{:?}", Secret::verbatim("hunter2")), "<redacted>");
    }
}
