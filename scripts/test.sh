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
# and the test binaries, and note where they are, so the test run below needs no cargo
# (and no lock on the target folder: the add-a-runner check builds beside it).
cargo build --workspace --bins --locked
built="$(mktemp -d)"
deploy_log="$built/deploy.log"
add_runner_log="$built/add-runner.log"
trap 'rm -rf "$built"' EXIT
cargo nextest list --workspace --locked --list-type binaries-only --message-format json \
  >"$built/binaries.json"
cargo metadata --format-version 1 --locked \
  --filter-platform "$(rustc -vV | sed -n 's/^host: //p')" >"$built/cargo.json"
# Beside the tests, their output shown when all are done: the deployment files (HCL
# rules, checkov, compose against the binaries' --help, and the tests proving each check
# can fail), and adding a runner as the README says, on a copy of the repository (its
# crate builds with the lock file updated; the deploy checks and their self-tests pass
# with it). The tests mostly wait on their processes (the CPUs were idle about 40 % of
# the test run), these mostly compute; before the tests they took 70 s and 25 s more.
scripts/check-deploy.sh >"$deploy_log" 2>&1 &
deploy=$!
scripts/check-add-runner.sh >"$add_runner_log" 2>&1 &
add_runner=$!
tests=0
cargo nextest run --binaries-metadata "$built/binaries.json" \
  --cargo-metadata "$built/cargo.json" || tests=$?
failed=0
for check in deploy add_runner; do
  status=0
  wait "${!check}" || status=$?
  log="${check}_log"
  cat "${!log}"
  if [ "$status" -ne 0 ]; then
    echo "test: the ${check//_/-} check failed (exit $status); its output is above" >&2
    failed=1
  fi
done
[ "$tests" -eq 0 ] && [ "$failed" -eq 0 ]
