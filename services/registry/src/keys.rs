//! Key normalisation for request bodies.
//!
//! Consul accepts a registration written with its Go field names (`DeregisterCriticalServiceAfter`,
//! `GRPCUseTLS`) or in snake_case (`deregister_critical_service_after`, `grpc_use_tls`), as
//! the HCL-derived clients and many libraries send. Both spellings fold to the same key once
//! lower-cased with underscores removed; this maps that folded form back to the canonical
//! name. User-chosen keys (inside `Meta`, `Header`, ...) are left exactly as sent.

use serde_json::{Map, Value};

const CANONICAL: &[&str] = &[
    // service registration
    "ID",
    "Name",
    "Tags",
    "Address",
    "Port",
    "Meta",
    "Check",
    "Checks",
    "Kind",
    "EnableTagOverride",
    "TaggedAddresses",
    "Weights",
    // check definition
    "CheckID",
    "Notes",
    "Status",
    "GRPC",
    "GRPCUseTLS",
    "HTTP",
    "Method",
    "Header",
    "TCP",
    "TTL",
    "Interval",
    "Timeout",
    "DeregisterCriticalServiceAfter",
    "TLSSkipVerify",
    "ServiceID",
    // check update
    "Output",
];

/// Keys whose values are maps of user-chosen keys, never normalised.
const OPAQUE: &[&str] = &["Meta", "Header", "TaggedAddresses"];

fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn canonical(key: &str) -> Option<&'static str> {
    let folded = fold(key);
    CANONICAL.iter().copied().find(|c| fold(c) == folded)
}

/// Rewrites every known key of `value` (recursively) to its canonical Consul spelling.
pub(crate) fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, child) in map {
                let key = canonical(&key).map(str::to_owned).unwrap_or(key);
                let child = if OPAQUE.contains(&key.as_str()) {
                    child
                } else {
                    normalize(child)
                };
                out.insert(key, child);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn snake_case_and_pascal_case_agree() {
        let snake = normalize(json!({
            "id": "a", "name": "svc", "tags": ["x"], "meta": {"some_key": "v"},
            "check": {"grpc": "127.0.0.1:1", "grpc_use_tls": false, "interval": "1s",
                      "deregister_critical_service_after": "1m", "check_id": "c"}
        }));
        let pascal = normalize(json!({
            "ID": "a", "Name": "svc", "Tags": ["x"], "Meta": {"some_key": "v"},
            "Check": {"GRPC": "127.0.0.1:1", "GRPCUseTLS": false, "Interval": "1s",
                      "DeregisterCriticalServiceAfter": "1m", "CheckID": "c"}
        }));
        assert_eq!(snake, pascal);
        assert_eq!(
            snake["Meta"],
            json!({"some_key": "v"}),
            "meta keys are left alone"
        );
    }
}
