"""Drives a Consul agent's ACLs with py-consul, an independent client from PyPI.

Usage: py_consul_acl.py HOST PORT [MANAGEMENT_TOKEN]. Without a management token the
script bootstraps the ACL system itself (a fresh agent with ACLs on, default deny);
with one (a real agent bootstrapped beforehand) it uses that token. Exits non-zero on any
difference from what py-consul expects of Consul.
"""

import os
import sys
import time

import consul
from consul.exceptions import ACLPermissionDenied


def unique(prefix):
    return f"{prefix}-{os.getpid()}-{time.time_ns() % 16**6:06x}"


def main(host, port, management=None):
    anonymous = consul.Consul(host=host, port=int(port))
    if management is None:
        bootstrap = anonymous.acl.bootstrap()
        management = bootstrap["SecretID"]
        assert [p["Name"] for p in bootstrap["Policies"]] == ["global-management"], bootstrap
        try:
            anonymous.acl.bootstrap()
            raise AssertionError("a second bootstrap succeeded")
        except ACLPermissionDenied as denied:
            assert "ACL bootstrap no longer allowed" in str(denied), denied
    admin = consul.Consul(host=host, port=int(port), token=management)

    # A runner's least-privilege policy, in the rules' JSON form (py-consul's).
    runner = unique("pyrunner")
    other = unique("pyother")
    policy_name = unique("pypolicy")
    policy = admin.acl.policy.create(
        policy_name,
        description="runner",
        rules={
            "service": {runner: {"policy": "write"}},
            "service_prefix": {"": {"policy": "read"}},
            "node_prefix": {"": {"policy": "read"}},
        },
    )
    assert policy["Name"] == policy_name, policy
    assert admin.acl.policy.read(policy["ID"])["Name"] == policy_name
    assert policy_name in [p["Name"] for p in admin.acl.policy.list()]

    token = admin.acl.token.create(description="runner token", policies_name=[policy_name])
    assert [p["Name"] for p in token["Policies"]] == [policy_name], token
    assert token["SecretID"] and token["AccessorID"], token
    client = consul.Consul(host=host, port=int(port), token=token["SecretID"])
    me = client.acl.token.read_self()
    assert me["AccessorID"] == token["AccessorID"], me

    # Its own name registers; another service's name is refused with Consul's message.
    assert client.agent.service.register(runner, service_id=runner, port=9000)
    try:
        client.agent.service.register(other, service_id=other, port=9000)
        raise AssertionError("registered under another service's name")
    except ACLPermissionDenied as denied:
        expected = (
            f"Permission denied: token with AccessorID '{token['AccessorID']}' "
            f"lacks permission 'service:write' on \"{other}\""
        )
        assert expected in str(denied), denied
    # Without a token (anonymous, default deny) registration is refused too.
    try:
        anonymous.agent.service.register(other, service_id=other, port=9000)
        raise AssertionError("registered without a token")
    except ACLPermissionDenied:
        pass
    # It reads services (service_prefix "" read) but cannot write KV.
    _, nodes = client.health.service(runner)
    assert len(nodes) == 1, nodes
    try:
        client.kv.put(unique("pykey"), "x")
        raise AssertionError("wrote KV without a key rule")
    except ACLPermissionDenied:
        pass

    assert client.agent.service.deregister(runner)
    assert admin.acl.token.delete(token["AccessorID"])
    try:
        client.acl.token.read_self()
        raise AssertionError("a deleted token still resolves")
    except ACLPermissionDenied as denied:
        assert "ACL not found" in str(denied), denied
    assert admin.acl.policy.delete(policy["ID"])
    print("every ACL check passed")


if __name__ == "__main__":
    main(*sys.argv[1:])
