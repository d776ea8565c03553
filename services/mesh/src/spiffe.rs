//! SPIFFE IDs of Connect services.
//!
//! Consul names every service identity with a URI in the leaf certificate's subject
//! alternative name: `spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>`
//! (Enterprise adds `/ap/<partition>` before `/ns`). The trust domain is the CA's
//! (`<cluster-id>.consul`), so an ID says both *who* (service) and *vouched for by whom*
//! (trust domain). Authorization decisions (intentions) are about the service name;
//! the datacenter only says where the certificate was issued.

use std::fmt;

/// A parsed Connect service identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    /// Admin partition (Consul Enterprise); `None` in the URI form without `/ap/`.
    pub partition: Option<String>,
    pub namespace: String,
    pub datacenter: String,
    pub service: String,
}

/// A URI that is not a Connect service identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{uri:?} is not a Connect service SPIFFE ID (spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>): {reason}"
)]
pub struct InvalidSpiffeId {
    pub uri: String,
    pub reason: &'static str,
}

impl SpiffeId {
    /// The identity Consul gives `service` in `namespace` and `datacenter`.
    pub fn service(trust_domain: &str, namespace: &str, datacenter: &str, service: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            partition: None,
            namespace: namespace.to_string(),
            datacenter: datacenter.to_string(),
            service: service.to_string(),
        }
    }

    /// Parses `spiffe://<td>/[ap/<ap>/]ns/<ns>/dc/<dc>/svc/<service>`. Trust domains are
    /// compared case-insensitively (they are DNS names), so they are kept lower-case.
    pub fn parse(uri: &str) -> Result<Self, InvalidSpiffeId> {
        let invalid = |reason| InvalidSpiffeId {
            uri: uri.to_string(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| invalid("the scheme is not spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("no path after the trust domain"))?;
        if trust_domain.is_empty() {
            return Err(invalid("empty trust domain"));
        }
        if path.contains(['?', '#']) {
            return Err(invalid("a query or fragment is not allowed"));
        }
        let segments: Vec<&str> = path.split('/').collect();
        let (partition, tail) = match segments.as_slice() {
            ["ap", partition, tail @ ..] => (Some(partition.to_string()), tail),
            tail => (None, tail),
        };
        match tail {
            ["ns", namespace, "dc", datacenter, "svc", service]
                if [*namespace, *datacenter, *service]
                    .iter()
                    .all(|s| !s.is_empty()) =>
            {
                Ok(Self {
                    trust_domain: trust_domain.to_ascii_lowercase(),
                    partition,
                    namespace: namespace.to_string(),
                    datacenter: datacenter.to_string(),
                    service: service.to_string(),
                })
            }
            _ => Err(invalid("the path is not /ns/<ns>/dc/<dc>/svc/<service>")),
        }
    }

    /// Whether this ID was issued by `trust_domain` (case-insensitive, as DNS names are).
    pub fn in_trust_domain(&self, trust_domain: &str) -> bool {
        self.trust_domain.eq_ignore_ascii_case(trust_domain)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.trust_domain)?;
        if let Some(partition) = &self.partition {
            write!(f, "/ap/{partition}")?;
        }
        write!(
            f,
            "/ns/{}/dc/{}/svc/{}",
            self.namespace, self.datacenter, self.service
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ids_round_trip() {
        for uri in [
            "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web",
            "spiffe://td.consul/ap/part/ns/team/dc/eu-1/svc/nlp-runner",
        ] {
            let id = SpiffeId::parse(uri).unwrap();
            assert_eq!(id.to_string(), uri);
        }
        let id = SpiffeId::parse("spiffe://TD.Consul/ns/default/dc/dc1/svc/web").unwrap();
        assert_eq!(id.trust_domain, "td.consul");
        assert_eq!(id.service, "web");
        assert_eq!(id, SpiffeId::service("td.consul", "default", "dc1", "web"));
        assert!(id.in_trust_domain("TD.consul"));
    }

    #[test]
    fn other_uris_are_refused_with_a_reason() {
        for uri in [
            "https://td.consul/ns/default/dc/dc1/svc/web",
            "spiffe://td.consul",
            "spiffe:///ns/default/dc/dc1/svc/web",
            "spiffe://td.consul/agent/client/dc/dc1/id/x",
            "spiffe://td.consul/ns/default/dc/dc1/svc/",
            "spiffe://td.consul/ns/default/dc/dc1/svc/web/extra",
            "spiffe://td.consul/ns/default/dc/dc1/svc/web?x=1",
        ] {
            let error = SpiffeId::parse(uri).unwrap_err();
            assert!(error.to_string().contains(uri), "{error}");
        }
    }
}
