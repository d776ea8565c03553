//! The server side: TLS termination and per-connection authorization for a tonic server.
//!
//! Every accepted TCP connection goes through three gates before tonic sees a byte:
//! 1. **handshake** (bounded by [`ServerSettings::handshake_timeout`]): the server presents
//!    its *current* leaf, and the client must present a certificate that chains to the
//!    *current* roots and names a service in their trust domain. Both are read from the
//!    [`Identity`] at each handshake, so renewals and rotations apply to the next
//!    connection without a restart. A plaintext client fails here and gets nothing.
//! 2. **authorization**: `POST /v1/agent/connect/authorize` asks the agent whether the
//!    intentions let the client's service connect to ours. The answer (allow *and* deny)
//!    is cached per client certificate (serial + SPIFFE URI) for
//!    [`ServerSettings::authorize_cache_ttl`], as Consul's own native library does, so a
//!    burst of new connections costs one agent round trip; an intention change applies to
//!    new connections within that TTL. If the agent cannot answer, the connection is
//!    refused (fail closed). An open connection is checked again every TTL
//!    ([`MeshStream::revoked`]; the agent is asked once per client certificate per TTL),
//!    and ends when the answer is no, or when the agent has failed to answer two
//!    re-checks in a row (one failure is tolerated): the kit's server sends GOAWAY then.
//!    An open connection also ends when the client certificate it was accepted with
//!    reaches its `NotAfter` (GOAWAY). Either way new calls on it are refused with
//!    `REFUSED_STREAM`, which tells the client they were not processed and may be sent
//!    again on a new connection (authorized afresh, with the renewed certificate).
//! 3. only then is the connection handed to tonic, carrying the peer's identity
//!    ([`MeshConnectInfo`], in each request's extensions).
//!
//! Handshakes run in their own tasks: a client that connects and never speaks costs one
//! task until its timeout, and does not hold up other clients' accepts.
//! Refused connections are counted ([`ServerStats`]) and logged: at WARN when a
//! certificate or an intention refused the peer (someone is trying something), at DEBUG
//! when the peer did not even speak TLS (port scans, plaintext clients, health probes).

use crate::cert::{self, PeerCert};
use crate::error::Error;
use crate::identity::{Identity, Material};
use crate::spiffe::SpiffeId;
use futures::Stream;
use plugworker_consul_client::{AuthorizeRequest, ConsulClient};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// Tuning of [`incoming`].
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// A TLS handshake must finish within this, or the connection is dropped.
    pub handshake_timeout: Duration,
    /// How long an authorize decision for one client certificate is reused.
    pub authorize_cache_ttl: Duration,
    /// Handshakes in progress at once; further accepts wait for one to finish.
    pub max_concurrent_handshakes: usize,
    /// Counters of accepted and refused connections (shared: clone it before passing
    /// the settings to read them later).
    pub stats: ServerStats,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            authorize_cache_ttl: Duration::from_secs(10),
            max_concurrent_handshakes: 1024,
            stats: ServerStats::default(),
        }
    }
}

/// Connection counters of one [`incoming`] stream; cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    failed_handshakes: AtomicU64,
    unauthorized: AtomicU64,
}

impl ServerStats {
    /// Connections that passed the handshake and authorization.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }
    /// Connections closed because the TLS handshake failed or timed out (plaintext
    /// clients, no or untrusted client certificate).
    pub fn failed_handshakes(&self) -> u64 {
        self.inner.failed_handshakes.load(Ordering::Relaxed)
    }
    /// Connections closed because authorize refused them (or could not answer).
    pub fn unauthorized(&self) -> u64 {
        self.inner.unauthorized.load(Ordering::Relaxed)
    }
}

/// Who is on the other end of a [`MeshStream`]. The runner kit's server, which serves
/// these streams, hands it to each call: an algorithm reads its caller with
/// `plugworker_kit::RunContext::caller()`.
#[derive(Clone, Debug)]
pub struct MeshConnectInfo {
    pub remote_addr: SocketAddr,
    pub local_addr: SocketAddr,
    /// The client's SPIFFE ID, from its verified certificate.
    pub peer: SpiffeId,
    /// The client certificate's serial (Consul's colon-separated hex).
    pub peer_serial: String,
}

/// An authenticated, authorized connection, as the runner kit's server
/// (`plugworker_kit::Runner`) serves it: it closes the connection when
/// [`MeshStream::revoked`] fires.
pub struct MeshStream {
    tls: TlsStream<TcpStream>,
    info: MeshConnectInfo,
    /// What [`MeshStream::revoked`] re-checks.
    authorizer: Arc<Authorizer>,
    peer: PeerCert,
}

impl MeshStream {
    pub fn info(&self) -> &MeshConnectInfo {
        &self.info
    }

    /// Resolves, with why, when authorize, asked again every authorize cache TTL (the
    /// agent asked at most once per client certificate per TTL: a decision it gave within
    /// the TTL is reused), no longer allows the client: an intention now denies it, or
    /// the agent has failed to answer two re-checks in a row (one failure is tolerated:
    /// the last allow stands one more TTL; then fail closed).
    /// The kit's server then closes the connection (GOAWAY), so a revoked intention ends
    /// open connections too, not only new ones. Independent of the stream: it can run in
    /// its own task.
    ///
    /// It also resolves ([`Error::CertificateExpired`]) when the client certificate the
    /// connection was accepted with reaches its `NotAfter`: a connection lives no longer
    /// than the credential that opened it. The client reconnects with its renewed
    /// certificate (Connect renews leaves well before they end).
    pub fn revoked(&self) -> impl Future<Output = Error> + Send + 'static {
        let authorizer = self.authorizer.clone();
        let peer = self.peer.clone();
        async move {
            let expired = || Error::CertificateExpired {
                client: peer.uri.clone(),
                not_after: peer
                    .not_after
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs()),
            };
            let period = authorizer.ttl.max(Duration::from_millis(100));
            let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let rechecks = async {
                loop {
                    every.tick().await;
                    // The timer below runs on the monotonic clock, which stands still
                    // while the machine is suspended: the wall clock, read on each
                    // re-check, ends the connection within a TTL of waking past NotAfter.
                    if SystemTime::now() >= peer.not_after {
                        return expired();
                    }
                    if let Err(error) = authorizer.check(&peer, Fresh::Ask).await {
                        return error;
                    }
                }
            };
            // The wall clock, as certificates are read: a duration from now, not an
            // instant, so a clock stepped meanwhile moves it by at most that step.
            let left = peer
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                error = rechecks => error,
                () = tokio::time::sleep(left) => expired(),
            }
        }
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for MeshStream {
    type ConnectInfo = MeshConnectInfo;
    fn connect_info(&self) -> MeshConnectInfo {
        self.info.clone()
    }
}

/// Server side: TLS termination + per-connection authorization for a tonic server.
/// Every accepted TCP connection (nodelay) must complete a TLS handshake presenting a
/// client certificate that chains to the current roots, and then be allowed by
/// `/v1/agent/connect/authorize` for `identity.service()` (decision cached per client
/// certificate serial+URI for a short TTL); otherwise it is closed and counted.
/// The stream yields connections for the runner kit's server (`plugworker_kit::Runner`
/// serves them); it never yields an error (refusals are handled here). Dropping the stream
/// stops accepting and closes the listener.
pub fn incoming(
    listener: TcpListener,
    identity: Identity,
    consul: ConsulClient,
    settings: ServerSettings,
) -> impl Stream<Item = Result<MeshStream, std::io::Error>> {
    let (sender, receiver) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&identity)));
    let authorizer = Arc::new(Authorizer {
        consul,
        target: identity.service().to_string(),
        _identity: identity.clone(),
        ttl: settings.authorize_cache_ttl,
        cache: Mutex::new(HashMap::new()),
    });
    tokio::spawn(accept_loop(
        listener, acceptor, authorizer, settings, sender,
    ));
    ReceiverStream::new(receiver)
}

/// The rustls server configuration: certificate and client verification both read the
/// identity's current material at each handshake.
fn server_config(identity: &Identity) -> ServerConfig {
    let material = identity.material().clone();
    let mut config = ServerConfig::builder_with_provider(identity.provider().clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_client_cert_verifier(Arc::new(CurrentRootsVerifier {
            material: material.clone(),
        }))
        .with_cert_resolver(Arc::new(CurrentLeaf { material }));
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption: a resumed session skips client-certificate verification, and the
    // roots may have changed since. Mesh connections are long-lived; full handshakes
    // cost little.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    authorizer: Arc<Authorizer>,
    settings: ServerSettings,
    sender: mpsc::Sender<Result<MeshStream, std::io::Error>>,
) {
    let handshakes = Arc::new(Semaphore::new(settings.max_concurrent_handshakes.max(1)));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = sender.closed() => return,
        };
        let (tcp, remote_addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small gRPC messages must not wait for Nagle's algorithm (40 ms stalls).
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, %remote_addr, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let authorizer = authorizer.clone();
        let settings = settings.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let outcome = admit(tcp, remote_addr, &acceptor, &authorizer, &settings).await;
            drop(permit);
            match outcome {
                Ok(stream) => {
                    settings
                        .stats
                        .inner
                        .accepted
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %stream.info.peer, %remote_addr, "mesh connection accepted");
                    let _ = sender.send(Ok(stream)).await;
                }
                Err(Refusal::Handshake(error)) => {
                    settings
                        .stats
                        .inner
                        .failed_handshakes
                        .fetch_add(1, Ordering::Relaxed);
                    if error.untrusted_peer {
                        tracing::warn!(error = %error.message, %remote_addr, "mesh connection refused: TLS handshake failed");
                    } else {
                        tracing::debug!(error = %error.message, %remote_addr, "mesh connection closed during the TLS handshake");
                    }
                }
                Err(Refusal::Unauthorized(error)) => {
                    settings
                        .stats
                        .inner
                        .unauthorized
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, %remote_addr, "mesh connection refused");
                }
            }
        });
    }
}

struct HandshakeFailure {
    message: String,
    /// A certificate problem (someone presenting the wrong credentials), as opposed to a
    /// peer that does not speak TLS or went away.
    untrusted_peer: bool,
}

enum Refusal {
    Handshake(HandshakeFailure),
    Unauthorized(Error),
}

/// Handshake, identify, authorize.
async fn admit(
    tcp: TcpStream,
    remote_addr: SocketAddr,
    acceptor: &TlsAcceptor,
    authorizer: &Arc<Authorizer>,
    settings: &ServerSettings,
) -> Result<MeshStream, Refusal> {
    let local_addr = tcp.local_addr().unwrap_or(remote_addr);
    let tls = match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            return Err(Refusal::Handshake(HandshakeFailure {
                message: Error::HandshakeTimeout {
                    peer: remote_addr,
                    timeout: settings.handshake_timeout,
                }
                .to_string(),
                untrusted_peer: false,
            }));
        }
        Ok(Err(error)) => {
            let untrusted_peer = error
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some_and(|e| {
                    matches!(
                        e,
                        rustls::Error::InvalidCertificate(_)
                            | rustls::Error::NoCertificatesPresented
                    )
                });
            return Err(Refusal::Handshake(HandshakeFailure {
                message: cert::handshake_failure(&error),
                untrusted_peer,
            }));
        }
        Ok(Ok(tls)) => tls,
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(Refusal::Handshake(HandshakeFailure {
            message: "the client presented no certificate".into(),
            untrusted_peer: true,
        }))
        .and_then(|der| {
            cert::peer_cert(der).map_err(|e| {
                Refusal::Handshake(HandshakeFailure {
                    message: e.to_string(),
                    untrusted_peer: true,
                })
            })
        })?;
    authorizer
        .check(&peer, Fresh::Cached)
        .await
        .map_err(Refusal::Unauthorized)?;
    Ok(MeshStream {
        tls,
        info: MeshConnectInfo {
            remote_addr,
            local_addr,
            peer: peer.id.clone(),
            peer_serial: peer.serial.clone(),
        },
        authorizer: authorizer.clone(),
        peer,
    })
}

/// Authorize decisions by client certificate (serial, SPIFFE URI): allowed, the agent's
/// reason, when it was asked.
type DecisionCache = HashMap<(String, String), (bool, String, Instant)>;

/// `/v1/agent/connect/authorize` with a short-lived cache of its decisions.
struct Authorizer {
    /// Held, not read: the identity's refresh task runs while a clone lives, and the
    /// handshakes read its material; without this the runner's leaf and roots would
    /// freeze when the caller drops its own `Identity`.
    _identity: Identity,
    consul: ConsulClient,
    target: String,
    ttl: Duration,
    cache: Mutex<DecisionCache>,
}

/// Who [`Authorizer::check`] checks: both take a decision up to one TTL old from the
/// cache, and ask the agent (refreshing the cache) otherwise.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fresh {
    /// A new connection: refused if the agent cannot answer.
    Cached,
    /// An open connection's periodic re-check (every TTL, so a revoked intention closes
    /// it within two): its last allow stands through one failed agent call.
    Ask,
}

impl Authorizer {
    async fn check(&self, peer: &PeerCert, fresh: Fresh) -> Result<(), Error> {
        let key = (peer.serial.clone(), peer.uri.clone());
        let cached = self
            .cache
            .lock()
            .expect("authorize cache lock")
            .get(&key)
            .cloned();
        // A decision the agent gave within one TTL is used, for new and open connections
        // alike: the agent is asked once per client certificate per TTL, however many
        // connections the certificate has open.
        let (authorized, reason) = match cached
            .as_ref()
            .filter(|(_, _, at)| at.elapsed() < self.ttl)
        {
            Some((allowed, reason, _)) => (*allowed, reason.clone()),
            None => match self
                .consul
                .connect_authorize(&AuthorizeRequest {
                    target: self.target.clone(),
                    client_cert_uri: peer.uri.clone(),
                    client_cert_serial: peer.serial.clone(),
                })
                .await
            {
                Ok(answer) => {
                    let mut cache = self.cache.lock().expect("authorize cache lock");
                    if cache.len() >= 4096 {
                        // Allows stay one TTL more: what an open connection may still
                        // lean on when the agent cannot answer.
                        let keep = self.ttl * 2;
                        cache.retain(|_, (_, _, at)| at.elapsed() < keep);
                    }
                    cache.insert(
                        key,
                        (answer.authorized, answer.reason.clone(), Instant::now()),
                    );
                    (answer.authorized, answer.reason)
                }
                Err(error) => {
                    // An open connection the agent allowed within the last 1.5 TTLs (one
                    // re-check period ago, give or take) stays open through this failed
                    // re-check (an agent restart, a dropped request): closing every
                    // connection on one error would fail the calls in flight. The next
                    // failure, a period later, closes it (fail closed). A new connection
                    // is refused at once. The error is not cached.
                    let tolerated = fresh == Fresh::Ask
                        && cached.is_some_and(|(allowed, _, at)| {
                            allowed && at.elapsed() < self.ttl * 3 / 2
                        });
                    if tolerated {
                        tracing::warn!(%error, client = %peer.uri, "the agent could not re-check an open mesh connection; its last allow stands for one more authorize TTL");
                        return Ok(());
                    }
                    return Err(Error::NotAuthorized {
                        client: peer.uri.clone(),
                        target: self.target.clone(),
                        reason: format!("the agent could not decide (refusing): {error}"),
                    });
                }
            },
        };
        if authorized {
            Ok(())
        } else {
            Err(Error::NotAuthorized {
                client: peer.uri.clone(),
                target: self.target.clone(),
                reason,
            })
        }
    }
}

/// Presents the identity's current leaf.
#[derive(Debug)]
struct CurrentLeaf {
    material: Arc<Material>,
}

impl ResolvesServerCert for CurrentLeaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.material.leaf.load().key.clone())
    }
}

/// Verifies client certificates against the identity's current roots, and requires
/// their SPIFFE ID to be in the roots' trust domain.
#[derive(Debug)]
struct CurrentRootsVerifier {
    material: Arc<Material>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("spiffe_id", &self.leaf.load().id.to_string())
            .field("trust_domain", &self.roots.load().trust_domain)
            .finish()
    }
}

fn other(error: Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(error),
    )))
}

impl ClientCertVerifier for CurrentRootsVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; Connect clients hold one leaf and present it regardless.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let roots = self.material.roots.load();
        roots
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| other(Error::UntrustedChain(e)))?;
        let peer = cert::peer_cert(end_entity).map_err(other)?;
        if !peer.id.in_trust_domain(&roots.trust_domain) {
            return Err(other(Error::WrongTrustDomain {
                peer: peer.uri,
                expected: roots.trust_domain.clone(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.material
            .roots
            .load()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.material
            .roots
            .load()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.material
            .roots
            .load()
            .client_verifier
            .supported_verify_schemes()
    }
}
