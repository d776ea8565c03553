#!/usr/bin/env bash
# Delivery soak (not a test): N jobs through moto SQS, the registry, test-runners and the
# controller, with runner SIGKILLs at random and two controller restarts, on the mesh as
# deployed (ACLs and intentions default deny, runners and controller in mTLS). Prints
# submitted / distinct final results / duplicates / DLQ, and exits 1 unless every valid job
# ended ok and every invalid one with its expected error code. Knobs in scripts/soak.py:
#   SOAK_JOBS=5000 scripts/soak.sh
# The pipeline soak: 1,000 jobs of the demo's meme_report pipeline (label, text, lang) on
# two image-runners and an nlp-runner, one image-runner SIGKILLed mid-run while it has runs
# in flight; every result must be ok with all three steps as expected, and some step must
# have been retried on the surviving image-runner:
#   SOAK_MODE=pipeline scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null
cargo build --locked --workspace --bins
# A private copy of the binaries: a build in the shared target folder during the run (the
# soak takes minutes) must not swap the controller restarted mid-run for another version.
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
cp "$PLUGWORKER_BIN/plugworker" "$PLUGWORKER_BIN/test-runner" "$PLUGWORKER_BIN/image-runner" "$PLUGWORKER_BIN/nlp-runner" "$bin/"
venv="${PLUGWORKER_VENV:-$HOME/.cache/plugworker/venv}"
# Arguments, if any, replace scripts/soak.py: another script on this stack (bench-pipeline.sh
# passes its own, which imports soak.py's Stack, and its arguments).
if [ $# -eq 0 ]; then
  set -- scripts/soak.py
fi
PLUGWORKER_BIN="$bin" "$venv/bin/python" "$@"
