"""The controller's Consul grants, as the code defines them (controller_rules in
services/consul-client/src/admin.rs, which `plugworker dev` and the controller's tests
use), compared with what each deployment grants it: the compose policy (infra/consul/
init.sh) and, in terraform, its service identity plus the policy mesh.py defines.
Rules compare as sets of (resource, name, access), so formatting does not matter."""
import pathlib
import re

ADMIN = "services/consul-client/src/admin.rs"
RULE = re.compile(r'(\w+)\s+"([^"]*)"\s*\{\s*policy\s*=\s*"(\w+)"\s*\}')


def parse(text: str) -> set:
    """The (resource, name, access) rules of an ACL policy in HCL."""
    return set(RULE.findall(text))


def controller_rules(repo: pathlib.Path, service: str = "controller") -> set:
    """The rules `controller_rules(service)` formats, read from its source."""
    source = (repo / ADMIN).read_text()
    found = re.search(r'pub fn controller_rules\(service: &str\) -> String \{\s*format!\(\s*"((?:[^"\\]|\\.)*)"', source)
    if not found:
        raise SystemExit(f"{repo / ADMIN}: no controller_rules(service) formatting one string; update deploy_checks/consul_rules.py")
    text = found.group(1).replace('\\"', '"').replace("\\n", "\n").replace("{{", "{").replace("}}", "}")
    return parse(text.replace("{service}", service))


def service_identity(service: str) -> set:
    """What a Consul service identity grants (the part the controller's rules need)."""
    return {("service", service, "write"), ("service_prefix", "", "read"), ("node_prefix", "", "read")}


def describe(rules: set) -> str:
    return ", ".join(f'{kind} "{name}" {access}' for kind, name, access in sorted(rules))
