//! TLS client settings shared by the MQTT and HTTP uplinks: rustls with the ring provider, the
//! server checked against a CA file (or the system's roots), an optional client certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::error::SinkError;

/// Certificates an uplink uses for TLS. Plain data; the files are read by [`client_config`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA certificates the hub's certificate must chain to (e.g. AWS's
    /// `AmazonRootCA1.pem`); `None`: the system's roots (`/etc/ssl/certs`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for hubs that authenticate devices by certificate (AWS
    /// IoT Core, or Azure IoT Hub with X.509 devices).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TlsFiles")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) from `files`. `alpn` is set
/// as given (e.g. `http/1.1`).
pub(crate) fn client_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ClientConfig, SinkError> {
    let mut roots = RootCertStore::empty();
    match &files.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|error| tls_file(path, error))? {
                let cert = cert.map_err(|error| tls_file(path, error))?;
                roots.add(cert).map_err(|error| tls_error(path, error))?;
            }
            if roots.is_empty() {
                return Err(SinkError::Tls {
                    path: path.clone(),
                    reason: "no certificate in the file".to_owned(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(SinkError::Tls {
                    path: PathBuf::from("/etc/ssl/certs"),
                    reason: "no system CA certificates found; set ca_file".to_owned(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| tls_error(Path::new("-"), error))?
        .with_root_certificates(roots);
    let mut config = match (&files.cert_file, &files.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = CertificateDer::pem_file_iter(cert_path)
                .map_err(|error| tls_file(cert_path, error))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| tls_file(cert_path, error))?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|error| tls_file(key_path, error))?;
            builder.with_client_auth_cert(chain, key).map_err(|error| tls_error(cert_path, error))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(path), None) | (None, Some(path)) => {
            return Err(SinkError::Tls {
                path: path.clone(),
                reason: "cert_file and key_file go together".to_owned(),
            })
        }
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

fn tls_file(path: &Path, error: rustls::pki_types::pem::Error) -> SinkError {
    SinkError::Tls { path: path.to_path_buf(), reason: error.to_string() }
}

fn tls_error(path: &Path, error: impl fmt::Display) -> SinkError {
    SinkError::Tls { path: path.to_path_buf(), reason: error.to_string() }
}
