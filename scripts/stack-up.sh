#!/usr/bin/env bash
# Starts the local stack of infra/docker-compose.yml (Consul with ACLs and Connect, SQS
# emulator, collector, Tempo, Prometheus, Grafana, the controller and every runner entry),
# then waits for what the compose file declares: the controller healthy, and for each
# runner entry as many passing Connect-native instances in Consul as its replicas. Needs
# Docker with the compose plugin (BuildKit for the cache mounts). Trust set-up:
# docs/deploy-local.md. `scripts/stack-up.sh down` stops it and removes its volumes
# (Consul's data, certificates and tokens with them).
set -euo pipefail
cd "$(dirname "$0")/.."
compose=(docker compose -f infra/docker-compose.yml)

if [ "${1:-}" = down ]; then
  exec "${compose[@]}" down --volumes --remove-orphans
fi
if ! docker info >/dev/null 2>&1; then
  echo "stack-up: no Docker engine reachable (docker info failed)" >&2
  exit 1
fi

# The runners and their replica counts, as compose resolves the file (anchors merged):
# every service built with a RUNNER build argument. One "name count" line each.
expected="$("${compose[@]}" config --format json | python3 -c '
import json, sys
services = json.load(sys.stdin)["services"]
for name, service in sorted(services.items()):
    if "RUNNER" in ((service.get("build") or {}).get("args") or {}):
        print(name, (service.get("deploy") or {}).get("replicas", 1))
')"
if [ -z "$expected" ]; then
  echo "stack-up: infra/docker-compose.yml has no runner entries" >&2
  exit 1
fi

DOCKER_BUILDKIT=1 "${compose[@]}" up --detach --build

wait_for() { # description, command...
  local what="$1"; shift
  for _ in $(seq 1 90); do
    if "$@" >/dev/null 2>&1; then echo "stack-up: $what: ok"; return 0; fi
    sleep 2
  done
  echo "stack-up: $what: not ready after 3 minutes; see: ${compose[*]} logs" >&2
  exit 1
}
wait_for "controller /healthz" "${compose[@]}" exec -T controller plugworker healthcheck
# Asked inside the consul container (its loopback HTTP listener) with the management token
# consul-init stored; /v1/health/connect lists what the controller resolves: passing,
# Connect-native instances.
passing() { # service, instances
  local count
  count="$("${compose[@]}" exec -T consul sh -c \
    'wget -qO- --header "X-Consul-Token: $(cat /consul/bootstrap/management.token)" "http://127.0.0.1:8500/v1/health/connect/$1?passing=true"' \
    _ "$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
  [ "$count" -ge "$2" ]
}
while read -r runner replicas; do
  wait_for "$replicas $runner instance(s) passing in Consul" passing "$runner" "$replicas"
done <<<"$expected"

cat <<'INFO'

plugworker is up.
  Consul UI     https://127.0.0.1:8501/ui  (the stack's own CA; log in with the management token:
                docker compose -f infra/docker-compose.yml exec consul cat /consul/bootstrap/management.token)
  Grafana       http://127.0.0.1:3000      (dashboard "plugworker"; Explore → Tempo for traces)
  Prometheus    http://127.0.0.1:9091      (targets found through Consul: Status → Targets)
  Controller    http://127.0.0.1:9090/healthz, /metrics
Submit a job:   docker compose -f infra/docker-compose.yml exec controller plugworker submit --algorithm language_detection --text "Bonjour tout le monde"
Read results:   docker compose -f infra/docker-compose.yml exec controller plugworker results --max 1
Stop:           scripts/stack-up.sh down
INFO
