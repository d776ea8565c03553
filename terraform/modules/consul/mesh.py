#!/usr/bin/env python3
"""plugworker-consul-mesh: makes Consul's ACL policies, tokens and intentions what the
stack's SSM parameter MESH_PREFIX/mesh lists (terraform/modules/mesh).

Idempotent. A timer runs it every minute on each server of a cluster the stack created
(only the leader writes); an operator runs it against an existing cluster:

    AWS_REGION=eu-west-1 MESH_PREFIX=/plugworker/consul MESH_ANY_NODE=1 \\
    CONSUL_HTTP_ADDR=https://127.0.0.1:8501 CONSUL_CACERT=ca.pem \\
    CONSUL_HTTP_TOKEN=<management token> python3 mesh.py

- Policies: STACK-agent (client agents: write their node, read services),
  STACK-prometheus (read services and nodes, for consul_sd_configs), STACK-controller
  (read the stored pipelines, plugworker/pipelines/, which the controller watches),
  STACK-gallery-reader (runners following a gallery: read plugworker/galleries/) and
  STACK-gallery-operator (operators publishing galleries: write plugworker/galleries/).
- Tokens get the accessor and secret IDs terraform generated (the secret read from its
  SSM parameter): runners and the controller a service identity (write their own service
  and its Connect certificate, read the catalog), agents, Prometheus and gallery operators
  a policy, the controller and a runner following a gallery their policy too. A token whose secret changed in SSM is replaced (rotation,
  docs/deploy-aws.md); one whose policies or service identities differ is updated.
- Intentions: the config entries listed (default deny "*" from "*", the controller allowed
  to each runner), each marked Meta plugworker-stack = STACK.
- What this stack made and no longer lists (a runner removed) is deleted: tokens whose
  description starts with "plugworker STACK ", intentions with its Meta. Nothing else is
  touched, so the script is safe on a cluster other stacks share.

Standard library only (Amazon Linux's python3); SSM through boto3 when it is importable,
else the AWS CLI.
"""
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

POLICIES = {
    "agent": ("client agents", 'node_prefix "" { policy = "write" }\nservice_prefix "" { policy = "read" }\n'),
    "prometheus": ("Prometheus service discovery, read only", 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'),
    # Beside its service identity (consul_client::admin::controller_rules).
    "controller": ("the controller: read the stored pipelines", 'key_prefix "plugworker/pipelines/" { policy = "read" }\n'),
    # Beside the service identity of a runner that follows a gallery: its version's key
    # (plugworker/galleries/<location hash>, services/meme/src/store.rs), watched.
    "gallery-reader": ("runners following a gallery: read the galleries' versions", 'key_prefix "plugworker/galleries/" { policy = "read" }\n'),
    # Operators' `plugworker gallery add|remove|rollback`: announce the new version.
    "gallery-operator": ("gallery operators: announce the galleries' versions", 'key_prefix "plugworker/galleries/" { policy = "write" }\n'),
}
META = "plugworker-stack"


class ConsulError(Exception):
    def __init__(self, method, path, status, body):
        super().__init__(f"{method} {path}: HTTP {status}: {body.strip()[:300]}")
        self.status, self.body = status, body


def log(message):
    print(f"plugworker-consul-mesh: {message}", flush=True)


def parameter(name):
    """An SSM parameter's decrypted value."""
    region = os.environ["AWS_REGION"]
    try:
        import boto3
    except ImportError:
        command = ["aws", "ssm", "get-parameter", "--region", region, "--with-decryption", "--name", name,
                   "--query", "Parameter.Value", "--output", "text"]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.rstrip("\n")
    client = boto3.client("ssm", region_name=region)
    return client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]


def _loopback(host):
    """`localhost` or a loopback address (Go's http.ProxyFromEnvironment exception)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or getattr(address, "ipv4_mapped", None) is not None and address.ipv4_mapped.is_loopback


class Consul:
    """Consul's HTTP API, configured by its standard CONSUL_* variables."""

    def __init__(self, token):
        address = os.environ.get("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501")
        if "://" not in address:
            address = "https://" + address
        self.base = address.rstrip("/")
        self.token = token
        self.context = None
        if self.base.startswith("https://"):
            self.context = ssl.create_default_context(cafile=os.environ.get("CONSUL_CACERT") or None)
        # Proxy variables apply as in Go (the consul CLI, Consul's own client), which never
        # proxies loopback; urllib would send even 127.0.0.1 to HTTPS_PROXY.
        handlers = [urllib.request.HTTPSHandler(context=self.context)]
        if _loopback(urllib.parse.urlsplit(self.base).hostname or ""):
            handlers.append(urllib.request.ProxyHandler({}))
        self.opener = urllib.request.build_opener(*handlers)

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"X-Consul-Token": self.token, "Content-Type": "application/json"})
        try:
            with self.opener.open(request, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            raise ConsulError(method, path, error.code, error.read().decode(errors="replace")) from None
        return json.loads(text) if text.strip() else None

    def absent(self, error):
        # Consul answers a read of a token or policy that does not exist with 404, or 403
        # "ACL not found" (by accessor).
        return error.status == 404 or (error.status == 403 and "not found" in error.body.lower())

    def get_or_none(self, path):
        try:
            return self.call("GET", path)
        except ConsulError as error:
            if self.absent(error):
                return None
            raise


def is_leader(consul):
    stats = (consul.call("GET", "/v1/agent/self") or {}).get("Stats", {})
    return str(stats.get("consul", {}).get("leader", "false")).lower() == "true"


def apply_policies(consul, stack):
    for short, (what, rules) in POLICIES.items():
        name = f"{stack}-{short}"
        body = {"Name": name, "Description": f"plugworker {stack}: {what}", "Rules": rules}
        current = consul.get_or_none(f"/v1/acl/policy/name/{urllib.parse.quote(name)}")
        if current is None:
            consul.call("PUT", "/v1/acl/policy", body)
            log(f"policy {name} created")
        elif current.get("Rules") != rules or current.get("Description") != body["Description"]:
            consul.call("PUT", f"/v1/acl/policy/{current['ID']}", body)
            log(f"policy {name} updated")


def _grants(token):
    """A token's policy names and service identities, as comparable sets."""
    return ({p.get("Name") for p in token.get("Policies") or []},
            {i.get("ServiceName") for i in token.get("ServiceIdentities") or []})


def apply_tokens(consul, stack, tokens):
    wanted = set()
    for token in tokens:
        accessor, role = token["accessor_id"], token["role"]
        wanted.add(accessor)
        secret = parameter(token["parameter"])
        body = {"AccessorID": accessor, "SecretID": secret, "Description": f"plugworker {stack} {role}"}
        if token.get("policy"):
            body["Policies"] = [{"Name": f"{stack}-{token['policy']}"}]
        if token.get("service"):
            body["ServiceIdentities"] = [{"ServiceName": token["service"]}]
        current = consul.get_or_none(f"/v1/acl/token/{accessor}")
        if current is not None and current.get("SecretID") == secret:
            if _grants(current) != _grants(body):
                # A grant added or removed since the token was made (a runner's gallery).
                consul.call("PUT", f"/v1/acl/token/{accessor}", body)
                log(f"token {role} updated")
            continue
        if current is not None:
            consul.call("DELETE", f"/v1/acl/token/{accessor}")
            log(f"token {role}: its secret changed in SSM, replacing it")
        consul.call("PUT", "/v1/acl/token", body)
        log(f"token {role} created")
    for token in consul.call("GET", "/v1/acl/tokens") or []:
        if token.get("Description", "").startswith(f"plugworker {stack} ") and token["AccessorID"] not in wanted:
            consul.call("DELETE", f"/v1/acl/token/{token['AccessorID']}")
            log(f"stale token {token['Description']!r} deleted")


def apply_intentions(consul, stack, entries):
    names = set()
    for entry in entries:
        names.add(entry["Name"])
        consul.call("PUT", "/v1/config", dict(entry, Meta={META: stack}))
    for entry in consul.call("GET", "/v1/config/service-intentions") or []:
        if entry["Name"] not in names and (entry.get("Meta") or {}).get(META) == stack:
            consul.call("DELETE", f"/v1/config/service-intentions/{urllib.parse.quote(entry['Name'], safe='*')}")
            log(f"intentions of {entry['Name']} deleted (no longer a runner of {stack})")


def main():
    prefix = os.environ.get("MESH_PREFIX", "").rstrip("/")
    if not prefix or "AWS_REGION" not in os.environ:
        sys.exit("plugworker-consul-mesh: set MESH_PREFIX (the stack's /NAME/consul) and AWS_REGION")
    token = os.environ.get("CONSUL_HTTP_TOKEN") or parameter(f"{prefix}/tokens/management")
    consul = Consul(token)
    if os.environ.get("MESH_ANY_NODE") != "1" and not is_leader(consul):
        return 0  # a follower: the leader applies
    mesh = json.loads(parameter(f"{prefix}/mesh"))
    stack = mesh["stack"]
    apply_policies(consul, stack)
    apply_tokens(consul, stack, mesh["tokens"])
    apply_intentions(consul, stack, mesh["intentions"])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConsulError, urllib.error.URLError, subprocess.CalledProcessError) as error:
        sys.exit(f"plugworker-consul-mesh: {error}")
