//! TLS client settings shared by the MQTT and HTTP uplinks: which PEM files to use (a CA file or
//! the system's roots, an optional client certificate), read by `eddy_common` into a rustls
//! configuration with the ring provider, failures in the sinks' words.

use std::fmt;
use std::path::PathBuf;

use eddy_common::{tls_client_config, PemFile, TlsError};
use rustls::ClientConfig;

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
    let client_auth = match (&files.cert_file, &files.key_file) {
        (Some(cert_path), Some(key_path)) => Some((cert_path.as_path(), key_path.as_path())),
        (None, None) => None,
        (Some(path), None) | (None, Some(path)) => {
            return Err(SinkError::Tls {
                path: path.clone(),
                reason: "cert_file and key_file go together".to_owned(),
            })
        }
    };
    tls_client_config(files.ca_file.as_deref(), client_auth, alpn).map_err(sink_error)
}

/// The error of the TLS set-up in this crate's words: `Tls` naming the file and the reason.
fn sink_error(error: TlsError) -> SinkError {
    let (path, reason) = match error {
        TlsError::Pem { path, source, .. } => (path, source.to_string()),
        TlsError::NoCertificate { file: PemFile::CaCertificate, path } => {
            (path, "no certificate in the file".to_owned())
        }
        // The uplinks used to hand an empty chain to rustls, and this is what rustls said.
        TlsError::NoCertificate { path, .. } => (path, rustls::Error::NoCertificatesPresented.to_string()),
        TlsError::CaRefused { path, source }
        | TlsError::ClientAuth { cert_path: path, source }
        | TlsError::ServerCertificate { cert_path: path, source } => (path, source.to_string()),
        // Not reached: a client configuration has no client verifier.
        TlsError::ClientVerifier { path, source } => (path, source.to_string()),
        TlsError::NoSystemRoots => {
            (PathBuf::from("/etc/ssl/certs"), "no system CA certificates found; set ca_file".to_owned())
        }
        TlsError::Versions(source) => (PathBuf::from("-"), source.to_string()),
    };
    SinkError::Tls { path, reason }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::tls::{client_config, TlsFiles};

    fn check(files: &TlsFiles, expected: &str) {
        let error = client_config(files, &[]).expect_err("broken TLS files");
        assert_eq!(error.to_string(), expected);
    }

    #[test]
    fn tls_file_errors_keep_the_uplinks_words() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let ca_only = TlsFiles { ca_file: Some(empty.clone()), ..TlsFiles::default() };
        check(&ca_only, &format!("TLS setting from {}: no certificate in the file", empty.display()));
        let cert_only = TlsFiles { cert_file: Some(empty.clone()), ..TlsFiles::default() };
        check(
            &cert_only,
            &format!("TLS setting from {}: cert_file and key_file go together", empty.display()),
        );
        let missing = Path::new("/nonexistent/ca.pem");
        let error = client_config(&TlsFiles { ca_file: Some(missing.into()), ..TlsFiles::default() }, &[])
            .expect_err("no such file");
        assert!(error.to_string().starts_with("TLS setting from /nonexistent/ca.pem: "), "{error}");
    }
}
