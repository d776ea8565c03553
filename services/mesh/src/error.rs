//! What can go wrong in the mesh, one variant per distinct cause, so that a log line or a
//! failed call says *which* check refused a peer (chain, identity, intention) or what
//! kept a service from getting its certificate.

use crate::spiffe::InvalidSpiffeId;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent refused or failed a request (unreachable, 403 for a token without
    /// `service:write`, ...).
    #[error(transparent)]
    Consul(#[from] plugworker_consul_client::Error),

    /// [`crate::Identity::start`] gave up waiting for the first leaf and roots.
    #[error("no Connect identity for service {service:?} within {within:?}: {last_error} ({hint})")]
    NotReady {
        service: String,
        within: Duration,
        last_error: String,
        hint: &'static str,
    },

    /// A PEM document from the agent does not hold what it should.
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },

    /// A certificate that does not parse, or lacks the SPIFFE URI SAN.
    #[error("certificate {what}: {reason}")]
    Certificate { what: String, reason: String },

    #[error(transparent)]
    Spiffe(#[from] InvalidSpiffeId),

    /// The peer's certificate does not chain to the current Connect CA roots.
    #[error("the peer's certificate is not valid under the current Connect CA roots: {0}")]
    UntrustedChain(rustls::Error),

    /// The peer's certificate names a trust domain other than the roots'.
    #[error("the peer's SPIFFE ID {peer} is not in the trust domain {expected:?}")]
    WrongTrustDomain { peer: String, expected: String },

    /// The server's certificate is valid but names another service: it is not the
    /// instance the client meant to reach (a stale or rogue registration).
    #[error(
        "the server presented SPIFFE ID {peer}, not service {expected_service:?} in namespace {expected_namespace:?}"
    )]
    WrongService {
        peer: String,
        expected_service: String,
        expected_namespace: String,
    },

    /// The intentions do not let the client connect.
    #[error("connection from {client} to {target:?} not authorized: {reason}")]
    NotAuthorized {
        client: String,
        target: String,
        reason: String,
    },

    /// The client certificate a connection was accepted with has passed its `NotAfter`:
    /// the connection ends (its client reconnects with its renewed certificate).
    #[error("the client certificate of {client} expired at {not_after} (UNIX time, s)")]
    CertificateExpired { client: String, not_after: u64 },

    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),

    /// The client refused the server's certificate: not valid under the current Connect
    /// CA roots (untrusted, expired), another trust domain, or another service. `reason`
    /// is the check's own refusal. The address does not hold the instance it was
    /// registered as.
    #[error("TLS handshake with {peer}: the server's certificate was refused: {reason}")]
    PeerRefused { peer: String, reason: String },

    /// The TLS handshake failed for another reason (connection reset or closed, a
    /// protocol error): nothing is known about who is at that address.
    #[error("TLS handshake with {peer} failed: {reason}")]
    Handshake { peer: String, reason: String },

    #[error("TLS handshake with {peer} did not finish within {timeout:?}")]
    HandshakeTimeout {
        peer: std::net::SocketAddr,
        timeout: Duration,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A URI a client was asked to dial that has no host or port.
    #[error("cannot dial {uri}: {reason}")]
    BadUri { uri: String, reason: &'static str },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
