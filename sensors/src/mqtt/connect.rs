//! Turns MQTT settings into rumqttc options: broker address, session, credentials and a
//! rustls client configuration (ring provider) from PEM files. Shared by the MQTT source and
//! `eddy simulate --mqtt`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

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
        let config = tls_client_config(tls)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(config))));
    }
    Ok(options)
}

/// A rustls client trusting the CA file, with the client certificate if one is configured.
/// The crypto provider is ring, passed explicitly (no process-wide default is installed).
fn tls_client_config(tls: &MqttTls) -> Result<ClientConfig, MqttSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA certificate", &tls.ca_file)? {
        roots.add(cert).map_err(|error| pem_error("CA certificate", &tls.ca_file, error.to_string()))?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let certs = read_certs("client certificate", cert_path)?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|error| pem_error("client key", key_path, error.to_string()))?;
            builder.with_client_auth_cert(certs, key)?
        }
    };
    Ok(config)
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| pem_error(what, path, error.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(what, path, "no PEM certificate in the file".to_owned()));
    }
    Ok(certs)
}

fn pem_error(what: &'static str, path: &Path, message: String) -> MqttSetupError {
    MqttSetupError::Pem { what, path: path.to_path_buf(), message }
}
