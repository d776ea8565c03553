//! Operator calls: ACL bootstrap, policies, tokens, and `service-intentions` config entries.
//!
//! What running a service mesh with ACLs and intentions on takes: a management token,
//! one least-privilege token per process, and an intention per allowed caller → service
//! pair. The wire formats are Consul's (`agent/acl_endpoint.go`,
//! `agent/config_endpoint.go`), so the same calls work against a real Consul agent and any
//! registry that speaks its API.

use crate::client::{ConsulClient, Error as ConsulError};
use reqwest::Method;
use serde::{Deserialize, Serialize};

/// Errors of the admin calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Consul(#[from] ConsulError),
    /// Consul accepted the request but did not apply it (`PUT /v1/config` answered
    /// `false`: a check-and-set index that no longer matched).
    #[error("Consul did not apply the {kind} config entry {name:?}")]
    NotApplied { kind: String, name: String },
    /// A name Consul would refuse, caught before the round trip.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
}

/// An ACL policy as Consul returns it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclPolicy {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub description: String,
    pub rules: String,
}

/// A policy to create.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NewPolicy {
    pub name: String,
    pub description: String,
    /// HCL rules (`service "web" { policy = "write" }`).
    pub rules: String,
}

/// A link from a token to a policy, by name.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PolicyLink {
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A service identity: Consul expands it to `service "<name>" { policy = "write" }`
/// (plus its sidecar) and `service_prefix "" { policy = "read" }` +
/// `node_prefix "" { policy = "read" }`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceIdentity {
    pub service_name: String,
}

/// A token to create. Consul generates the accessor and secret.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NewToken {
    pub description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyLink>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_identities: Vec<ServiceIdentity>,
}

/// An ACL token as Consul returns it. `Debug` hides the secret.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclToken {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    pub description: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub policies: Vec<PolicyLink>,
    #[serde(deserialize_with = "null_as_empty")]
    pub service_identities: Vec<ServiceIdentity>,
}

impl std::fmt::Debug for AclToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclToken")
            .field("accessor_id", &self.accessor_id)
            .field("secret_id", &"<hidden>")
            .field("description", &self.description)
            .field("policies", &self.policies)
            .field("service_identities", &self.service_identities)
            .finish()
    }
}

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// What an intention does.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IntentionAction {
    Allow,
    Deny,
}

/// One source of a `service-intentions` entry.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct IntentionSource {
    /// The calling service (`*` for any).
    pub name: String,
    pub action: IntentionAction,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A `service-intentions` config entry: who may call the destination service `name`.
/// Applying one replaces every intention of that destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceIntentions {
    pub name: String,
    pub sources: Vec<IntentionSource>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigEntry<'a> {
    kind: &'static str,
    name: &'a str,
    sources: &'a [IntentionSource],
}

impl ConsulClient {
    /// `PUT /v1/acl/bootstrap`: the first management token (once per cluster).
    pub async fn acl_bootstrap(&self) -> Result<AclToken, Error> {
        let body = self
            .send_json(Method::PUT, "/v1/acl/bootstrap", None::<&()>)
            .await?;
        Ok(self.parse_json("/v1/acl/bootstrap", &body)?)
    }

    /// `PUT /v1/acl/policy`: creates a policy (its name must be unique).
    pub async fn acl_policy_create(&self, policy: &NewPolicy) -> Result<AclPolicy, Error> {
        check_name("policy name", &policy.name)?;
        let body = self
            .send_json(Method::PUT, "/v1/acl/policy", Some(policy))
            .await?;
        Ok(self.parse_json("/v1/acl/policy", &body)?)
    }

    /// `PUT /v1/acl/token`: creates a token; the answer carries its secret.
    pub async fn acl_token_create(&self, token: &NewToken) -> Result<AclToken, Error> {
        for identity in &token.service_identities {
            check_name("service identity", &identity.service_name)?;
        }
        let body = self
            .send_json(Method::PUT, "/v1/acl/token", Some(token))
            .await?;
        Ok(self.parse_json("/v1/acl/token", &body)?)
    }

    /// `PUT /v1/config` with a `service-intentions` entry (needs `intentions = "write"` on
    /// the destination, which a management token has).
    pub async fn apply_service_intentions(&self, entry: &ServiceIntentions) -> Result<(), Error> {
        let body = self
            .send_json(
                Method::PUT,
                "/v1/config",
                Some(&ConfigEntry {
                    kind: "service-intentions",
                    name: &entry.name,
                    sources: &entry.sources,
                }),
            )
            .await?;
        let applied: bool = self.parse_json("/v1/config", &body)?;
        if applied {
            Ok(())
        } else {
            Err(Error::NotApplied {
                kind: "service-intentions".into(),
                name: entry.name.clone(),
            })
        }
    }
}

impl ConsulClient {
    /// `GET /v1/connect/intentions/check?source=&destination=`: would an intention (or,
    /// when none matches, the default intention policy) let `source` connect to
    /// `destination`? The token needs `service:read` on the destination only, as the answer
    /// reveals no intention (`agent/intentions_endpoint.go`, `IntentionCheck`).
    pub async fn intention_check(
        &self,
        source: &str,
        destination: &str,
    ) -> Result<bool, ConsulError> {
        let path = "/v1/connect/intentions/check";
        let request = self
            .request(Method::GET, path)
            .query(&[("source", source), ("destination", destination)]);
        let response = self.send(request, Method::GET, path).await?;
        let answer: IntentionCheck = self.parse_json(path, &response.bytes)?;
        Ok(answer.allowed)
    }
}

/// Answer of `GET /v1/connect/intentions/check` (`structs.IntentionQueryCheckResponse`).
#[derive(Deserialize)]
struct IntentionCheck {
    #[serde(rename = "Allowed")]
    allowed: bool,
}

impl ConsulClient {
    /// Sends `body` (if any) as JSON; the answer's bytes.
    async fn send_json<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ConsulError> {
        let mut request = self.request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(body);
        }
        Ok(self.send(request, method, path).await?.bytes)
    }

    fn parse_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        bytes: &[u8],
    ) -> Result<T, ConsulError> {
        serde_json::from_slice(bytes).map_err(|source| ConsulError::Decode {
            path: path.to_string(),
            source,
        })
    }
}

/// Consul's rule for policy names and service identities: 1–128 (policies) or 1–256
/// (services) of `[A-Za-z0-9_-]`; service identities are lowercase.
fn check_name(what: &'static str, name: &str) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidName {
        what,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > 128 {
        return Err(invalid("must be 1 to 128 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid("may hold only letters, digits, '-' and '_'"));
    }
    if what == "service identity" && name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid("must be lowercase"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_sent_and_read_in_consuls_shape() {
        let token = NewToken {
            description: "runner".into(),
            policies: vec![],
            service_identities: vec![ServiceIdentity {
                service_name: "nlp-runner".into(),
            }],
        };
        assert_eq!(
            serde_json::to_value(&token).unwrap(),
            serde_json::json!({"Description": "runner", "ServiceIdentities": [{"ServiceName": "nlp-runner"}]})
        );
        let read: AclToken = serde_json::from_str(
            r#"{"AccessorID":"a","SecretID":"s","Description":"d","Policies":null,"Local":false}"#,
        )
        .unwrap();
        assert_eq!(read.secret_id, "s");
        assert!(read.policies.is_empty());
        assert!(!format!("{read:?}").contains("\"s\""));
    }

    #[test]
    fn intentions_are_sent_as_a_config_entry() {
        let sources = [IntentionSource {
            name: "controller".into(),
            action: IntentionAction::Allow,
            description: String::new(),
        }];
        let entry = ConfigEntry {
            kind: "service-intentions",
            name: "nlp-runner",
            sources: &sources,
        };
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            serde_json::json!({"Kind": "service-intentions", "Name": "nlp-runner",
                "Sources": [{"Name": "controller", "Action": "allow"}]})
        );
    }

    #[test]
    fn bad_names_are_refused_before_the_round_trip() {
        assert!(check_name("service identity", "nlp-runner").is_ok());
        assert!(check_name("service identity", "Nlp").is_err());
        assert!(check_name("policy name", "a b").is_err());
        assert!(check_name("policy name", "").is_err());
    }
}
