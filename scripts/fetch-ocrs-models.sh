#!/usr/bin/env bash
# Fetches the ocrs engine's models (text-detection.rten, text-recognition.rten) into
# models/cache/ocrs/, for PLUGWORKER_OCR_ENGINE=ocrs. They are published only on the ocrs
# project's own server, not on a package registry, so this needs internet access and is
# not part of setup or CI (the PP-OCRv6 engine is the one tested there). Override the
# source with OCRS_MODELS_BASE_URL; set OCRS_DETECTION_SHA256 / OCRS_RECOGNITION_SHA256 to
# pin the files you have vetted.
set -euo pipefail
cd "$(dirname "$0")/.."
base="${OCRS_MODELS_BASE_URL:-https://ocrs-models.s3-accelerate.amazonaws.com}"
mkdir -p models/cache/ocrs
for pair in "text-detection:${OCRS_DETECTION_SHA256:-}" "text-recognition:${OCRS_RECOGNITION_SHA256:-}"; do
  name="${pair%%:*}"; expected="${pair#*:}"
  target="models/cache/ocrs/$name.rten"
  if [ ! -s "$target" ]; then
    echo "fetch-ocrs-models: downloading $base/$name.rten"
    curl --fail --location --silent --show-error --retry 3 -o "$target.part" "$base/$name.rten"
    mv "$target.part" "$target"
  fi
  actual="$(sha256sum "$target" | cut -d' ' -f1)"
  if [ -n "$expected" ] && [ "$actual" != "$expected" ]; then
    echo "fetch-ocrs-models: $target has sha256 $actual, expected $expected" >&2
    exit 1
  fi
  echo "fetch-ocrs-models: $target sha256 $actual"
done
echo "fetch-ocrs-models: done; start image-runner with PLUGWORKER_OCR_ENGINE=ocrs"
