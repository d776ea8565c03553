#!/usr/bin/env bash
# The test command (README, and what CI runs): formatting and lints, the deployment
# checks, then every test of the workspace (unit, conformance, and real-process
# integration tests) with cargo-nextest; the demo runs too, its results checked.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh

cargo fmt --all --check
# Algorithm modules reach the compiler through the kit's generated `include!`, which
# cargo fmt does not follow: check them by name so a misformatted algorithm fails here.
rustfmt --check --edition 2024 services/runners/*/src/algorithms/*.rs
cargo clippy --workspace --all-targets --locked -- -D warnings
# The demo's lean build (scripts/demo.sh: without the AWS SDK and the ocrs engine), its
# binaries (plugworker and every deployed runner) and the libraries whose features it leaves out.
runners="$(scripts/runners.sh -p)"
mapfile -t runners <<<"$runners"
cargo clippy -p plugworker-cli "${runners[@]}" --no-default-features --features plugworker-cli/dev \
  --bins --locked -- -D warnings
# The controller image's plugworker (infra/docker/controller.Dockerfile: `aws` alone, no
# `dev` and no `gallery`).
cargo clippy -p plugworker-cli --no-default-features --features aws --bins --locked -- -D warnings
cargo clippy -p plugworker-controller -p plugworker-claim-check -p plugworker-image-input \
  -p plugworker-ocr --no-default-features --lib --locked -- -D warnings
# The README's first command, end to end, with its results checked. Before the workspace
# build: the demo's lean binaries land in the same folder, and the full build below
# replaces them, so the tests (and whatever runs next) find the full binaries.
scripts/check-demo.sh
# Integration tests start the workspace's binaries as real processes: build them first,
# and the test binaries.
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-run
# Adding a runner as the README says, on a copy of the repository: its crate builds with the
# lock file updated, and the deploy checks and their self-tests pass with it.
scripts/check-add-runner.sh
# Deployment files: HCL rules, checkov, compose against the binaries' --help, and the
# tests proving each check can fail. Beside the tests: those mostly wait on their
# processes (the CPUs were idle about 40 % of the test run), these mostly compute; one
# after the other they took 70 s longer. Their output is shown when both are done.
deploy_log="$(mktemp)"
trap 'rm -f "$deploy_log"' EXIT
scripts/check-deploy.sh >"$deploy_log" 2>&1 &
deploy=$!
tests=0
cargo nextest run --workspace --locked || tests=$?
deployed=0
wait "$deploy" || deployed=$?
cat "$deploy_log"
if [ "$deployed" -ne 0 ]; then
  echo "test: scripts/check-deploy.sh failed (exit $deployed); its output is above" >&2
fi
[ "$tests" -eq 0 ] && [ "$deployed" -eq 0 ]
