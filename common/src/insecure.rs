//! The rule for credentials over a plain-text transport: refused unless the source or sink
//! says `allow_insecure = true`, and then accepted with a warning naming it.

use crate::config::{invalid, KeyError};

/// A credential a source or sink would send (or take) without TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainCredential {
    /// The key holding the credential, in full (`sinks[0].password_file`).
    pub key: String,
    /// The plain transport, as the operator writes it (`mqtt://`, `http://`, "plain TCP").
    pub transport: &'static str,
    /// What to use instead (`an mqtts:// url`, `tls_cert_file and tls_key_file`).
    pub instead: &'static str,
}

impl PlainCredential {
    /// Refuses the credential unless `allow_insecure`; with it, adds one line to `warnings`.
    pub fn check(self, allow_insecure: bool, warnings: &mut Vec<String>) -> Result<(), KeyError> {
        let PlainCredential { key, transport, instead } = self;
        if allow_insecure {
            warnings.push(format!(
                "{key}: sent in plain text over {transport} (allow_insecure = true); use {instead}"
            ));
            Ok(())
        } else {
            Err(invalid(
                key,
                format!("would be sent in plain text over {transport}: use {instead} or set allow_insecure = true"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> PlainCredential {
        PlainCredential {
            key: "sinks[0].password_file".into(),
            transport: "mqtt://",
            instead: "an mqtts:// url",
        }
    }

    #[test]
    fn a_plain_credential_is_refused_naming_its_key() {
        let mut warnings = Vec::new();
        let error = credential().check(false, &mut warnings).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "sinks[0].password_file: would be sent in plain text over mqtt://: use an mqtts:// url or set \
             allow_insecure = true"
        );
        assert!(warnings.is_empty());
    }

    #[test]
    fn allow_insecure_accepts_it_with_one_warning() {
        let mut warnings = Vec::new();
        credential().check(true, &mut warnings).expect("allowed");
        assert_eq!(
            warnings,
            ["sinks[0].password_file: sent in plain text over mqtt:// (allow_insecure = true); use an mqtts:// url"]
        );
    }
}
