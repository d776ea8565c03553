//! HTTPS to Consul for real: a CA, a server certificate and a client certificate made in
//! the test, and an HTTPS agent that REQUIRES a client certificate signed by that CA (an
//! agent with `verify_incoming`). The server certificate names `server.dc1.consul`, not
//! the loopback address the client dials, so the connection only verifies when the
//! server name setting is honoured, as with a real Consul's TLS certificates.

use crate::common;

use common::{Agent, plugworker};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use plugworker_consul_client::{ConsulClient, ConsulConfig, QueryOptions, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const SERVER_NAME: &str = "server.dc1.consul";

/// A certificate authority with the PEM files of its own certificate.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A leaf certificate for `name`, for a server or a client.
    fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert, key)
    }
}

/// The PEM files a Consul operator would point `CONSUL_*` at.
struct Files {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    /// A `CONSUL_CAPATH` folder holding both CAs.
    ca_folder: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// An HTTPS fake agent requiring client certificates, and the files to reach it.
struct Pki {
    address: SocketAddr,
    files: Files,
    /// Handshakes the server refused, with its reason.
    refused: Arc<Mutex<Vec<String>>>,
    agent: Agent,
}

async fn https_agent() -> Pki {
    let authority = Authority::new("Consul Agent CA");
    let (server_cert, server_key) =
        authority.issue(SERVER_NAME, ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) =
        authority.issue("client.dc1.consul", ExtendedKeyUsagePurpose::ClientAuth);
    let other = Authority::new("Some Other CA");

    let dir = tempfile::tempdir().unwrap();
    let ca_folder = dir.path().join("cas");
    std::fs::create_dir(&ca_folder).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let files = Files {
        ca: write("consul-agent-ca.pem", authority.cert.pem()),
        other_ca: write("other-ca.pem", other.cert.pem()),
        ca_folder: {
            write("cas/1-other-ca.pem", other.cert.pem());
            write("cas/2-consul-agent-ca.pem", authority.cert.pem());
            ca_folder
        },
        client_cert: write("dc1-client-consul-0.pem", client_cert.pem()),
        client_key: write("dc1-client-consul-0-key.pem", client_key.serialize_pem()),
        _dir: dir,
    };

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(authority.cert.der().clone()).unwrap();
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let agent = Agent::default();
    let router = agent.router();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let refusals = refused.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let refusals = refusals.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let service = TowerToHyperService::new(router);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    }
                    Err(error) => refusals.lock().unwrap().push(error.to_string()),
                }
            });
        }
    });
    Pki {
        address,
        files,
        refused,
        agent,
    }
}

impl Pki {
    fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Everything right: our CA, our client identity, the certificate's name.
    fn tls(&self) -> TlsConfig {
        TlsConfig {
            ca_file: Some(self.files.ca.clone()),
            client_cert: Some(self.files.client_cert.clone()),
            client_key: Some(self.files.client_key.clone()),
            server_name: Some(SERVER_NAME.into()),
            ..TlsConfig::default()
        }
    }

    fn client(&self, tls: TlsConfig) -> ConsulClient {
        ConsulClient::new(ConsulConfig {
            address: self.url(),
            tls,
            ..ConsulConfig::default()
        })
        .unwrap()
    }
}

async fn services(client: &ConsulClient) -> Result<usize, plugworker_consul_client::Error> {
    let (services, _) = client.catalog_services(QueryOptions::default()).await?;
    Ok(services.len())
}

#[tokio::test]
async fn ca_client_certificate_and_server_name_reach_an_agent_that_verifies_clients() {
    let pki = https_agent().await;
    assert_eq!(services(&pki.client(pki.tls())).await.unwrap(), 5);
    assert_eq!(pki.agent.requests().len(), 1);
    assert!(pki.refused.lock().unwrap().is_empty());

    // CONSUL_CAPATH: a folder of CA files works as well as the file.
    let by_folder = TlsConfig {
        ca_file: None,
        ca_path: Some(pki.files.ca_folder.clone()),
        ..pki.tls()
    };
    assert_eq!(services(&pki.client(by_folder)).await.unwrap(), 5);

    // CONSUL_HTTP_SSL with a bare host:port is HTTPS too.
    let ssl = ConsulClient::new(ConsulConfig {
        address: pki.address.to_string(),
        ssl: true,
        tls: pki.tls(),
        ..ConsulConfig::default()
    })
    .unwrap();
    assert_eq!(ssl.base_url().scheme(), "https");
    assert_eq!(services(&ssl).await.unwrap(), 5);
}

#[tokio::test]
async fn without_a_client_certificate_the_agent_refuses_the_handshake() {
    let pki = https_agent().await;
    let anonymous = TlsConfig {
        client_cert: None,
        client_key: None,
        ..pki.tls()
    };
    let error = services(&pki.client(anonymous)).await.unwrap_err();
    assert!(
        matches!(error, plugworker_consul_client::Error::Transport { .. }),
        "a refused handshake is a transport error: {error}"
    );
    assert!(pki.agent.requests().is_empty(), "no request got through");
    let refused = pki.refused.lock().unwrap().join("; ");
    assert!(
        refused.contains("certificate"),
        "the server's reason: {refused}"
    );
}

#[tokio::test]
async fn a_wrong_ca_or_a_wrong_name_fails_with_a_clear_reason() {
    let pki = https_agent().await;

    let wrong_ca = TlsConfig {
        ca_file: Some(pki.files.other_ca.clone()),
        ..pki.tls()
    };
    let error = services(&pki.client(wrong_ca))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
        "says why: {error}"
    );

    // Dialled by IP, the certificate's name does not match unless the server name is set.
    let no_name = TlsConfig {
        server_name: None,
        ..pki.tls()
    };
    let error = services(&pki.client(no_name))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("invalid peer certificate")
            && error.contains(r#"not valid for name "127.0.0.1""#),
        "says why: {error}"
    );

    // The system's roots do not know a private CA.
    let system_roots = TlsConfig {
        ca_file: None,
        ..pki.tls()
    };
    let error = services(&pki.client(system_roots))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(pki.agent.requests().is_empty(), "no request got through");

    // CONSUL_HTTP_SSL_VERIFY=false accepts any certificate (the client one is still due).
    let unverified = TlsConfig {
        ca_file: None,
        server_name: None,
        verify: false,
        ..pki.tls()
    };
    assert_eq!(services(&pki.client(unverified)).await.unwrap(), 5);
}

#[tokio::test]
async fn unusable_files_are_refused_up_front_naming_their_variable() {
    let pki = https_agent().await;
    let build = |tls: TlsConfig| {
        ConsulClient::new(ConsulConfig {
            address: pki.url(),
            tls,
            ..ConsulConfig::default()
        })
        .unwrap_err()
        .to_string()
    };
    let missing = build(TlsConfig {
        ca_file: Some("/nonexistent/consul-agent-ca.pem".into()),
        ..pki.tls()
    });
    assert!(missing.contains("CONSUL_CACERT"), "{missing}");
    assert!(
        missing.contains("/nonexistent/consul-agent-ca.pem"),
        "{missing}"
    );

    // A key file given as the CA: PEM, but no certificate in it.
    let not_a_cert = build(TlsConfig {
        ca_file: Some(pki.files.client_key.clone()),
        ..pki.tls()
    });
    assert!(
        not_a_cert.contains("CONSUL_CACERT") && not_a_cert.contains("no PEM certificate"),
        "{not_a_cert}"
    );

    // Like go-rootcerts, every file of a CA folder must hold certificates.
    let mixed_folder = build(TlsConfig {
        ca_file: None,
        ca_path: Some(pki.files.ca.parent().unwrap().to_path_buf()),
        ..pki.tls()
    });
    assert!(
        mixed_folder.contains("CONSUL_CAPATH") && mixed_folder.contains("key.pem"),
        "{mixed_folder}"
    );

    let swapped = build(TlsConfig {
        client_key: Some(pki.files.client_cert.clone()),
        ..pki.tls()
    });
    assert!(swapped.contains("CONSUL_CLIENT_KEY"), "{swapped}");

    let half = build(TlsConfig {
        client_key: None,
        ..pki.tls()
    });
    assert!(
        half.contains("CONSUL_CLIENT_CERT") && half.contains("CONSUL_CLIENT_KEY"),
        "{half}"
    );
}

#[tokio::test]
async fn the_plugworker_command_reads_the_standard_tls_variables() {
    let pki = https_agent().await;
    let run = |ca: &PathBuf| {
        let mut command = plugworker();
        command
            .arg("algorithms")
            .env("CONSUL_HTTP_ADDR", pki.url())
            .env("CONSUL_CACERT", ca)
            .env("CONSUL_CLIENT_CERT", &pki.files.client_cert)
            .env("CONSUL_CLIENT_KEY", &pki.files.client_key)
            .env("CONSUL_TLS_SERVER_NAME", SERVER_NAME);
        async move { command.output().await.unwrap() }
    };

    let output = run(&pki.files.ca).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The fixture's runner is not running here, so it is listed without its schema.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("echo"), "{stdout}");

    let output = run(&pki.files.other_ca).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("UnknownIssuer").count(),
        1,
        "each cause said once: {stderr}"
    );

    let mut command = plugworker();
    let output = command
        .arg("algorithms")
        .env("CONSUL_HTTP_ADDR", pki.url())
        .env("CONSUL_CACERT", "/nonexistent/ca.pem")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CONSUL_CACERT (--consul-ca-file)")
            && stderr.contains("/nonexistent/ca.pem"),
        "{stderr}"
    );
}
