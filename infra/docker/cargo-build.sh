#!/usr/bin/env sh
# Builds one workspace binary in release mode inside a Docker build stage and copies it,
# stripped, to OUT_DIR. The cargo registry and target folders are BuildKit cache mounts
# (see the Dockerfiles), so dependencies compile once and a code change rebuilds only
# plugworker's own crates; a cache mount is gone after its RUN step, hence the copy.
# Usage: cargo-build.sh BINARY OUT_DIR [PACKAGE [CARGO_FLAGS...]]
# Without PACKAGE, cargo finds the workspace member that has the binary: a runner's image
# needs only its binary's name (runner.Dockerfile's RUNNER).
set -eu
binary="$1" out="$2" package="${3:-}"
if [ -z "$binary" ]; then
  echo "cargo-build.sh: no binary named (runner images: --build-arg RUNNER=<runner binary>)" >&2
  exit 2
fi
if [ $# -ge 3 ]; then shift 3; else set --; fi
if [ -n "$package" ]; then
  cargo build --release --locked -p "$package" --bin "$binary" "$@"
else
  cargo build --release --locked --bin "$binary"
fi
mkdir -p "$out"
cp "target/release/$binary" "$out/$binary"
strip --strip-debug "$out/$binary"
