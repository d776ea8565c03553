//! The ACL rules plugworker's processes need, as text: the code that creates their tokens
//! and the policies docs/security.md documents cannot drift apart.

/// The rules of the controller's policy for the Connect identity `service`: register (and
/// obtain a leaf certificate for) its own service name only; read every service and node,
/// which resolving runners through `/v1/health/connect/<service>` needs; read the stored
/// pipelines (`plugworker/pipelines/`), which it watches.
pub fn controller_rules(service: &str) -> String {
    format!(
        "service \"{service}\" {{\n  policy = \"write\"\n}}\nservice_prefix \"\" {{\n  policy = \"read\"\n}}\nnode_prefix \"\" {{\n  policy = \"read\"\n}}\nkey_prefix \"plugworker/pipelines/\" {{\n  policy = \"read\"\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_policy_is_the_documented_one() {
        assert_eq!(
            controller_rules("controller"),
            "service \"controller\" {\n  policy = \"write\"\n}\nservice_prefix \"\" {\n  policy = \"read\"\n}\nnode_prefix \"\" {\n  policy = \"read\"\n}\nkey_prefix \"plugworker/pipelines/\" {\n  policy = \"read\"\n}\n"
        );
    }
}
