//! The mesh's guarantees, with real TLS over loopback and identities issued by the
//! embedded registry's Connect CA: who gets through (a client with a leaf the intentions
//! allow, to the service it meant) and who gets nothing (plaintext, no certificate, a
//! foreign CA, a denied intention, a server that is not the expected service). The server
//! is the runner kit's own, in-process.

use crate::common;

use common::*;
use hyper_util::rt::TokioIo;
use plugworker_embedded_consul::{IntentionAction, RegistryConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

#[tokio::test]
async fn a_mesh_call_succeeds_and_the_server_sees_the_client_identity() {
    let registry = registry(RegistryConfig::default()).await;
    let runner = identity(&registry, "runner").await;
    let controller = identity(&registry, "controller").await;
    assert_eq!(
        runner.spiffe_id(),
        format!(
            "spiffe://{}/ns/default/dc/dc1/svc/runner",
            registry.registry().trust_domain()
        )
    );
    assert_eq!(runner.trust_domain(), registry.registry().trust_domain());
    let server = EchoServer::on(&registry, "runner", Duration::from_secs(10)).await;
    assert_eq!(server.identity().spiffe_id(), runner.spiffe_id());

    let channel = mesh_channel(&controller, "runner", server.address);
    let answer = echo(channel.clone(), "hello").await.unwrap();
    assert_eq!(answer.text, "hello");
    assert_eq!(answer.caller, controller.spiffe_id());
    // The connection is reused: one handshake for several calls.
    for i in 0..5u8 {
        let text = i.to_string();
        assert_eq!(echo(channel.clone(), &text).await.unwrap().text, text);
    }
    assert_eq!(server.calls(), 6);
    assert_eq!(server.stats.accepted(), 1);
}

#[tokio::test]
async fn a_denied_intention_refuses_the_connection_until_an_allow_lands() {
    let registry = registry(RegistryConfig {
        default_intention_policy: Some(IntentionAction::Deny),
        ..RegistryConfig::default()
    })
    .await;
    let controller = identity(&registry, "controller").await;
    // A client of its own for the explicit deny: no decision about its certificate is
    // cached yet, so the server asks the agent, which answers with that deny.
    let auditor = identity(&registry, "auditor").await;
    let ttl = Duration::from_millis(300);
    let server = EchoServer::on(&registry, "runner", ttl).await;

    // Default deny, and an explicit deny: both refuse before any handler runs.
    let error = echo(mesh_channel(&controller, "runner", server.address), "x")
        .await
        .unwrap_err();
    intention(&registry, "auditor", "runner", "deny").await;
    let error_2 = echo(mesh_channel(&auditor, "runner", server.address), "x")
        .await
        .unwrap_err();
    plugworker_testkit::eventually(Duration::from_secs(5), "two refusals", || async {
        (server.stats.unauthorized() == 2).then_some(())
    })
    .await;
    assert_eq!(server.calls(), 0, "{error:?} / {error_2:?}");
    assert_eq!(server.stats.accepted(), 0);

    intention(&registry, "controller", "runner", "allow").await;
    // The cached deny expires after the TTL (300 ms); a new connection then asks again
    // (refused until then). 3 s: the TTL plus handshakes on a busy machine, well below
    // the default TTL (10 s), so a server ignoring the configured one fails.
    let answer = plugworker_testkit::eventually(
        Duration::from_secs(3),
        "a new connection allowed once the cached deny expired",
        || async {
            echo(mesh_channel(&controller, "runner", server.address), "ok")
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(answer.text, "ok");
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn plaintext_certificateless_and_foreign_ca_clients_get_nothing() {
    let registry = registry(RegistryConfig::default()).await;
    let server = EchoServer::on(&registry, "runner", Duration::from_secs(10)).await;

    // Plain gRPC over TCP: the server expects a ClientHello and hangs up.
    let plaintext = Endpoint::from_shared(format!("http://{}", server.address))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let error = echo(plaintext, "x").await.unwrap_err();
    eprintln!("plaintext client: {error}");

    // TLS without a client certificate (and trusting anything on the server side).
    let error = echo(anonymous_tls_channel(server.address), "x")
        .await
        .unwrap_err();
    eprintln!("client without a certificate: {error}");

    // A proper Connect client, but of another cluster: its CA is not ours. (Its own
    // verifier refuses our server first; the server would refuse its leaf too.)
    let other_cluster = common::registry(RegistryConfig::default()).await;
    let foreign = identity(&other_cluster, "controller").await;
    let error = echo(mesh_channel(&foreign, "runner", server.address), "x")
        .await
        .unwrap_err();
    eprintln!("client of another CA: {error}");
    assert!(
        format!("{error:?}").contains("not valid under the current Connect CA roots"),
        "{error:?}"
    );

    // The server counts each refusal once its handshake task has finished.
    plugworker_testkit::eventually(
        Duration::from_secs(5),
        "three refused handshakes",
        || async { (server.stats.failed_handshakes() >= 3).then_some(()) },
    )
    .await;
    assert_eq!(server.calls(), 0);
    assert_eq!(server.stats.accepted(), 0);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_server() {
    let registry = registry(RegistryConfig::default()).await;
    let server = EchoServer::on(&registry, "runner", Duration::from_secs(10)).await;
    // A leaf of another cluster, presented by a client that does not check the server:
    // only the server's verification stands between it and the handler.
    let other_cluster = common::registry(RegistryConfig::default()).await;
    let (leaf, _) = consul(&other_cluster)
        .connect_ca_leaf("controller", Default::default())
        .await
        .unwrap();
    let channel = tls_channel(
        server.address,
        Some((&leaf.cert_pem, &leaf.private_key_pem)),
    );
    let error = echo(channel, "x").await.unwrap_err();
    eprintln!("client with a foreign leaf: {error}");
    plugworker_testkit::eventually(Duration::from_secs(5), "the refused handshake", || async {
        (server.stats.failed_handshakes() == 1).then_some(())
    })
    .await;
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn a_server_holding_another_services_leaf_is_refused() {
    let registry = registry(RegistryConfig::default()).await;
    // A server with a perfectly valid leaf of the same CA, but for service "y": the
    // catalog said "x" lives at this address (a rogue or stale registration).
    let controller = identity(&registry, "controller").await;
    let server = EchoServer::on(&registry, "y", Duration::from_secs(10)).await;

    let error = echo(mesh_channel(&controller, "x", server.address), "secret job")
        .await
        .unwrap_err();
    let text = format!("{error:?}");
    assert!(text.contains("not service \\\"x\\\""), "{text}");
    assert!(text.contains("/svc/y"), "{text}");
    assert_eq!(server.calls(), 0);
    // The same server is fine for a client that expects "y".
    echo(mesh_channel(&controller, "y", server.address), "hi")
        .await
        .unwrap();
}

/// A TLS client that trusts any server and presents `client_cert` (PEM cert, PEM key) if
/// given: it tests the server's checks alone.
fn tls_channel(address: SocketAddr, client_cert: Option<(&str, &str)>) -> Channel {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything));
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                let name = ServerName::IpAddress(address.ip().into());
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
}

fn anonymous_tls_channel(address: SocketAddr) -> Channel {
    tls_channel(address, None)
}

#[derive(Debug)]
struct TrustAnything;

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
