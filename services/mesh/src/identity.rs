//! A service's Connect identity, kept fresh.
//!
//! Connect-native services get two things from their local agent:
//! - a **leaf certificate** (`/v1/agent/connect/ca/leaf/<service>`) with a private key,
//!   naming the service with a SPIFFE ID; it is what the service presents in every
//!   handshake, as server and as client. Leaves are short-lived (Consul's default is 72 h).
//!   The agent renews a leaf on its own schedule (Consul: somewhere in 60–90 % of its
//!   lifetime) and after a root rotation; a blocking query with the last index returns as
//!   soon as the renewed leaf exists. So one long-polling loop is all it takes to always
//!   hold a valid leaf, with no clock arithmetic of our own;
//! - the **CA roots** (`/v1/agent/connect/ca/roots`): what peers' certificates must chain
//!   to, and the trust domain their SPIFFE IDs must name. A rotation adds a root and keeps
//!   the old one listed until the leaves it signed expire, so during the overlap peers
//!   holding either kind of leaf verify. Another long-polling loop follows them.
//!
//! Both loops publish into atomically swapped snapshots ([`arc_swap`]): a handshake reads
//! whatever is current, without locks, and a rotation never restarts a server or drops a
//! connection (existing connections keep the keys they were established with).

use crate::cert;
use crate::error::Error;
use crate::spiffe::SpiffeId;
use arc_swap::ArcSwap;
use plugworker_consul_client::{CaRoots, ConsulClient, LeafCert, QueryOptions};
use plugworker_lifecycle::Backoff;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;

/// How long one blocking query may wait for a change before asking again.
const BLOCKING_WAIT: Duration = Duration::from_secs(300);

/// The current leaf, as handshakes use it.
pub(crate) struct Leaf {
    pub key: Arc<CertifiedKey>,
    pub id: SpiffeId,
    pub serial: String,
    pub valid_before: String,
}

/// The current roots, as handshakes use them.
pub(crate) struct Roots {
    pub trust_domain: String,
    pub store: Arc<RootCertStore>,
    /// A client-certificate verifier for exactly these roots (chain, validity, EKU).
    pub client_verifier: Arc<dyn ClientCertVerifier>,
}

/// What the refresh loops write and handshakes read.
pub(crate) struct Material {
    pub leaf: ArcSwap<Leaf>,
    pub roots: ArcSwap<Roots>,
}

/// A service's live Connect identity: its leaf certificate and the CA roots, fetched from
/// the local agent and kept fresh with blocking queries (renewed before expiry; roots
/// rotation picked up); cheap to clone (Arc inside). The refresh task stops when the last
/// clone is dropped; a [`WeakIdentity`] (see [`Identity::downgrade`]) observes it without
/// keeping it renewed.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

/// A non-owning handle on an [`Identity`]: it does not keep the refresh task running, so
/// whoever holds only this one leaves the renewal to the identity's owners.
#[derive(Clone, Debug)]
pub struct WeakIdentity {
    inner: Weak<Inner>,
}

impl WeakIdentity {
    /// The identity, while some owner still holds it (its leaf then still renews).
    pub fn upgrade(&self) -> Option<Identity> {
        self.inner.upgrade().map(|inner| Identity { inner })
    }
}

struct Inner {
    service: String,
    namespace: String,
    material: Arc<Material>,
    provider: Arc<CryptoProvider>,
    refresh: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.refresh.abort();
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id())
            .field("leaf_serial", &self.leaf_serial())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Fetches the first leaf and roots (retrying while Consul is unreachable, up to
    /// `ready_within`), then keeps them fresh in a background task until dropped.
    ///
    /// Fails with [`Error::NotReady`] naming the last error and its likely cause (agent
    /// unreachable; a token without `service:write` on `service`).
    pub async fn start(
        consul: ConsulClient,
        service: &str,
        ready_within: Duration,
    ) -> Result<Identity, Error> {
        let provider = cert::provider();
        let deadline = Instant::now() + ready_within;
        let mut attempt = 0u32;
        let (leaf, leaf_index, roots, roots_index) = loop {
            let fetched = async {
                let (roots, roots_meta) = consul.connect_ca_roots(QueryOptions::default()).await?;
                let (leaf, leaf_meta) = consul
                    .connect_ca_leaf(service, QueryOptions::default())
                    .await?;
                let roots = parse_roots(&roots, &provider)?;
                let leaf = parse_leaf(&leaf, &provider)?;
                Ok::<_, Error>((leaf, leaf_meta.last_index, roots, roots_meta.last_index))
            }
            .await;
            match fetched {
                Ok(material) => break material,
                Err(error) => {
                    attempt += 1;
                    let delay = BACKOFF.delay(attempt);
                    if Instant::now() + delay >= deadline {
                        return Err(Error::NotReady {
                            service: service.to_string(),
                            within: ready_within,
                            hint: hint(&error),
                            last_error: error.to_string(),
                        });
                    }
                    tracing::debug!(%error, attempt, service, "Connect identity not ready yet; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        tracing::info!(
            spiffe_id = %leaf.id,
            serial = %leaf.serial,
            valid_before = %leaf.valid_before,
            trust_domain = %roots.trust_domain,
            "Connect identity ready"
        );
        let material = Arc::new(Material {
            leaf: ArcSwap::from_pointee(leaf),
            roots: ArcSwap::from_pointee(roots),
        });
        let refresh = tokio::spawn(refresh(
            consul.clone(),
            service.to_string(),
            material.clone(),
            provider.clone(),
            leaf_index,
            roots_index,
        ))
        .abort_handle();
        Ok(Identity {
            inner: Arc::new(Inner {
                service: service.to_string(),
                namespace: consul.namespace().unwrap_or("default").to_string(),
                material,
                provider,
                refresh,
            }),
        })
    }

    /// A handle that does not keep this identity (and its renewal) alive.
    pub fn downgrade(&self) -> WeakIdentity {
        WeakIdentity {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The Consul service this identity is for.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The current leaf's SPIFFE ID.
    pub fn spiffe_id(&self) -> String {
        self.inner.material.leaf.load().id.to_string()
    }

    /// The current roots' trust domain.
    pub fn trust_domain(&self) -> String {
        self.inner.material.roots.load().trust_domain.clone()
    }

    /// The current leaf's serial (Consul's colon-separated hex); changes on renewal.
    pub fn leaf_serial(&self) -> String {
        self.inner.material.leaf.load().serial.clone()
    }

    /// The Consul namespace peers are expected in (`default` unless the client has one).
    pub(crate) fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    pub(crate) fn material(&self) -> &Arc<Material> {
        &self.inner.material
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.inner.provider
    }
}

/// Fast retries first (a start-up race with the agent), then at most every 5 s; jittered,
/// so runners that lost the agent together do not come back in step.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// The usual reason behind an error, for the operator reading the log.
fn hint(error: &Error) -> &'static str {
    match error {
        Error::Consul(plugworker_consul_client::Error::Status { status, .. })
            if status.as_u16() == 403 =>
        {
            "the Consul token (CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE) needs service:write on this service"
        }
        Error::Consul(plugworker_consul_client::Error::Status { status, .. })
            if status.as_u16() == 404 || status.as_u16() == 400 =>
        {
            "is Connect enabled on the Consul agent (connect { enabled = true })?"
        }
        Error::Consul(plugworker_consul_client::Error::Transport { .. }) => {
            "is the Consul agent reachable (CONSUL_HTTP_ADDR)?"
        }
        _ => "the agent's answer could not be used",
    }
}

fn parse_leaf(leaf: &LeafCert, provider: &CryptoProvider) -> Result<Leaf, Error> {
    let key = cert::certified_key(&leaf.cert_pem, &leaf.private_key_pem, provider)?;
    let own = cert::peer_cert(key.end_entity_cert()?)?;
    Ok(Leaf {
        key: Arc::new(key),
        id: own.id,
        serial: if leaf.serial_number.is_empty() {
            own.serial
        } else {
            leaf.serial_number.clone()
        },
        valid_before: leaf.valid_before.clone(),
    })
}

fn parse_roots(roots: &CaRoots, provider: &Arc<CryptoProvider>) -> Result<Roots, Error> {
    let mut store = RootCertStore::empty();
    for root in &roots.roots {
        for der in cert::certificates(&root.root_cert, &format!("CA root {}", root.id))? {
            store.add(der).map_err(|e| Error::Certificate {
                what: format!("of CA root {}", root.id),
                reason: e.to_string(),
            })?;
        }
    }
    if store.is_empty() {
        return Err(Error::Pem {
            what: "the Connect CA roots".into(),
            reason: "the agent lists no root".into(),
        });
    }
    if roots.trust_domain.is_empty() {
        return Err(Error::Pem {
            what: "the Connect CA roots".into(),
            reason: "no TrustDomain".into(),
        });
    }
    let store = Arc::new(store);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
            .build()
            .map_err(|e| Error::Certificate {
                what: "verifier for the Connect CA roots".into(),
                reason: e.to_string(),
            })?;
    Ok(Roots {
        trust_domain: roots.trust_domain.to_ascii_lowercase(),
        store,
        client_verifier,
    })
}

/// Both refresh loops, until the identity is dropped (which aborts this task).
async fn refresh(
    consul: ConsulClient,
    service: String,
    material: Arc<Material>,
    provider: Arc<CryptoProvider>,
    leaf_index: u64,
    roots_index: u64,
) {
    let leaf = follow(
        "leaf",
        leaf_index,
        |options| {
            let consul = consul.clone();
            let service = service.clone();
            async move { consul.connect_ca_leaf(&service, options).await }
        },
        |leaf: LeafCert| {
            let parsed = parse_leaf(&leaf, &provider)?;
            let previous = material.leaf.load();
            if parsed.serial != previous.serial {
                tracing::info!(
                    spiffe_id = %parsed.id,
                    serial = %parsed.serial,
                    previous = %previous.serial,
                    valid_before = %parsed.valid_before,
                    "Connect leaf certificate renewed"
                );
                material.leaf.store(Arc::new(parsed));
            }
            Ok(())
        },
        || material.leaf.load().valid_before.clone(),
    );
    let roots = follow(
        "roots",
        roots_index,
        |options| {
            let consul = consul.clone();
            async move { consul.connect_ca_roots(options).await }
        },
        |roots: CaRoots| {
            let count = roots.roots.len();
            let parsed = parse_roots(&roots, &provider)?;
            tracing::info!(
                trust_domain = %parsed.trust_domain,
                roots = count,
                active = %roots.active_root_id,
                "Connect CA roots updated"
            );
            material.roots.store(Arc::new(parsed));
            Ok(())
        },
        String::new,
    );
    tokio::join!(leaf, roots);
}

/// One blocking-query loop: ask with the last index, apply what comes back when the index
/// moved, retry with backoff on errors (keeping what we have: an old leaf is still valid
/// until it expires, and the agent is usually back long before that).
async fn follow<T, Fetch, FetchFut, Apply, Expiry>(
    what: &'static str,
    mut index: u64,
    fetch: Fetch,
    apply: Apply,
    expiry: Expiry,
) where
    Fetch: Fn(QueryOptions) -> FetchFut,
    FetchFut: Future<
        Output = Result<(T, plugworker_consul_client::QueryMeta), plugworker_consul_client::Error>,
    >,
    Apply: Fn(T) -> Result<(), Error>,
    Expiry: Fn() -> String,
{
    let mut failures = 0u32;
    loop {
        let options = QueryOptions {
            index,
            wait: Some(BLOCKING_WAIT),
        };
        let outcome = match fetch(options).await {
            // An unchanged index: the wait timed out with nothing new.
            Ok((_, meta)) if meta.last_index == index && index != 0 => Ok(()),
            Ok((value, meta)) => {
                let applied = apply(value);
                // Only an answer that was applied moves the index on: one that could not
                // be used is asked for again (after the backoff below) instead of waiting
                // for the agent's *next* change, which for roots may be months away.
                if applied.is_ok() {
                    // Consul's rule for blocking queries: an index that went backwards
                    // (agent restarted, state reset) means start over from 0.
                    index = if meta.last_index < index {
                        0
                    } else {
                        meta.last_index
                    };
                    if index == 0 {
                        // An answer without an index cannot block: do not spin on it.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                applied
            }
            Err(error) => Err(Error::Consul(error)),
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(error) => {
                failures += 1;
                let expires = expiry();
                tracing::warn!(
                    %error,
                    attempt = failures,
                    hint = hint(&error),
                    current_valid_before = %expires,
                    "cannot refresh the Connect {what}; keeping the current one and retrying"
                );
                tokio::time::sleep(BACKOFF.delay(failures)).await;
            }
        }
    }
}
