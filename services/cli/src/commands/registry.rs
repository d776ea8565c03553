//! `plugworker registry`: the embedded Consul-compatible registry as a server.

use anyhow::Context;
use plugworker_embedded_consul::{IntentionAction, Registry, RegistryConfig};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// HTTP address to serve the Consul API on (Consul's default port is 8500).
    #[arg(
        long,
        env = "PLUGWORKER_REGISTRY_LISTEN",
        default_value = "127.0.0.1:8500"
    )]
    pub listen: String,
    /// Node name reported for every service.
    #[arg(long, default_value = "plugworker-dev")]
    pub node_name: String,
    /// Datacenter name reported.
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
    /// How often instances critical for longer than their DeregisterCriticalServiceAfter
    /// are removed.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub reap_interval: Duration,
    /// Lifetime of Connect leaf certificates (Consul's `LeafCertTTL`); leaves are renewed
    /// at 60-90 % of it.
    #[arg(
        long,
        env = "PLUGWORKER_REGISTRY_CONNECT_LEAF_TTL",
        default_value = "72h",
        value_parser = humantime::parse_duration
    )]
    pub connect_leaf_ttl: Duration,
    /// What `/v1/agent/connect/authorize` answers when no intention matches (Consul's
    /// `default_intention_policy`); unset, it follows the ACL default policy.
    #[arg(long, env = "PLUGWORKER_REGISTRY_DEFAULT_INTENTION_POLICY", value_enum)]
    pub default_intention_policy: Option<Policy>,
    /// Enforce ACLs like a Consul agent with `acl.enabled = true`: every request is
    /// authorized by its token (`X-Consul-Token`, `Authorization: Bearer`, `?token=`).
    #[arg(long, env = "PLUGWORKER_REGISTRY_ACL_ENABLED")]
    pub acl_enabled: bool,
    /// What tokens may do where no rule of theirs applies (Consul's `acl.default_policy`);
    /// also the answer of authorize when no intention matches.
    #[arg(
        long,
        env = "PLUGWORKER_REGISTRY_ACL_DEFAULT_POLICY",
        value_enum,
        default_value = "allow",
        requires = "acl_enabled"
    )]
    pub acl_default_policy: Policy,
    /// Secret of a management token that exists from the start (Consul's
    /// `acl.tokens.initial_management`); `/v1/acl/bootstrap` is then closed.
    #[arg(
        long,
        env = "PLUGWORKER_REGISTRY_ACL_BOOTSTRAP_TOKEN",
        hide_env_values = true,
        requires = "acl_enabled"
    )]
    pub acl_bootstrap_token: Option<String>,
}

/// `allow` or `deny`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Allow,
    Deny,
}

impl From<Policy> for IntentionAction {
    fn from(policy: Policy) -> Self {
        match policy {
            Policy::Allow => IntentionAction::Allow,
            Policy::Deny => IntentionAction::Deny,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let node_address = match address.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        ip => ip.to_string(),
    };
    let registry = Registry::new(RegistryConfig {
        node_name: args.node_name,
        datacenter: args.datacenter,
        node_address,
        reap_interval: args.reap_interval,
        connect_leaf_ttl: args.connect_leaf_ttl,
        default_intention_policy: args.default_intention_policy.map(Into::into),
        acl_enabled: args.acl_enabled,
        acl_default_policy: args.acl_default_policy.into(),
        acl_bootstrap_token: args.acl_bootstrap_token.filter(|t| !t.is_empty()),
    });
    if args.acl_enabled {
        tracing::info!(
            default_policy = ?args.acl_default_policy,
            "ACLs enforced; clients need CONSUL_HTTP_TOKEN"
        );
    }
    // The bound address on stdout, so scripts that asked for port 0 can find it.
    println!("registry listening on http://{address}");
    tracing::info!(%address, "embedded Consul-compatible registry serving; set CONSUL_HTTP_ADDR=http://{address}");
    registry
        .serve(listener, super::shutdown_signal())
        .await
        .context("registry server failed")?;
    tracing::info!("registry stopped");
    Ok(())
}
