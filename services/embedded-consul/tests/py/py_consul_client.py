"""Drives a Consul agent (the embedded registry, or a real one) with py-consul, an
independent client from PyPI, the way its users write code.

Usage: py_consul_client.py HOST PORT. Exits non-zero (with the failed assertion) on any
difference from what py-consul expects of Consul.
"""

import os
import sys
import threading
import time

import consul


def unique(prefix):
    return f"{prefix}-{os.getpid()}-{time.time_ns() % 16**6:06x}"


def main(host, port):
    c = consul.Consul(host=host, port=int(port))

    # One TTL check given as a one-element `Checks` list (py-consul sends
    # {"checks": [{"ttl": "30s"}]}); Consul names it `service:<id>`, so passing it by that
    # ID must reach it.
    name = unique("pyconsul")
    assert c.agent.service.register(
        name, service_id=name, port=8080, tags=["OCR", "v1"], check=consul.Check.ttl("30s")
    )
    check_id = f"service:{name}"
    checks = c.agent.checks()
    assert check_id in checks, sorted(checks)
    assert checks[check_id]["Status"] == "critical", checks[check_id]
    assert c.agent.check.ttl_pass(check_id, "ready")
    _, nodes = c.health.service(name, passing=True)
    assert len(nodes) == 1, nodes
    service_checks = [ch for ch in nodes[0]["Checks"] if ch["CheckID"] == check_id]
    assert service_checks and service_checks[0]["Output"] == "ready", nodes[0]["Checks"]

    # Tag filters ignore case, as Consul's do.
    _, nodes = c.health.service(name, tag="ocr")
    assert len(nodes) == 1, nodes
    _, nodes = c.catalog.service(name, tag="V1")
    assert len(nodes) == 1, nodes
    _, nodes = c.catalog.service(name, tag="v2")
    assert nodes == [], nodes

    # Block on an index and wake on a change.
    other = unique("pyconsul-late")
    index, nodes = c.health.service(other)
    assert nodes == [], nodes

    def register_later():
        time.sleep(0.3)
        c.agent.service.register(other, service_id=other, port=8081)

    threading.Thread(target=register_later).start()
    started = time.monotonic()
    new_index, nodes = c.health.service(other, index=index, wait="30s")
    while not nodes and time.monotonic() - started < 10:
        new_index, nodes = c.health.service(other, index=new_index, wait="30s")
    elapsed = time.monotonic() - started
    assert len(nodes) == 1, nodes
    assert int(new_index) > int(index), (index, new_index)
    assert elapsed < 5, f"woke after {elapsed:.1f}s, not on the change"

    # KV with check-and-set.
    key = f"{unique('pyconsul-kv')}/setting"
    assert c.kv.put(key, "v1") is True
    _, data = c.kv.get(key)
    assert data["Value"] == b"v1", data
    modify_index = data["ModifyIndex"]
    assert c.kv.put(key, "stale", cas=modify_index - 1) is False
    assert c.kv.put(key, "v2", cas=modify_index) is True
    index, data = c.kv.get(key)
    assert data["Value"] == b"v2", data
    assert c.kv.put(f"{key}-new", "x", cas=0) is True
    assert c.kv.put(f"{key}-new", "y", cas=0) is False

    def write_later():
        time.sleep(0.3)
        c.kv.put(key, "v3")

    threading.Thread(target=write_later).start()
    started = time.monotonic()
    new_index, data = c.kv.get(key, index=index, wait="30s")
    assert data["Value"] == b"v3", data
    assert int(new_index) > int(index)
    assert time.monotonic() - started < 5

    assert c.kv.delete(key)
    assert c.kv.delete(f"{key}-new")
    _, data = c.kv.get(key)
    assert data is None, data

    assert c.agent.service.deregister(name)
    assert c.agent.service.deregister(other)
    assert name not in c.agent.services()
    print("py-consul: every check passed")


if __name__ == "__main__":
    main(*sys.argv[1:3])
