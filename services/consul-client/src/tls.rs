//! The TLS client configuration for HTTPS agents, built from [`TlsConfig`] the way Consul's
//! Go client builds its `tls.Config` (`api.SetupTLSConfig`):
//! - trust the CA file, else the CA folder, else the system's roots;
//! - present the client certificate and key when both are given (one without the other is
//!   an error);
//! - verify the agent's certificate against the server name when one is given, else the
//!   address's host; or not at all when verification is off.
//!
//! rustls is configured directly (and handed to reqwest) because reqwest has no way to
//! verify against a name other than the URL's host.

use crate::client::Error;
use crate::config::{Setting, TlsConfig, settings};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// Builds the rustls client configuration `tls` describes.
pub(crate) fn client_config(tls: &TlsConfig) -> Result<ClientConfig, Error> {
    // One explicit provider (ring, the one reqwest's rustls build uses), so nothing depends
    // on a process-wide default being installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| internal(format!("TLS versions: {e}")))?;

    let verifier: Arc<dyn ServerCertVerifier> = if tls.verify {
        let roots = Arc::new(roots(tls)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| internal(format!("certificate verifier: {e}")))?;
        match &tls.server_name {
            Some(name) => Arc::new(FixedServerName {
                name: server_name(name)?,
                inner: webpki,
            }),
            None => webpki,
        }
    } else {
        Arc::new(NoVerification(provider))
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);

    match (&tls.client_cert, &tls.client_key) {
        (Some(cert_file), Some(key_file)) => {
            let certs = read_certificates(settings::CLIENT_CERT, cert_file)?;
            let bytes = read(settings::CLIENT_KEY, key_file)?;
            let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                config_error(
                    settings::CLIENT_KEY,
                    key_file,
                    format!("no PEM private key in the file: {e}"),
                )
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                config_error(
                    settings::CLIENT_KEY,
                    key_file,
                    format!("is not the key of the client certificate: {e}"),
                )
            })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert_file), None) => Err(config_error(
            settings::CLIENT_CERT,
            cert_file,
            format!(
                "a client certificate needs its key too ({} is not set)",
                settings::CLIENT_KEY
            ),
        )),
        (None, Some(key_file)) => Err(config_error(
            settings::CLIENT_KEY,
            key_file,
            format!(
                "a client key needs its certificate too ({} is not set)",
                settings::CLIENT_CERT
            ),
        )),
    }
}

/// The CA file, else every file in the CA folder (recursively, like go-rootcerts), else the
/// system's roots (Mozilla's bundled ones when the system has none).
fn roots(tls: &TlsConfig) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    if let Some(file) = &tls.ca_file {
        add_all(&mut store, settings::CA_FILE, file)?;
    } else if let Some(folder) = &tls.ca_path {
        let mut files = Vec::new();
        collect_files(folder, &mut files)
            .map_err(|e| config_error(settings::CA_PATH, folder, format!("cannot list: {e}")))?;
        if files.is_empty() {
            return Err(config_error(
                settings::CA_PATH,
                folder,
                "holds no CA certificate files".into(),
            ));
        }
        for file in files {
            add_all(&mut store, settings::CA_PATH, &file)?;
        }
    } else {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!(%error, "a system CA certificate could not be loaded");
        }
        store.add_parsable_certificates(native.certs);
        if store.is_empty() {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
    }
    Ok(store)
}

fn add_all(store: &mut RootCertStore, setting: Setting, file: &Path) -> Result<(), Error> {
    for certificate in read_certificates(setting, file)? {
        store.add(certificate).map_err(|e| {
            config_error(
                setting,
                file,
                format!("holds an unusable CA certificate: {e}"),
            )
        })?;
    }
    Ok(())
}

fn collect_files(folder: &Path, files: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(folder)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        // `metadata` follows symlinks (c_rehash folders are mostly links).
        let metadata = std::fs::metadata(&path)?;
        if metadata.is_dir() {
            collect_files(&path, files)?;
        } else if metadata.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

fn read(setting: Setting, file: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(file).map_err(|e| config_error(setting, file, format!("cannot read: {e}")))
}

fn read_certificates(setting: Setting, file: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read(setting, file)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(setting, file, format!("is not valid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(config_error(
            setting,
            file,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certificates)
}

/// `CONSUL_TLS_SERVER_NAME` may carry a port, which Consul ignores.
fn server_name(text: &str) -> Result<ServerName<'static>, Error> {
    let host = if text.parse::<std::net::IpAddr>().is_ok() {
        text
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => text,
        }
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|e| Error::Config {
        setting: settings::TLS_SERVER_NAME,
        value: text.to_string(),
        reason: format!("not a DNS name or IP address: {e}"),
    })
}

fn config_error(setting: Setting, file: &Path, reason: String) -> Error {
    Error::Config {
        setting,
        value: file.display().to_string(),
        reason,
    }
}

fn internal(reason: String) -> Error {
    Error::Config {
        setting: settings::HTTP_SSL,
        value: "true".into(),
        reason,
    }
}

/// Verifies the agent's certificate against a configured name instead of the URL's host
/// (what Go's `tls.Config.ServerName` does).
#[derive(Debug)]
struct FixedServerName {
    name: ServerName<'static>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for FixedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _url_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `CONSUL_HTTP_SSL_VERIFY=false`: any certificate is accepted (Go's
/// `InsecureSkipVerify`); the handshake signatures are still checked, so the connection
/// is at least encrypted to whoever holds the presented certificate's key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_drop_a_port_like_consul() {
        let name = |t: &str| server_name(t).unwrap().to_str().into_owned();
        assert_eq!(name("server.dc1.consul"), "server.dc1.consul");
        assert_eq!(name("server.dc1.consul:8501"), "server.dc1.consul");
        assert_eq!(name("127.0.0.1:8501"), "127.0.0.1");
        assert_eq!(name("[::1]:8501"), "::1");
        assert_eq!(name("::1"), "::1");
        let error = server_name("not a name!").unwrap_err().to_string();
        assert!(error.contains("CONSUL_TLS_SERVER_NAME"), "{error}");
    }

    #[test]
    fn missing_files_and_half_client_identities_name_their_variable() {
        let missing = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        };
        let error = client_config(&missing).unwrap_err().to_string();
        assert!(
            error.contains("CONSUL_CACERT (--consul-ca-file)"),
            "{error}"
        );
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");

        let half = TlsConfig {
            client_cert: Some("/nonexistent/client.pem".into()),
            verify: false,
            ..TlsConfig::default()
        };
        let error = client_config(&half).unwrap_err().to_string();
        assert!(error.contains("CONSUL_CLIENT_CERT"), "{error}");
        assert!(error.contains("CONSUL_CLIENT_KEY"), "{error}");
    }
}
