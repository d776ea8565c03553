#!/usr/bin/env bash
# Controller overhead: jobs/s and latency through the controller (in-memory queue) vs
# direct gRPC calls to the same runner, same run; then jobs/s through the SQS emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null
cargo build --locked --release -p test-runner
cargo bench --locked -p plugworker-controller --bench controller_throughput
