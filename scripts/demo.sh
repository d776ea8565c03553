#!/usr/bin/env bash
# The main job on the embedded default: no Consul, no AWS, nothing but this machine.
#
# `plugworker dev` starts the embedded Consul-compatible registry, this build's runners
# as separate processes (they register over HTTP exactly as with Consul), and the
# controller; it feeds it the jobs in scripts/demo-jobs.jsonl (or the file given) and
# prints one result per job. Bad jobs get clear error results; a job for an algorithm no
# runner serves is retried, then reported once its attempts are used up.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null

jobs="${1:-scripts/demo-jobs.jsonl}"
echo "==> building"
cargo build --workspace --bins --locked -q
echo "==> plugworker dev --jobs $jobs"
"$PLUGWORKER_BIN/plugworker" dev --jobs "$jobs" --results - --max-attempts 3 --runner-wait 3s
