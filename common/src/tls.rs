//! TLS configurations from PEM files, rustls with the ring provider: clients (the server
//! checked against a CA file or the system's roots, an optional client certificate), used by
//! the MQTT sources and the MQTT and HTTP uplinks; and servers (a certificate and key, client
//! certificates optionally required and checked against a CA file), used by the TCP source.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Which PEM file of a TLS client a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// The CA certificate(s) the server's certificate must chain to.
    CaCertificate,
    /// The client certificate (chain).
    ClientCertificate,
    /// The private key of the client certificate.
    ClientKey,
    /// The server certificate (chain) a TLS server presents.
    ServerCertificate,
    /// The private key of the server certificate.
    ServerKey,
}

impl PemFile {
    /// `CA certificate`, `client certificate`, `client key`, `server certificate` or
    /// `server key`.
    pub fn describe(self) -> &'static str {
        match self {
            PemFile::CaCertificate => "CA certificate",
            PemFile::ClientCertificate => "client certificate",
            PemFile::ClientKey => "client key",
            PemFile::ServerCertificate => "server certificate",
            PemFile::ServerKey => "server key",
        }
    }
}

/// Why [`tls_client_config`] failed. Each crate maps it into its own error, with its own words.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be opened or holds a broken PEM section.
    #[error("cannot read {} from {}", file.describe(), path.display())]
    Pem {
        /// Which file.
        file: PemFile,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: pem::Error,
    },
    /// A certificate file holds no PEM certificate.
    #[error("no PEM certificate in the {} file {}", file.describe(), path.display())]
    NoCertificate {
        /// Which file: the CA or the client certificate.
        file: PemFile,
        /// The file.
        path: PathBuf,
    },
    /// A certificate of the CA file cannot serve as a trust anchor.
    #[error("a CA certificate in {} is refused", path.display())]
    CaRefused {
        /// The CA file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// No CA file is configured and the system has no CA certificates.
    #[error("no system CA certificates found")]
    NoSystemRoots,
    /// rustls has no safe protocol version with the ring provider (a build problem).
    #[error("no TLS protocol version available")]
    Versions(#[source] rustls::Error),
    /// rustls refused the client certificate and key (a key that does not match, ...).
    #[error("client certificate {} and its key are refused", cert_path.display())]
    ClientAuth {
        /// The client certificate file.
        cert_path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the server certificate and key (a key that does not match, ...).
    #[error("server certificate {} and its key are refused", cert_path.display())]
    ServerCertificate {
        /// The server certificate file.
        cert_path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The client CA file cannot make a client certificate verifier.
    #[error("the client CA certificates in {} are refused", path.display())]
    ClientVerifier {
        /// The client CA file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) trusting the certificates of
/// `ca_file` (`None`: the system's roots), presenting `client_auth` (certificate file, key file)
/// if given, and offering `alpn` (e.g. `http/1.1`; empty for MQTT).
///
/// The files are read here, so callers do it once at start-up rather than at every connection.
/// The crypto provider is passed explicitly: no process-wide default is installed.
pub fn tls_client_config(
    ca_file: Option<&Path>,
    client_auth: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let roots = match ca_file {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?
        .with_root_certificates(roots);
    let mut config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let chain = read_certs(PemFile::ClientCertificate, cert_path)?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Pem {
                file: PemFile::ClientKey,
                path: key_path.to_path_buf(),
                source,
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsError::ClientAuth { cert_path: cert_path.to_path_buf(), source })?
        }
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3) presenting the certificate
/// chain of `cert_file` with the key of `key_file`. With `client_ca_file`, every client must
/// present a certificate that chains to one of its CAs (the handshake fails otherwise);
/// without it, no client certificate is asked for.
///
/// The files are read here, once at start-up.
pub fn tls_server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?;
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = roots_from_file(path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier { path: path.to_path_buf(), source })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = read_certs(PemFile::ServerCertificate, cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsError::Pem {
        file: PemFile::ServerKey,
        path: key_file.to_path_buf(),
        source,
    })?;
    builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::ServerCertificate { cert_path: cert_file.to_path_buf(), source })
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(PemFile::CaCertificate, path)? {
        roots.add(cert).map_err(|source| TlsError::CaRefused { path: path.to_path_buf(), source })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unreadable or unparsable system certificates are passed over, as long as some remain.
    let found = rustls_native_certs::load_native_certs();
    let (n_added, _n_ignored) = roots.add_parsable_certificates(found.certs);
    if n_added == 0 {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

/// Every certificate of a PEM file; at least one.
fn read_certs(file: PemFile, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem { file, path: path.to_path_buf(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { file, path: path.to_path_buf() });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::tls::{tls_client_config, PemFile, TlsError};

    fn check(ca_file: &Path, expected: &str) {
        let error = tls_client_config(Some(ca_file), None, &[]).expect_err("a broken CA file");
        assert_eq!(error.to_string(), expected);
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        check(&missing, &format!("cannot read CA certificate from {}", missing.display()));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        check(&empty, &format!("no PEM certificate in the CA certificate file {}", empty.display()));
        let error = tls_client_config(Some(&empty), None, &[]).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { file: PemFile::CaCertificate, .. }), "{error:?}");
    }

    #[test]
    fn a_broken_pem_section_is_a_pem_error() {
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
            .unwrap();
        let error = tls_client_config(Some(&broken), None, &[]).unwrap_err();
        assert!(matches!(error, TlsError::Pem { file: PemFile::CaCertificate, .. }), "{error:?}");
    }
}
