#!/usr/bin/env sh
# Builds one workspace binary in release mode inside a Docker build stage and copies it,
# stripped, to OUT_DIR. The cargo registry and target folders are BuildKit cache mounts
# (see the Dockerfiles), so dependencies compile once and a code change rebuilds only
# plugworker's own crates; a cache mount is gone after its RUN step, hence the copy.
# Usage: cargo-build.sh PACKAGE BINARY OUT_DIR
set -eu
package="$1" binary="$2" out="$3"
cargo build --release --locked -p "$package" --bin "$binary"
mkdir -p "$out"
cp "target/release/$binary" "$out/$binary"
strip --strip-debug "$out/$binary"
