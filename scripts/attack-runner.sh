#!/usr/bin/env bash
# The full-size attacks of issue 25 on real runner processes, printing the figures that
# docs/security.md quotes: 1,100 never-finished calls declaring 4 MB messages (health
# port and main port), and 3,000 idle connections under a 1,024-file limit with the health
# check and Run calls still answered. The test suite runs the same attacks scaled down
# (services/runners/test-runner/tests/server_bounds.rs). Takes about two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh
# The attacking client holds 3,000 sockets at once.
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build -q -p test-runner --bin test-runner
RUST_LOG="${RUST_LOG:-warn}" cargo run -q -p test-runner --example attack_runner
