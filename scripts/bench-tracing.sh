#!/usr/bin/env bash
# Tracing overhead: jobs/s with tracing off vs on (always-on sampler, OTLP export to a
# local receiver), same run, alternating rounds. Prints the ratio (goal >= 0.9).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --locked --release -p test-runner -p nlp-runner -p plugworker-cli
cargo bench --locked -p plugworker-cli --bench tracing_overhead
