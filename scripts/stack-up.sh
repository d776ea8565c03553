#!/usr/bin/env bash
# Starts the local stack of infra/docker-compose.yml (Consul, SQS emulator, collector,
# Tempo, Prometheus, Grafana, controller, 2 image-runners, 1 nlp-runner), waits until the
# controller is healthy and every runner is registered and passing in Consul, then prints
# where to look. Needs Docker with the compose plugin (BuildKit for the cache mounts).
# `scripts/stack-up.sh down` stops it and removes its volumes.
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
passing() { # service, instances
  [ "$(curl -fsS "http://127.0.0.1:8500/v1/health/service/$1?passing=true" |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" -ge "$2" ]
}
wait_for "2 image-runner instances passing in Consul" passing image-runner 2
wait_for "1 nlp-runner instance passing in Consul" passing nlp-runner 1

cat <<'INFO'

plugworker is up.
  Consul UI     http://127.0.0.1:8500/ui   (or: docker compose -f infra/docker-compose.yml exec consul consul catalog services -tags)
  Grafana       http://127.0.0.1:3000      (dashboard "plugworker"; Explore → Tempo for traces)
  Prometheus    http://127.0.0.1:9091
  Controller    http://127.0.0.1:9090/healthz, /metrics
Submit a job:   docker compose -f infra/docker-compose.yml exec controller plugworker submit --algorithm language_detection --text "Bonjour tout le monde"
Read results:   docker compose -f infra/docker-compose.yml exec controller plugworker results --max 1
Stop:           scripts/stack-up.sh down
INFO
