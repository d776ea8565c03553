"""Consul grants as the code defines them, compared with what each deployment grants:

- the controller's: controller_rules (services/discovery/src/policy.rs or
  services/consul-client/src/admin.rs, whichever defines it), which `plugworker dev` and the controller's tests
  use; granted by the compose policy (infra/consul/init.sh) and, in terraform, its service
  identity plus the policy mesh.py defines;
- the galleries' announced versions: the KV prefix services/meme/src/store.rs writes and
  runners watch (`plugworker/galleries/<location hash>`): read for a runner that follows
  a gallery, write for the operators who publish (`plugworker gallery`).
Rules compare as sets of (resource, name, access), so formatting does not matter."""
import pathlib
import re

# Where controller_rules is defined: the first of these files that exists.
POLICY_SOURCES = ("services/discovery/src/policy.rs", "services/consul-client/src/admin.rs")
STORE = "services/meme/src/store.rs"
RULE = re.compile(r'(\w+)\s+"([^"]*)"\s*\{\s*policy\s*=\s*"(\w+)"\s*\}')


def parse(text: str) -> set:
    """The (resource, name, access) rules of an ACL policy in HCL."""
    return set(RULE.findall(text))


def controller_rules(repo: pathlib.Path, service: str = "controller") -> set:
    """The rules `controller_rules(service)` formats, read from its source."""
    pattern = r'pub fn controller_rules\(service: &str\) -> String \{\s*format!\(\s*"((?:[^"\\]|\\.)*)"'
    paths = [repo / p for p in POLICY_SOURCES]
    found = next((m for m in (re.search(pattern, p.read_text()) for p in paths if p.is_file()) if m), None)
    if not found:
        raise SystemExit(f"{' nor '.join(map(str, paths))}: no controller_rules(service) formatting one string; update deploy_checks/consul_rules.py")
    text = found.group(1).replace('\\"', '"').replace("\\n", "\n").replace("{{", "{").replace("}}", "}")
    return parse(text.replace("{service}", service))


def service_identity(service: str) -> set:
    """What a Consul service identity grants (the part the controller's rules need)."""
    return {("service", service, "write"), ("service_prefix", "", "read"), ("node_prefix", "", "read")}


def describe(rules: set) -> str:
    return ", ".join(f'{kind} "{name}" {access}' for kind, name, access in sorted(rules))


def gallery_prefix(repo: pathlib.Path) -> str:
    """The KV prefix of the galleries' announced versions, as the store formats its key."""
    path = repo / STORE
    found = re.search(r'"(plugworker/galleries/)\{\}"', path.read_text()) if path.is_file() else None
    if not found:
        raise SystemExit(f"{path}: no \"plugworker/galleries/{{}}\" key format; update deploy_checks/consul_rules.py")
    return found.group(1)


def gallery_reader(repo: pathlib.Path) -> set:
    """What a runner following a gallery needs beyond its service identity."""
    return {("key_prefix", gallery_prefix(repo), "read")}


def gallery_publisher(repo: pathlib.Path) -> set:
    """What an operator running `plugworker gallery add/remove/rollback` needs."""
    return {("key_prefix", gallery_prefix(repo), "write")}


DEV_MESH = "services/cli/src/commands/dev_mesh.rs"


def dev_rules(repo: pathlib.Path, constant: str) -> set:
    """The rules of a `const NAME: &str = "...";` in `plugworker dev`'s mesh set-up."""
    path = repo / DEV_MESH
    found = re.search(rf'const {constant}: &str =\s*"((?:[^"\\]|\\.)*)";', path.read_text()) if path.is_file() else None
    if not found:
        return set()
    return parse(found.group(1).replace('\\"', '"').replace("\\n", "\n"))
