#!/usr/bin/env bash
# Delivery soak (not a test): N jobs through moto SQS, the registry, test-runners and the
# controller, with runner SIGKILLs at random and two controller restarts, on the mesh as
# deployed (ACLs and intentions default deny, runners and controller in mTLS). Prints
# submitted / distinct final results / duplicates / DLQ, and exits 1 unless every valid job
# ended ok and every invalid one with its expected error code. Knobs in scripts/soak.py:
#   SOAK_JOBS=5000 scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null
cargo build --locked --workspace --bins
# A private copy of the binaries: a build in the shared target folder during the run (the
# soak takes minutes) must not swap the controller restarted mid-run for another version.
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
cp "$PLUGWORKER_BIN/plugworker" "$PLUGWORKER_BIN/test-runner" "$bin/"
venv="${PLUGWORKER_VENV:-$HOME/.cache/plugworker/venv}"
PLUGWORKER_BIN="$bin" "$venv/bin/python" scripts/soak.py
