//! How the CLI reaches a runner directly (`call`, `algorithms`), as the controller does:
//! in the mesh, over mTLS as a named Connect identity whose intentions the runner checks,
//! and only Connect-native instances; or, with `--insecure-plaintext`, over plaintext to
//! runners started that way (docs/security.md).

use anyhow::Context;
use plugworker_consul_client::{ConsulClient, QueryOptions, ServiceEntry};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The Connect identity the CLI takes when no `--mesh-service` names one: the operator's
/// (`plugworker dev` grants it through dev.json; give yours `service "operator" write`
/// and intentions from `operator` to have the same on a real Consul).
pub const OPERATOR: &str = "operator";

/// The way to a runner: who the CLI is in the mesh, or no identity at all.
#[derive(Clone)]
pub enum Link {
    /// mTLS with this identity's leaf certificate; the runner must present the service it
    /// was resolved as.
    Mesh(plugworker_mesh::Identity),
    /// Plaintext gRPC: no certificate on either side.
    Plaintext,
}

impl Link {
    /// `--mesh-service NAME` → a [`Link::Mesh`] (fetching that service's certificate);
    /// `--insecure-plaintext` → [`Link::Plaintext`], with a warning; neither → `None`.
    pub async fn from_flags(
        consul: &ConsulClient,
        mesh_service: Option<&str>,
        insecure_plaintext: bool,
    ) -> anyhow::Result<Option<Link>> {
        if insecure_plaintext {
            tracing::warn!(
                "--insecure-plaintext: calling runners over plaintext gRPC; no certificate proves who a runner is"
            );
            return Ok(Some(Link::Plaintext));
        }
        let Some(service) = mesh_service else {
            return Ok(None);
        };
        let identity =
            plugworker_mesh::Identity::start(consul.clone(), service, Duration::from_secs(10))
                .await
                .with_context(|| {
                    format!(
                        "cannot get a Connect certificate for {service:?} (does your Consul token have service \"{service}\" write?)"
                    )
                })?;
        Ok(Some(Link::Mesh(identity)))
    }

    /// The [`OPERATOR`] identity when the caller's token may take it (`plugworker dev`'s
    /// operator token may; see dev.json), else `None`: what `algorithms` and `pipeline
    /// put` use when no flag names a way to the runners.
    pub async fn operator(consul: &ConsulClient) -> Option<Link> {
        // One request first: without the right to the identity, `Identity::start` would
        // retry until its deadline before saying so.
        if let Err(error) = consul
            .connect_ca_leaf(OPERATOR, QueryOptions::default())
            .await
        {
            tracing::debug!(%error, "no Connect certificate for {OPERATOR:?}; runners not asked");
            return None;
        }
        match plugworker_mesh::Identity::start(consul.clone(), OPERATOR, Duration::from_secs(5))
            .await
        {
            Ok(identity) => Some(Link::Mesh(identity)),
            Err(error) => {
                tracing::debug!(%error, "no Connect identity {OPERATOR:?}; runners not asked");
                None
            }
        }
    }

    pub fn is_mesh(&self) -> bool {
        matches!(self, Link::Mesh(_))
    }

    /// A connected channel to `instance`.
    pub async fn dial(
        &self,
        instance: &ServiceEntry,
        timeout: Duration,
    ) -> anyhow::Result<Channel> {
        let address = format!("{}:{}", instance.address(), instance.service.port);
        let id = &instance.service.id;
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .with_context(|| {
                format!("runner {id} has an address that cannot be dialled: {address}")
            })?
            .connect_timeout(timeout);
        match self {
            Link::Mesh(identity) => endpoint
                .connect_with_connector(plugworker_mesh::MeshConnector::new(
                    identity.clone(),
                    &instance.service.service,
                ))
                .await
                .with_context(|| format!("cannot connect to runner {id} at {address} over mTLS")),
            Link::Plaintext => endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to runner {id} at {address}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tonic's own message for a failed connection is only "transport error"; why it failed
    /// reaches the user through the error's chain, which `describe` prints once.
    #[tokio::test]
    async fn a_refused_dial_says_why() {
        let closed = plugworker_testkit::ClosedPort::new();
        let (host, port) = closed
            .address()
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.parse().unwrap()))
            .unwrap();
        let mut instance = ServiceEntry::default();
        instance.service.id = "runner-1".into();
        instance.service.address = host;
        instance.service.port = port;
        let error = Link::Plaintext
            .dial(&instance, Duration::from_secs(5))
            .await
            .unwrap_err();
        let text = crate::describe(&error);
        assert!(
            text.starts_with("cannot connect to runner runner-1 at 127.0.0.1:"),
            "{text}"
        );
        assert!(text.contains("transport error"), "{text}");
        assert!(text.to_lowercase().contains("refused"), "the cause: {text}");
    }
}
