#!/usr/bin/env bash
# The main job on the embedded default: no Consul, no AWS, nothing but this machine.
# Starts the embedded Consul-compatible registry, the nlp-runner and the test-runner as
# separate processes (they register over HTTP exactly as they would with Consul), shows
# what Consul knows, and runs language detection on a few texts through a runner found by
# its algorithm tag. Everything it starts is stopped on exit.
#
# Until the controller lands (SQS jobs -> results), jobs are run with `plugworker call`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null

echo "==> building"
cargo build --workspace --bins --locked -q
bin="$PLUGWORKER_BIN"
logs=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "==> starting the embedded Consul-compatible registry"
"$bin/plugworker" registry --listen 127.0.0.1:0 >"$logs/registry.out" 2>"$logs/registry.log" &
pids+=($!)
for _ in $(seq 100); do
  address=$(sed -n 's/^registry listening on //p' "$logs/registry.out")
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "${address:-}" ] || { echo "registry did not start:"; cat "$logs/registry.log"; exit 1; }
export CONSUL_HTTP_ADDR="$address"
echo "    CONSUL_HTTP_ADDR=$CONSUL_HTTP_ADDR"

echo "==> starting runners (each registers itself, tagged with its algorithms)"
for runner in nlp-runner test-runner; do
  "$bin/$runner" --listen 127.0.0.1:0 --check-interval 1s 2>"$logs/$runner.log" &
  pids+=($!)
done

for _ in $(seq 150); do
  if "$bin/plugworker" algorithms --json 2>/dev/null | grep -q '"status": "passing"'; then
    passing=$("$bin/plugworker" algorithms --json | grep -c '"status": "passing"' || true)
    [ "$passing" -ge 3 ] && break
  fi
  sleep 0.2
done

echo "==> what Consul knows (services and their tags, like \`consul catalog services -tags\`)"
"$bin/plugworker" algorithms | grep -E '^[a-z_]+  v|^  - ' || true
echo

echo "==> jobs: language_detection on texts, each routed by tag to a healthy runner"
while IFS= read -r text; do
  [ -n "$text" ] || continue
  result=$("$bin/plugworker" call --algorithm language_detection --text "$text" 2>/dev/null | tr -d '\n ')
  printf '    %s\n      -> %s\n' "$text" "$result"
done <<'TEXTS'
The quick brown fox jumps over the lazy dog near the river bank.
Le petit chat dort tranquillement sur le canapé du salon.
Der kleine Hund spielt jeden Morgen im Garten mit seinem Ball.
El niño come una manzana roja en el parque con sus amigos.
今日はとても良い天気ですね。公園で散歩をしましょう。
TEXTS

echo
echo "==> a bad job gets a clear error, and the runner keeps serving"
"$bin/plugworker" call --algorithm language_detection --payload '{"text": 42}' 2>&1 | sed 's/^/    /' || true
echo
echo "done: logs in $logs"
