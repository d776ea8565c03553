//! The service mesh of `plugworker dev`: the embedded registry runs with ACLs and
//! intentions on, both default deny, exactly as docs/security.md prescribes for a real
//! Consul, so `plugworker dev` exercises the same trust rules as production.
//!
//! With a random bootstrap (management) token, `dev` creates:
//! - for each runner, a token with the runner's service identity
//!   (`ServiceIdentities: [{ServiceName}]`: write its own service, read the catalog) and
//!   the `plugworker-gallery-reader` policy (read `plugworker/galleries/`, the galleries'
//!   versions a runner following a gallery watches), and a `service-intentions` entry
//!   allowing the controller to call that service;
//! - for the controller, a token with the `plugworker-controller` policy
//!   ([`plugworker_discovery::policy::controller_rules`]);
//! - for the person at the keyboard, an `operator` token ([`DevMesh::operator`]): the
//!   service identity `operator` (its Connect certificate, read the catalog), intentions
//!   `operator → each runner`, and KV write on `plugworker/pipelines/` and
//!   `plugworker/galleries/`: what `call`, `algorithms`, `pipeline` and `gallery` need.
//!   It reaches them through dev.json ([`super::dev_session`]).
//!
//! Each child gets its token through `CONSUL_HTTP_TOKEN`; the management token never
//! leaves this process.

use anyhow::Context;
use plugworker_consul_client::admin::{
    IntentionAction, IntentionSource, NewPolicy, NewToken, PolicyLink, ServiceIdentity,
    ServiceIntentions,
};
use plugworker_consul_client::{ConsulClient, ConsulConfig};
use plugworker_controller::Transport;
use plugworker_discovery::Mode;
use plugworker_discovery::policy::controller_rules;
use plugworker_embedded_consul::{IntentionAction as RegistryAction, Registry, RegistryConfig};
use std::time::Duration;

/// The controller's Connect service name in `dev`.
pub const CONTROLLER_SERVICE: &str = "controller";
/// The Connect identity of the operator token (dev.json).
pub const OPERATOR_SERVICE: &str = "operator";

/// The operator's rules besides its service identity: write (and read) the stored
/// pipelines and the galleries' announced versions.
const OPERATOR_RULES: &str = "key_prefix \"plugworker/pipelines/\" {\n  policy = \"write\"\n}\nkey_prefix \"plugworker/galleries/\" {\n  policy = \"write\"\n}\n";

/// What a runner's token may do beside its service identity: read the galleries'
/// versions (`plugworker/galleries/<location hash>`, written by `plugworker gallery`), so
/// a runner following a gallery reloads as soon as one is published, not at its next poll.
/// The deployments grant the same (infra/consul/init.sh, terraform's mesh.py).
const GALLERY_READER_RULES: &str =
    "key_prefix \"plugworker/galleries/\" {\n  policy = \"read\"\n}\n";

/// The embedded registry with ACLs and intentions on, and the management client.
pub struct DevMesh {
    management: ConsulClient,
    address: String,
    /// The runners' `plugworker-gallery-reader` policy, created once at start.
    gallery_reader: PolicyLink,
}

/// Starts the embedded registry with ACLs (default deny) and intentions (default deny).
pub async fn start_registry()
-> anyhow::Result<(plugworker_embedded_consul::RunningRegistry, DevMesh)> {
    let bootstrap = random_secret();
    let registry = Registry::spawn(
        "127.0.0.1:0",
        RegistryConfig {
            acl_enabled: true,
            acl_default_policy: RegistryAction::Deny,
            acl_bootstrap_token: Some(bootstrap.clone()),
            default_intention_policy: Some(RegistryAction::Deny),
            ..RegistryConfig::default()
        },
    )
    .await
    .context("cannot start the embedded registry")?;
    let address = registry.url();
    let management = client(&address, &bootstrap)?;
    let gallery_reader = management
        .acl_policy_create(&NewPolicy {
            name: "plugworker-gallery-reader".into(),
            description: "plugworker dev: runners read the galleries' versions".into(),
            rules: GALLERY_READER_RULES.into(),
        })
        .await
        .context("cannot create the runners' ACL policy")?;
    Ok((
        registry,
        DevMesh {
            management,
            address,
            gallery_reader: PolicyLink {
                id: gallery_reader.id,
                name: String::new(),
            },
        },
    ))
}

/// A random token secret in Consul's UUID form (122 random bits).
fn random_secret() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn client(address: &str, token: &str) -> anyhow::Result<ConsulClient> {
    Ok(ConsulClient::new(ConsulConfig {
        address: address.to_string(),
        token: Some(token.to_string()),
        ..Default::default()
    })?)
}

impl DevMesh {
    /// Admits the runner `service`: creates its token and the intention letting the
    /// controller call it. Returns the environment of its process.
    pub async fn admit_runner(&self, service: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
        let token = self
            .management
            .acl_token_create(&NewToken {
                description: format!("plugworker dev: runner {service}"),
                policies: vec![self.gallery_reader.clone()],
                service_identities: vec![ServiceIdentity {
                    service_name: service.to_string(),
                }],
            })
            .await
            .with_context(|| format!("cannot create the ACL token of runner {service}"))?;
        self.management
            .apply_service_intentions(&ServiceIntentions {
                name: service.to_string(),
                sources: vec![
                    IntentionSource {
                        name: CONTROLLER_SERVICE.to_string(),
                        action: IntentionAction::Allow,
                        description: "plugworker dev: the controller runs jobs".into(),
                    },
                    IntentionSource {
                        name: OPERATOR_SERVICE.to_string(),
                        action: IntentionAction::Allow,
                        description: "plugworker dev: call and algorithms (dev.json)".into(),
                    },
                ],
            })
            .await
            .with_context(|| {
                format!("cannot allow the controller and the operator to call {service}")
            })?;
        Ok(vec![
            ("CONSUL_HTTP_ADDR", self.address.clone()),
            ("CONSUL_HTTP_TOKEN", token.secret_id),
            // The token may write this service name only: register under exactly it.
            ("PLUGWORKER_SERVICE_NAME", service.to_string()),
            // Several runners share the machine: each health port is its own.
            ("PLUGWORKER_HEALTH_LISTEN", "127.0.0.1:0".to_string()),
        ])
    }

    /// Stores the pipeline `name` (its JSON) where the controller watches for named
    /// pipelines, with the management token (the controller's may only read them).
    pub async fn store_pipeline(&self, name: &str, json: &str) -> anyhow::Result<()> {
        let key = format!("{}{name}", plugworker_jobs::pipeline::KV_PREFIX);
        let stored = self
            .management
            .kv_put(&key, json.as_bytes(), None)
            .await
            .with_context(|| format!("cannot store the pipeline {name}"))?;
        anyhow::ensure!(stored, "the registry did not store the pipeline {name}");
        Ok(())
    }

    /// The operator token's secret (see the module's documentation).
    pub async fn operator(&self) -> anyhow::Result<String> {
        self.policy_token(
            "operator",
            NewPolicy {
                name: "plugworker-operator".into(),
                description: "plugworker dev: write pipelines and gallery versions".into(),
                rules: OPERATOR_RULES.into(),
            },
            vec![ServiceIdentity {
                service_name: OPERATOR_SERVICE.to_string(),
            }],
        )
        .await
    }

    /// A token of `policy` (created here) and `identities`, for `role`; its secret.
    async fn policy_token(
        &self,
        role: &str,
        policy: NewPolicy,
        identities: Vec<ServiceIdentity>,
    ) -> anyhow::Result<String> {
        let policy = self
            .management
            .acl_policy_create(&policy)
            .await
            .with_context(|| format!("cannot create the {role}'s ACL policy"))?;
        let token = self
            .management
            .acl_token_create(&NewToken {
                description: format!("plugworker dev: {role}"),
                policies: vec![PolicyLink {
                    id: policy.id,
                    name: String::new(),
                }],
                service_identities: identities,
            })
            .await
            .with_context(|| format!("cannot create the {role}'s ACL token"))?;
        Ok(token.secret_id)
    }

    /// The registry's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The controller's side: its token (policy `plugworker-controller`), its Connect
    /// identity, and a resolver of Connect-native runners.
    pub async fn controller(&self) -> anyhow::Result<(ConsulClient, (Mode, Transport))> {
        let token = self
            .policy_token(
                "controller",
                NewPolicy {
                    name: "plugworker-controller".into(),
                    description:
                        "plugworker controller: its own Connect identity, read the catalog".into(),
                    rules: controller_rules(CONTROLLER_SERVICE),
                },
                Vec::new(),
            )
            .await?;
        let consul = client(&self.address, &token)?;
        let identity = plugworker_mesh::Identity::start(
            consul.clone(),
            CONTROLLER_SERVICE,
            Duration::from_secs(10),
        )
        .await
        .context("the controller cannot get its Connect certificate")?;
        Ok((consul, (Mode::Connect, Transport::Mesh(identity))))
    }
}

#[cfg(test)]
mod tests {
    use plugworker_consul_client::QueryOptions;

    #[tokio::test]
    async fn a_runner_reads_the_galleries_versions_and_writes_no_key() {
        let (_registry, mesh) = super::start_registry().await.unwrap();
        let env = mesh.admit_runner("image-runner").await.unwrap();
        let token = &env
            .iter()
            .find(|(k, _)| *k == "CONSUL_HTTP_TOKEN")
            .unwrap()
            .1;
        let runner = super::client(mesh.address(), token).unwrap();
        let key = "plugworker/galleries/0123456789abcdef";
        assert!(mesh.management.kv_put(key, b"v1", None).await.unwrap());
        let (pair, _) = runner.kv_get(key, QueryOptions::default()).await.unwrap();
        assert_eq!(pair.unwrap().value, b"v1");
        assert!(runner.kv_put(key, b"v2", None).await.is_err());
        let pipelines = "plugworker/pipelines/meme_report";
        assert!(
            mesh.management
                .kv_put(pipelines, b"{}", None)
                .await
                .unwrap()
        );
        assert!(
            runner
                .kv_get(pipelines, QueryOptions::default())
                .await
                .is_err()
        );
    }

    #[test]
    fn secrets_look_like_consuls_and_differ() {
        let a = super::random_secret();
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        assert_ne!(a, super::random_secret());
    }
}
