//! The client side: dialling a Connect-native service.
//!
//! A TLS client usually checks that the server's certificate names the *host* it dialled.
//! Connect certificates name *services* instead (a SPIFFE URI, no DNS name), and the
//! host came from the catalog, which anyone allowed to register could have written. So
//! the check that matters is: does the certificate chain to the Connect CA roots, and
//! does its SPIFFE ID name the service we resolved? A listener registered under the right
//! tags, or a hijacked instance ID pointing elsewhere, fails this: it has no leaf for that
//! service (issuing one needs `service:write` on it).
//!
//! [`MeshConnector`] does the dial for tonic (`Endpoint::connect_with_connector_lazy`),
//! presenting the caller's own leaf so the server can authorize it in turn.

use crate::cert;
use crate::error::Error;
use crate::identity::{Identity, Material};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Client side: a tower `Service<http::Uri>` for tonic's
/// `Endpoint::connect_with_connector_lazy`. It dials TCP (nodelay), does TLS with the
/// identity's current leaf as client certificate and ALPN h2, verifies the server's chain
/// against the current roots, and accepts it only if its SPIFFE URI is
/// `spiffe://<trust-domain>/ns/<ns>/dc/<any dc>/svc/<expected_service>`.
/// Errors are typed ([`Error`]) and say which of these failed.
///
/// The endpoint URI stays `http://host:port`: tonic must not do TLS itself.
#[derive(Clone)]
pub struct MeshConnector {
    tls: TlsConnector,
    /// Held, not read: keeps the identity's refresh task (and so the leaf and roots the
    /// handshakes read) alive as long as a connector exists.
    _identity: Identity,
}

impl std::fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnector").finish_non_exhaustive()
    }
}

impl MeshConnector {
    /// A connector presenting `identity`'s leaf and accepting only servers whose leaf is
    /// for `expected_service` (in `identity`'s namespace, any datacenter).
    pub fn new(identity: Identity, expected_service: &str) -> Self {
        let material = identity.material().clone();
        let mut config = ClientConfig::builder_with_provider(identity.provider().clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServiceVerifier {
                material: material.clone(),
                provider: identity.provider().clone(),
                expected_service: expected_service.to_string(),
                expected_namespace: identity.namespace().to_string(),
            }))
            .with_client_cert_resolver(Arc::new(CurrentLeaf { material }));
        config.alpn_protocols = vec![b"h2".to_vec()];
        // A resumed session would skip verifying the server against the current roots.
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            tls: TlsConnector::from(Arc::new(config)),
            _identity: identity,
        }
    }

    async fn connect(
        tls: TlsConnector,
        uri: http::Uri,
    ) -> Result<TokioIo<TlsStream<TcpStream>>, Error> {
        let host = uri
            .host()
            .ok_or_else(|| Error::BadUri {
                uri: uri.to_string(),
                reason: "no host",
            })?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().ok_or_else(|| Error::BadUri {
            uri: uri.to_string(),
            reason: "no port",
        })?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(Error::io(format!("cannot connect to {host}:{port}")))?;
        tcp.set_nodelay(true)
            .map_err(Error::io("cannot set TCP_NODELAY"))?;
        // The name only feeds SNI (skipped for IP addresses); verification ignores it.
        let name = ServerName::try_from(host.clone()).map_err(|_| Error::BadUri {
            uri: uri.to_string(),
            reason: "the host is neither an IP address nor a DNS name",
        })?;
        let stream = tls.connect(name, tcp).await.map_err(|e| {
            let (peer, reason) = (format!("{host}:{port}"), cert::handshake_failure(&e));
            if cert::certificate_refused(&e) {
                Error::PeerRefused { peer, reason }
            } else {
                Error::Handshake { peer, reason }
            }
        })?;
        Ok(TokioIo::new(stream))
    }
}

impl tower::Service<http::Uri> for MeshConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(Self::connect(self.tls.clone(), uri))
    }
}

/// Presents the identity's current leaf as the client certificate.
#[derive(Debug)]
struct CurrentLeaf {
    material: Arc<Material>,
}

impl ResolvesClientCert for CurrentLeaf {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.material.leaf.load().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Chain to the current roots, then the SPIFFE ID must name the expected service.
#[derive(Debug)]
struct ServiceVerifier {
    material: Arc<Material>,
    provider: Arc<CryptoProvider>,
    expected_service: String,
    expected_namespace: String,
}

fn other(error: Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(error),
    )))
}

impl ServerCertVerifier for ServiceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = self.material.roots.load();
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots.store,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| other(Error::UntrustedChain(e)))?;
        let peer = cert::peer_cert(end_entity).map_err(other)?;
        if !peer.id.in_trust_domain(&roots.trust_domain) {
            return Err(other(Error::WrongTrustDomain {
                peer: peer.uri,
                expected: roots.trust_domain.clone(),
            }));
        }
        if peer.id.service != self.expected_service || peer.id.namespace != self.expected_namespace
        {
            return Err(other(Error::WrongService {
                peer: peer.uri,
                expected_service: self.expected_service.clone(),
                expected_namespace: self.expected_namespace.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
