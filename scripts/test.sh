#!/usr/bin/env bash
# The test command (README, and what CI runs): formatting, every test of the workspace
# (unit, conformance, and real-process integration tests), then lints.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh

cargo fmt --all --check
# Integration tests start the workspace's binaries as real processes: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
cargo clippy --workspace --all-targets --locked -- -D warnings
