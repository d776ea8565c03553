#!/usr/bin/env bash
# Runner kit overhead: kit runner vs bare tonic echo, same machine, same run.
# Prints round trips/s, p50/p99 and the throughput ratio (goal >= 0.85).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo bench --locked -p test-runner --bench kit_overhead
