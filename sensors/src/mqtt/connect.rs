//! Turns MQTT settings into rumqttc options: broker address, session, credentials and a
//! rustls client configuration (ring provider) from PEM files. Shared by the MQTT source and
//! `eddy simulate --mqtt`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use eddy_common::{tls_client_config, TlsError};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use crate::mqtt::config::{MqttBroker, MqttTls, Secret};

/// Why the MQTT client could not be set up (before any connection attempt).
#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    /// `mqtts://` without a CA file.
    #[error("{broker} uses TLS: a CA file (ca_file) is required")]
    MissingCa {
        /// The broker.
        broker: String,
    },
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot read {what} from {}: {message}", path.display())]
    Pem {
        /// Which file: CA certificate, client certificate, client key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration (a key that does not match its certificate, ...).
    #[error("invalid TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client id is empty while a persistent session is asked for.
    #[error("a persistent session (clean_session = false) needs a client id")]
    EmptyClientId,
}

/// The connection part of the settings.
#[derive(Debug, Clone)]
pub(crate) struct ConnectSettings<'a> {
    pub(crate) broker: &'a MqttBroker,
    pub(crate) client_id: &'a str,
    pub(crate) clean_session: bool,
    pub(crate) keep_alive: Duration,
    pub(crate) username: Option<&'a str>,
    pub(crate) password: Option<&'a Secret>,
    pub(crate) tls: Option<&'a MqttTls>,
    pub(crate) max_packet_bytes: usize,
}

/// rumqttc options for `settings`. TLS files are read here, so a bad file is an error at
/// start-up rather than at every reconnection.
pub(crate) fn mqtt_options(settings: &ConnectSettings<'_>) -> Result<MqttOptions, MqttSetupError> {
    if settings.client_id.is_empty() && !settings.clean_session {
        // rumqttc panics on this combination.
        return Err(MqttSetupError::EmptyClientId);
    }
    let mut options =
        MqttOptions::new(settings.client_id, settings.broker.host.clone(), settings.broker.port);
    options.set_clean_session(settings.clean_session);
    options.set_keep_alive(settings.keep_alive.max(Duration::from_secs(1)));
    options.set_max_packet_size(settings.max_packet_bytes, settings.max_packet_bytes);
    if let Some(username) = settings.username {
        let password = settings.password.map_or("", Secret::expose);
        options.set_credentials(username, password);
    }
    if settings.broker.tls {
        let tls =
            settings.tls.ok_or_else(|| MqttSetupError::MissingCa { broker: settings.broker.to_string() })?;
        let client_auth = tls.client_auth.as_ref().map(|(cert, key)| (cert.as_path(), key.as_path()));
        let config = tls_client_config(Some(&tls.ca_file), client_auth, &[])
            .map_err(|error| setup_error(error, settings.broker))?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config))));
    }
    Ok(options)
}

/// The error of the TLS set-up in this crate's words: a file's problem is a `Pem` error naming
/// the file, a refusal by rustls a `Tls` error.
fn setup_error(error: TlsError, broker: &MqttBroker) -> MqttSetupError {
    match error {
        TlsError::Pem { file, path, source } => {
            MqttSetupError::Pem { what: file.describe(), path, message: source.to_string() }
        }
        TlsError::NoCertificate { file, path } => MqttSetupError::Pem {
            what: file.describe(),
            path,
            message: "no PEM certificate in the file".to_owned(),
        },
        TlsError::CaRefused { path, source } => {
            MqttSetupError::Pem { what: "CA certificate", path, message: source.to_string() }
        }
        TlsError::Versions(source)
        | TlsError::ClientAuth { source, .. }
        | TlsError::ServerCertificate { source, .. } => MqttSetupError::Tls(source),
        // Not reached: a client configuration has no client verifier.
        TlsError::ClientVerifier { path, source } => {
            MqttSetupError::Pem { what: "CA certificate", path, message: source.to_string() }
        }
        // Not reached: the source always names a CA file.
        TlsError::NoSystemRoots => MqttSetupError::MissingCa { broker: broker.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::mqtt::config::{MqttBroker, MqttTls};
    use crate::mqtt::connect::{mqtt_options, ConnectSettings};

    #[test]
    fn tls_file_errors_name_the_file_in_the_sources_words() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "").unwrap();
        let broker = MqttBroker::parse_url("mqtts://localhost").unwrap();
        let error_of = |tls: &MqttTls| {
            let settings = ConnectSettings {
                broker: &broker,
                client_id: "gw",
                clean_session: false,
                keep_alive: Duration::from_secs(30),
                username: None,
                password: None,
                tls: Some(tls),
                max_packet_bytes: 1024,
            };
            mqtt_options(&settings).expect_err("broken TLS files").to_string()
        };
        assert_eq!(
            error_of(&MqttTls { ca_file: empty.clone(), client_auth: None }),
            format!("cannot read CA certificate from {}: no PEM certificate in the file", empty.display()),
        );
        let missing = PathBuf::from("/nonexistent/ca.pem");
        let client_auth = Some((empty.clone(), missing.clone()));
        assert!(error_of(&MqttTls { ca_file: missing, client_auth })
            .starts_with("cannot read CA certificate from /nonexistent/ca.pem: "),);
    }
}
