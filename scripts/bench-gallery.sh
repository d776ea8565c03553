#!/usr/bin/env bash
# The meme gallery at scale and recognition accuracy on synthetic look-alikes, with the real
# SSCD model: a 10,000-template versioned gallery imported, loaded and reloaded after one
# template is added (time, memory), lookup p50/p99, a read-only folder's poll, then top-1 and
# unknown-rate at 1,000 templates with the threshold chosen on a separate calibration set.
# Method: services/meme/benches/gallery_scale.rs. Fails when an outcome leaves its bound.
# PLUGWORKER_BENCH_GALLERY_TEMPLATES sets the scale (default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/fetch-models.sh >/dev/null
echo "bench-gallery: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
cargo bench --locked -q -p plugworker-meme --bench gallery_scale
