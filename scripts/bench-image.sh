#!/usr/bin/env bash
# Image algorithm latency: plugworker (Rust, ort) vs the Python reference (onnxruntime,
# rapidocr) on the same rendered memes and the same model files, in the same run.
# Prints p50/p95 per image for both and the ratio Python/Rust (goal >= 1: not slower),
# OCR character accuracy for both, plugworker's OCR at its former detection size (shorter
# side upscaled to 736) in the same run, and the gallery lookup time at 10 000 templates.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/fetch-models.sh >/dev/null

venv="${PLUGWORKER_BENCH_VENV:-$HOME/.cache/plugworker/bench-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import rapidocr, onnxruntime' 2>/dev/null; then
  echo "bench-image: installing the Python reference into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    onnxruntime==1.32.0 rapidocr==3.10.0 opencv-python-headless==5.0.0.93 numpy==2.4.6 pillow==13.0.0
fi

inputs="$(mktemp -d)"
trap 'rm -rf "$inputs"' EXIT
rust="$(cargo bench --locked -q -p image-runner --bench image_latency -- "$inputs" | tee /dev/stderr | sed -n 's/^RESULT //p')"
python="$("$venv/bin/python" scripts/bench_image_reference.py "$inputs" models | sed -n 's/^RESULT //p')"
python3 - "$rust" "$python" <<'PY'
import json, sys
rust, python = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print("\nsame run, same images and model files (ratio = Python / Rust; >= 1 means Rust is not slower):")
for name, key in [("meme_classifier", "meme"), ("ocr", "ocr")]:
    for q in ("p50", "p95"):
        r, p = rust[f"{key}_{q}_ms"], python[f"{key}_{q}_ms"]
        print(f"  {name:<16} {q}: rust {r:8.2f} ms   python {p:8.2f} ms   ratio {p / r:.2f}")
print(f"  ocr character accuracy: rust {rust['ocr_accuracy']:.4f}   python {python['ocr_accuracy']:.4f}")
print(f"  ocr with detection upscaled to 736 (plugworker before), same run: "
      f"p50 {rust['ocr_736_p50_ms']:.1f} ms  p95 {rust['ocr_736_p95_ms']:.1f} ms  "
      f"accuracy {rust['ocr_736_accuracy']:.4f}")
PY
