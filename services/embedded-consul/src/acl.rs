//! ACLs as Consul enforces them: tokens (`X-Consul-Token`, `Authorization: Bearer`,
//! `?token=`), policies written in Consul's rule language (HCL or its JSON form), the
//! built-in `global-management` policy, the anonymous token, and the default policy for
//! anything no rule covers.
//!
//! Rule resolution follows `acl/policy_authorizer.go`: an exact rule (`service "web"`)
//! wins over prefix rules (`service_prefix "we"`), the longest prefix wins among those,
//! and when a token's policies give the same segment different levels, `deny` beats
//! `write` beats `read` (Consul's policy merger). Nothing matching falls to the default
//! policy. `read` is granted by `read` or `write`, `write` only by `write`.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The built-in management policy and the anonymous token, with Consul's fixed IDs.
pub(crate) const MANAGEMENT_POLICY_ID: &str = "00000000-0000-0000-0000-000000000001";
pub(crate) const ANONYMOUS_ACCESSOR_ID: &str = "00000000-0000-0000-0000-000000000002";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Read,
    Write,
    Deny,
}

impl Level {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" | "list" => Some(Level::Read),
            "write" => Some(Level::Write),
            "deny" => Some(Level::Deny),
            _ => None,
        }
    }

    /// Consul's merge: deny, then write, then read.
    fn merge(self, other: Level) -> Level {
        self.max(other)
    }

    fn grants(self, wanted: Access) -> bool {
        match (self, wanted) {
            (Level::Deny, _) => false,
            (Level::Write, _) => true,
            (Level::Read, Access::Read) => true,
            (Level::Read, Access::Write) => false,
        }
    }
}

/// The access a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// Resources with named segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Resource {
    Service,
    /// A service rule's `intentions` level (defaults to `read` under `read`/`write`).
    Intention,
    Node,
    Key,
    Agent,
    Session,
    Event,
    Query,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Resource::Service => "service",
            Resource::Intention => "intention",
            Resource::Node => "node",
            Resource::Key => "key",
            Resource::Agent => "agent",
            Resource::Session => "session",
            Resource::Event => "event",
            Resource::Query => "query",
        }
    }

    fn from_block(name: &str) -> Option<(Self, bool)> {
        let (base, prefix) = match name.strip_suffix("_prefix") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let resource = match base {
            "service" => Resource::Service,
            "node" => Resource::Node,
            "key" => Resource::Key,
            "agent" => Resource::Agent,
            "session" => Resource::Session,
            "event" => Resource::Event,
            "query" => Resource::Query,
            _ => return None,
        };
        Some((resource, prefix))
    }
}

/// Scopes without segments (`operator = "read"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Scope {
    Operator,
    Acl,
    Keyring,
    Mesh,
    Peering,
}

impl Scope {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "operator" => Some(Scope::Operator),
            "acl" => Some(Scope::Acl),
            "keyring" => Some(Scope::Keyring),
            "mesh" => Some(Scope::Mesh),
            "peering" => Some(Scope::Peering),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scope::Operator => "operator",
            Scope::Acl => "acl",
            Scope::Keyring => "keyring",
            Scope::Mesh => "mesh",
            Scope::Peering => "peering",
        }
    }
}

/// Rules of one or more policies, merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Rules {
    exact: BTreeMap<(Resource, String), Level>,
    prefix: BTreeMap<(Resource, String), Level>,
    scopes: BTreeMap<Scope, Level>,
}

impl Rules {
    fn add(&mut self, resource: Resource, segment: &str, prefix: bool, level: Level) {
        let map = if prefix {
            &mut self.prefix
        } else {
            &mut self.exact
        };
        let key = (resource, segment.to_string());
        let merged = map.get(&key).map_or(level, |l| l.merge(level));
        map.insert(key, merged);
    }

    pub fn merge(&mut self, other: &Rules) {
        for ((r, s), l) in &other.exact {
            self.add(*r, s, false, *l);
        }
        for ((r, s), l) in &other.prefix {
            self.add(*r, s, true, *l);
        }
        for (scope, level) in &other.scopes {
            let merged = self.scopes.get(scope).map_or(*level, |l| l.merge(*level));
            self.scopes.insert(*scope, merged);
        }
    }

    /// The level the rules give `name`, if any rule covers it.
    fn level(&self, resource: Resource, name: &str) -> Option<Level> {
        if let Some(level) = self.exact.get(&(resource, name.to_string())) {
            return Some(*level);
        }
        self.prefix
            .iter()
            .filter(|((r, p), _)| *r == resource && name.starts_with(p.as_str()))
            .max_by_key(|((_, p), _)| p.len())
            .map(|(_, l)| *l)
    }

    /// The rules of a service identity (`structs.ACLServiceIdentity.SyntheticPolicy`).
    pub fn service_identity(service: &str) -> Rules {
        let mut rules = Rules::default();
        rules.add(Resource::Service, service, false, Level::Write);
        rules.add(
            Resource::Service,
            &format!("{service}-sidecar-proxy"),
            false,
            Level::Write,
        );
        rules.add(Resource::Intention, service, false, Level::Read);
        rules.add(Resource::Service, "", true, Level::Read);
        rules.add(Resource::Node, "", true, Level::Read);
        rules
    }
}

/// Why rules were refused.
#[derive(Debug, thiserror::Error)]
#[error("Failed to parse ACL rules: {0}")]
pub(crate) struct RulesError(String);

/// Parses rules in Consul's HCL syntax or its JSON form.
pub(crate) fn parse_rules(text: &str) -> Result<Rules, RulesError> {
    let trimmed = text.trim();
    let items = if trimmed.starts_with('{') {
        json_items(trimmed)?
    } else {
        hcl_items(trimmed)?
    };
    let mut rules = Rules::default();
    for item in items {
        match item {
            Item::Scalar(name, value) => {
                let scope = Scope::parse(&name)
                    .ok_or_else(|| RulesError(format!("unknown ACL rule {name:?}")))?;
                let level = Level::parse(&value)
                    .ok_or_else(|| RulesError(format!("Invalid {name} policy: {value:?}")))?;
                let merged = rules.scopes.get(&scope).map_or(level, |l| l.merge(level));
                rules.scopes.insert(scope, merged);
            }
            Item::Block(block, segment, fields) => {
                let (resource, prefix) = Resource::from_block(&block)
                    .ok_or_else(|| RulesError(format!("unknown ACL rule {block:?}")))?;
                let mut policy = None;
                let mut intentions = None;
                for (field, value) in fields {
                    let level = Level::parse(&value)
                        .ok_or_else(|| RulesError(format!("Invalid {block} policy: {value:?}")))?;
                    match field.as_str() {
                        "policy" => policy = Some(level),
                        "intentions" if resource == Resource::Service => intentions = Some(level),
                        other => {
                            return Err(RulesError(format!(
                                "unknown field {other:?} in {block} {segment:?}"
                            )));
                        }
                    }
                }
                let policy = policy
                    .ok_or_else(|| RulesError(format!("{block} {segment:?} has no policy")))?;
                rules.add(resource, &segment, prefix, policy);
                if resource == Resource::Service {
                    // Consul: `intentions` defaults to read under a read or write policy.
                    let intentions = intentions.unwrap_or(if policy == Level::Deny {
                        Level::Deny
                    } else {
                        Level::Read
                    });
                    rules.add(Resource::Intention, &segment, prefix, intentions);
                }
            }
        }
    }
    Ok(rules)
}

enum Item {
    Scalar(String, String),
    Block(String, String, Vec<(String, String)>),
}

fn json_items(text: &str) -> Result<Vec<Item>, RulesError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| RulesError(format!("invalid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(RulesError("rules must be an object".into()));
    };
    let mut items = Vec::new();
    for (name, value) in map {
        match value {
            Value::String(level) => items.push(Item::Scalar(name, level)),
            Value::Object(segments) => {
                for (segment, body) in segments {
                    items.push(Item::Block(name.clone(), segment, json_fields(&body)?));
                }
            }
            other => {
                return Err(RulesError(format!(
                    "unexpected value for {name:?}: {other}"
                )));
            }
        }
    }
    Ok(items)
}

fn json_fields(body: &Value) -> Result<Vec<(String, String)>, RulesError> {
    let Value::Object(fields) = body else {
        return Err(RulesError(format!("expected an object, got {body}")));
    };
    fields
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            other => Err(RulesError(format!("{k:?} must be a string, got {other}"))),
        })
        .collect()
}

#[derive(Debug, PartialEq)]
enum Lex {
    Ident(String),
    Str(String),
    Equals,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<Lex>, RulesError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() || c == ',' => {
                chars.next();
            }
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' => {
                chars.next();
                if chars.next() != Some('/') {
                    return Err(RulesError("unexpected '/'".into()));
                }
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '=' => {
                chars.next();
                tokens.push(Lex::Equals);
            }
            '{' => {
                chars.next();
                tokens.push(Lex::Open);
            }
            '}' => {
                chars.next();
                tokens.push(Lex::Close);
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(RulesError("unterminated string".into())),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(other) => s.push(other),
                            None => return Err(RulesError("unterminated string".into())),
                        },
                        Some(other) => s.push(other),
                    }
                }
                tokens.push(Lex::Str(s));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        s.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Lex::Ident(s));
            }
            other => return Err(RulesError(format!("unexpected character {other:?}"))),
        }
    }
    Ok(tokens)
}

fn hcl_items(text: &str) -> Result<Vec<Item>, RulesError> {
    let tokens = tokenize(text)?;
    let mut items = Vec::new();
    let mut i = 0;
    let expected =
        |what: &str, got: Option<&Lex>| RulesError(format!("expected {what}, got {got:?}"));
    while i < tokens.len() {
        let Lex::Ident(name) = &tokens[i] else {
            return Err(expected("a rule name", tokens.get(i)));
        };
        match tokens.get(i + 1) {
            Some(Lex::Equals) => {
                let Some(Lex::Str(value)) = tokens.get(i + 2) else {
                    return Err(expected("a string", tokens.get(i + 2)));
                };
                items.push(Item::Scalar(name.clone(), value.clone()));
                i += 3;
            }
            Some(Lex::Str(segment)) => {
                if tokens.get(i + 2) != Some(&Lex::Open) {
                    return Err(expected("'{'", tokens.get(i + 2)));
                }
                i += 3;
                let mut fields = Vec::new();
                loop {
                    match tokens.get(i) {
                        Some(Lex::Close) => {
                            i += 1;
                            break;
                        }
                        Some(Lex::Ident(field)) => {
                            if tokens.get(i + 1) != Some(&Lex::Equals) {
                                return Err(expected("'='", tokens.get(i + 1)));
                            }
                            let Some(Lex::Str(value)) = tokens.get(i + 2) else {
                                return Err(expected("a string", tokens.get(i + 2)));
                            };
                            fields.push((field.clone(), value.clone()));
                            i += 3;
                        }
                        other => return Err(expected("a field or '}'", other)),
                    }
                }
                items.push(Item::Block(name.clone(), segment.clone(), fields));
            }
            other => return Err(expected("'=' or a label", other)),
        }
    }
    Ok(items)
}

/// What a request may do: resolved from its token.
#[derive(Clone, Debug)]
pub(crate) struct Authz {
    pub accessor_id: String,
    /// `None`: everything (ACLs off, or a management token).
    pub rules: Option<Arc<Rules>>,
    pub default_allow: bool,
}

impl Authz {
    pub fn manage_all(accessor_id: &str) -> Self {
        Self {
            accessor_id: accessor_id.to_string(),
            rules: None,
            default_allow: true,
        }
    }

    pub fn allows(&self, resource: Resource, name: &str, access: Access) -> bool {
        match &self.rules {
            None => true,
            Some(rules) => rules
                .level(resource, name)
                .map_or(self.default_allow, |l| l.grants(access)),
        }
    }

    pub fn allows_scope(&self, scope: Scope, access: Access) -> bool {
        match &self.rules {
            None => true,
            Some(rules) => rules
                .scopes
                .get(&scope)
                .map_or(self.default_allow, |l| l.grants(access)),
        }
    }

    /// Consul's `PermissionDeniedByACL` text.
    pub fn denied(&self, resource: Resource, name: &str, access: Access) -> String {
        let resource = if resource == Resource::Intention {
            "intention"
        } else {
            resource.as_str()
        };
        let mut message = format!(
            "Permission denied: token with AccessorID '{}' lacks permission '{resource}:{}'",
            self.accessor_id,
            access.as_str()
        );
        if !name.is_empty() {
            message.push_str(&format!(" on {name:?}"));
        }
        message
    }

    pub fn denied_scope(&self, scope: Scope, access: Access) -> String {
        format!(
            "Permission denied: token with AccessorID '{}' lacks permission '{}:{}'",
            self.accessor_id,
            scope.as_str(),
            access.as_str()
        )
    }
}

/// A policy (`structs.ACLPolicy`).
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub id: String,
    pub name: String,
    pub description: String,
    pub rules_text: String,
    pub rules: Rules,
    pub datacenters: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A token (`structs.ACLToken`).
#[derive(Clone, Debug)]
pub(crate) struct AclToken {
    pub accessor_id: String,
    pub secret_id: String,
    pub description: String,
    pub policy_ids: Vec<String>,
    pub service_identities: Vec<String>,
    pub local: bool,
    pub create_time: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// The ACL state.
pub(crate) struct Acl {
    pub enabled: bool,
    pub default_allow: bool,
    pub policies: BTreeMap<String, Policy>,
    /// Tokens by accessor ID.
    pub tokens: BTreeMap<String, AclToken>,
    pub bootstrapped_at: Option<u64>,
    pub index: u64,
}

impl Acl {
    pub fn new(enabled: bool, default_allow: bool, index: u64, now: &str) -> Self {
        let mut acl = Self {
            enabled,
            default_allow,
            policies: BTreeMap::new(),
            tokens: BTreeMap::new(),
            bootstrapped_at: None,
            index,
        };
        acl.policies.insert(
            MANAGEMENT_POLICY_ID.into(),
            Policy {
                id: MANAGEMENT_POLICY_ID.into(),
                name: "global-management".into(),
                description: "Builtin Policy that grants unlimited access".into(),
                rules_text: String::new(),
                rules: Rules::default(),
                datacenters: Vec::new(),
                create_index: index,
                modify_index: index,
            },
        );
        acl.tokens.insert(
            ANONYMOUS_ACCESSOR_ID.into(),
            AclToken {
                accessor_id: ANONYMOUS_ACCESSOR_ID.into(),
                secret_id: "anonymous".into(),
                description: "Anonymous Token".into(),
                policy_ids: Vec::new(),
                service_identities: Vec::new(),
                local: false,
                create_time: now.to_string(),
                create_index: index,
                modify_index: index,
            },
        );
        acl
    }

    /// Consul's `initial_management` token: a management token with a known secret.
    pub fn add_initial_management(&mut self, secret: &str, index: u64, now: &str) {
        let accessor_id = "00000000-0000-0000-0000-0000000000ff".to_string();
        self.tokens.insert(
            accessor_id.clone(),
            AclToken {
                accessor_id,
                secret_id: secret.to_string(),
                description: "Initial Management Token".into(),
                policy_ids: vec![MANAGEMENT_POLICY_ID.into()],
                service_identities: Vec::new(),
                local: false,
                create_time: now.to_string(),
                create_index: index,
                modify_index: index,
            },
        );
        self.bootstrapped_at = Some(index);
    }

    pub fn token_by_secret(&self, secret: &str) -> Option<&AclToken> {
        self.tokens.values().find(|t| t.secret_id == secret)
    }

    pub fn policy_by_name(&self, name: &str) -> Option<&Policy> {
        self.policies.values().find(|p| p.name == name)
    }

    /// The authorizer of a token.
    pub fn authorizer(&self, token: &AclToken) -> Authz {
        if !self.enabled || token.policy_ids.iter().any(|p| p == MANAGEMENT_POLICY_ID) {
            return Authz::manage_all(&token.accessor_id);
        }
        let mut rules = Rules::default();
        for id in &token.policy_ids {
            if let Some(policy) = self.policies.get(id) {
                rules.merge(&policy.rules);
            }
        }
        for service in &token.service_identities {
            rules.merge(&Rules::service_identity(service));
        }
        Authz {
            accessor_id: token.accessor_id.clone(),
            rules: Some(Arc::new(rules)),
            default_allow: self.default_allow,
        }
    }

    /// Resolves a secret (empty: anonymous); `None` for an unknown one.
    pub fn resolve(&self, secret: &str) -> Option<Authz> {
        if !self.enabled {
            return Some(Authz::manage_all(""));
        }
        let secret = if secret.is_empty() {
            "anonymous"
        } else {
            secret
        };
        self.token_by_secret(secret).map(|t| self.authorizer(t))
    }

    pub fn policy_view(&self, policy: &Policy, with_rules: bool) -> Value {
        let mut out = Map::new();
        out.insert("ID".into(), policy.id.clone().into());
        out.insert("Name".into(), policy.name.clone().into());
        out.insert("Description".into(), policy.description.clone().into());
        if with_rules {
            out.insert("Rules".into(), policy.rules_text.clone().into());
        }
        if !policy.datacenters.is_empty() {
            out.insert("Datacenters".into(), policy.datacenters.clone().into());
        }
        out.insert(
            "Hash".into(),
            hash(&[&policy.name, &policy.rules_text]).into(),
        );
        out.insert("CreateIndex".into(), policy.create_index.into());
        out.insert("ModifyIndex".into(), policy.modify_index.into());
        Value::Object(out)
    }

    pub fn token_view(&self, token: &AclToken) -> Value {
        let mut out = Map::new();
        out.insert("AccessorID".into(), token.accessor_id.clone().into());
        out.insert("SecretID".into(), token.secret_id.clone().into());
        out.insert("Description".into(), token.description.clone().into());
        if !token.policy_ids.is_empty() {
            let links: Vec<Value> = token
                .policy_ids
                .iter()
                .map(|id| {
                    let name = self
                        .policies
                        .get(id)
                        .map(|p| p.name.clone())
                        .unwrap_or_default();
                    serde_json::json!({"ID": id, "Name": name})
                })
                .collect();
            out.insert("Policies".into(), links.into());
        }
        if !token.service_identities.is_empty() {
            let ids: Vec<Value> = token
                .service_identities
                .iter()
                .map(|s| serde_json::json!({"ServiceName": s}))
                .collect();
            out.insert("ServiceIdentities".into(), ids.into());
        }
        out.insert("Local".into(), token.local.into());
        out.insert("CreateTime".into(), token.create_time.clone().into());
        let mut parts: Vec<&str> = vec![&token.description];
        parts.extend(token.policy_ids.iter().map(String::as_str));
        parts.extend(token.service_identities.iter().map(String::as_str));
        out.insert("Hash".into(), hash(&parts).into());
        out.insert("CreateIndex".into(), token.create_index.into());
        out.insert("ModifyIndex".into(), token.modify_index.into());
        Value::Object(out)
    }
}

/// An opaque content hash, base64 like Consul's `Hash` fields.
fn hash(parts: &[&str]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part.as_bytes());
        context.update(&[0]);
    }
    crate::go::base64(context.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(rules: &str, default_allow: bool) -> Authz {
        Authz {
            accessor_id: "a".into(),
            rules: Some(Arc::new(parse_rules(rules).unwrap())),
            default_allow,
        }
    }

    #[test]
    fn exact_beats_prefix_and_the_longest_prefix_wins() {
        let a = authz(
            r#"
            # runners write only their own name
            service "web" { policy = "write" }
            service_prefix "" { policy = "read" }
            service_prefix "secret-" { policy = "deny" }
            service "secret-ok" { policy = "read" }
            node_prefix "" { policy = "read" }
            key_prefix "app/" { policy = "write" }
            operator = "read"
            "#,
            false,
        );
        assert!(a.allows(Resource::Service, "web", Access::Write));
        assert!(a.allows(Resource::Service, "db", Access::Read));
        assert!(!a.allows(Resource::Service, "db", Access::Write));
        assert!(!a.allows(Resource::Service, "secret-x", Access::Read));
        assert!(a.allows(Resource::Service, "secret-ok", Access::Read));
        assert!(a.allows(Resource::Key, "app/x", Access::Write));
        assert!(
            !a.allows(Resource::Key, "other", Access::Read),
            "default deny"
        );
        assert!(a.allows_scope(Scope::Operator, Access::Read));
        assert!(!a.allows_scope(Scope::Operator, Access::Write));
        assert!(a.allows(Resource::Intention, "web", Access::Read));
        assert!(!a.allows(Resource::Intention, "web", Access::Write));
    }

    #[test]
    fn the_json_form_means_the_same() {
        let hcl = parse_rules(r#"service "web" { policy = "write" } operator = "read""#).unwrap();
        let json = parse_rules(r#"{"service": {"web": {"policy": "write"}}, "operator": "read"}"#)
            .unwrap();
        assert_eq!(hcl, json);
    }

    #[test]
    fn merged_policies_let_deny_win_then_write() {
        let mut rules = parse_rules(r#"service "web" { policy = "read" }"#).unwrap();
        rules.merge(&parse_rules(r#"service "web" { policy = "write" }"#).unwrap());
        assert_eq!(rules.level(Resource::Service, "web"), Some(Level::Write));
        rules.merge(&parse_rules(r#"service "web" { policy = "deny" }"#).unwrap());
        assert_eq!(rules.level(Resource::Service, "web"), Some(Level::Deny));
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            r#"service "web" { policy = "bogus" }"#,
            r#"servce "web" { policy = "read" }"#,
            r#"service "web" { policy = "read" "#,
            r#"service "web" { }"#,
            r#"{"service": 1}"#,
        ] {
            assert!(parse_rules(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn denial_messages_follow_consul() {
        let a = authz("", false);
        assert_eq!(
            a.denied(Resource::Service, "web", Access::Write),
            r#"Permission denied: token with AccessorID 'a' lacks permission 'service:write' on "web""#
        );
    }
}
