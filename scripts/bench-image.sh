#!/usr/bin/env bash
# Image algorithm latency: plugworker (Rust, ort) vs the Python reference (onnxruntime,
# rapidocr) on the same rendered memes and the same model files, in the same run.
#
# meme_classifier: PLUGWORKER_BENCH_ROUNDS (default 5, at least 5 for a published figure)
# alternating rounds, Rust then Python, each a fresh process measuring p50/p95 over 60
# classifications (decode included) and each stage alone (decode, resize, inference).
# Both run in-process on the same JPEG bytes with a single caller, so no client or server
# shares the 2 cores with the measured work; alternating makes drift from other load fall
# on both sides alike. Prints every round with the load average before it, the medians of
# the rounds' p50 and p95, and the ratio Python/Rust of the medians (>= 1: not slower).
# Both sides check every answer against the image's template label and fail the run on a
# wrong one, so a broken classifier cannot print a good figure.
#
# Then once: OCR p50/p95 and character accuracy for both, plugworker's OCR at its former
# detection size (shorter side upscaled to 736) in the same run, and the gallery lookup
# time at 10 000 templates.
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

rounds="${PLUGWORKER_BENCH_ROUNDS:-5}"
inputs="$(mktemp -d)"
results="$(mktemp)"
trap 'rm -rf "$inputs" "$results"' EXIT
# Built before the first round and run directly, so no round waits on cargo (or rebuilds
# because a file changed meanwhile).
bench="$(cargo bench --locked -q -p image-runner --bench image_latency --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "image_latency" and m.get("executable"):
        print(m["executable"])')"
[ -x "$bench" ] || { echo "bench-image: no image_latency executable" >&2; exit 1; }

# One RESULT line of JSON from a command, or a failed run.
result() {
  local out
  out="$("$@")"
  grep -q '^RESULT ' <<<"$out" || { echo "bench-image: no RESULT from $*" >&2; return 1; }
  sed -n 's/^RESULT //p' <<<"$out"
}

echo "meme_classifier: $rounds rounds of Rust and Python (Rust first in odd rounds, Python first in even ones), $(nproc) cores, $(date -u '+%F %H:%M UTC')"
for round in $(seq 1 "$rounds"); do
  load="$(cut -d' ' -f1 /proc/loadavg)"
  # Alternating which side goes first keeps a warm page cache or a load trend from
  # favouring one side.
  if (( round % 2 )); then
    rust="$(result "$bench" "$inputs" --meme-only)"
    python="$(result "$venv/bin/python" scripts/bench_image_reference.py "$inputs" models --meme-only)"
  else
    python="$(result "$venv/bin/python" scripts/bench_image_reference.py "$inputs" models --meme-only)"
    rust="$(result "$bench" "$inputs" --meme-only)"
  fi
  echo "{\"round\": $round, \"load\": $load, \"rust\": $rust, \"python\": $python}" | tee -a "$results"
done

rust="$(result "$bench" "$inputs")"
python="$(result "$venv/bin/python" scripts/bench_image_reference.py "$inputs" models)"
python3 - "$results" "$rust" "$python" <<'PY'
import json, statistics, sys
rounds = [json.loads(line) for line in open(sys.argv[1])]
rust, python = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print("\nmeme_classifier, per round (ms; ratio = Python / Rust, >= 1 means Rust is not slower):")
print("  round  load   rust p50  python p50  ratio   rust p95  python p95")
for r in rounds:
    rp, pp = r["rust"]["meme_p50_ms"], r["python"]["meme_p50_ms"]
    print(f"  {r['round']:>5} {r['load']:>5.2f}  {rp:9.2f}  {pp:10.2f}  {pp / rp:5.2f}  "
          f"{r['rust']['meme_p95_ms']:9.2f}  {r['python']['meme_p95_ms']:10.2f}")
median = lambda side, key: statistics.median(r[side][key] for r in rounds)
for q in ("p50", "p95"):
    rp, pp = median("rust", f"meme_{q}_ms"), median("python", f"meme_{q}_ms")
    print(f"  median of {len(rounds)} rounds, {q}: rust {rp:.2f} ms   python {pp:.2f} ms   ratio {pp / rp:.2f}")
print("  where the time goes (median of the rounds' per-stage p50, ms):")
stages = ["decode", "resize", "inference"]
print("    " + " " * 6 + "".join(f"{s:>11}" for s in stages))
for side in ("rust", "python"):
    print(f"    {side:<6}" + "".join(
        f"{statistics.median(r[side]['stages_ms'][s] for r in rounds):11.2f}" for s in stages))
print(f"    rust resize with image's f32 triangle filter (plugworker before): "
      f"{statistics.median(r['rust']['stages_ms']['resize_image_crate'] for r in rounds):.2f}")
print(f"    embeddings through either resize agree to a cosine similarity of at least "
      f"{min(r['rust']['stages_ms']['former_resize_min_cosine'] for r in rounds):.5f}")

print("\nocr, one run, same images and model files:")
for q in ("p50", "p95"):
    r, p = rust[f"ocr_{q}_ms"], python[f"ocr_{q}_ms"]
    print(f"  ocr {q}: rust {r:8.2f} ms   python {p:8.2f} ms   ratio {p / r:.2f}")
print(f"  ocr character accuracy: rust {rust['ocr_accuracy']:.4f}   python {python['ocr_accuracy']:.4f}")
print(f"  ocr with detection upscaled to 736 (plugworker before), same run: "
      f"p50 {rust['ocr_736_p50_ms']:.1f} ms  p95 {rust['ocr_736_p95_ms']:.1f} ms  "
      f"accuracy {rust['ocr_736_accuracy']:.4f}")
print(f"gallery lookup, 10 000 templates (rust): p50 {rust['lookup_10k_p50_ms']:.3f} ms  "
      f"p95 {rust['lookup_10k_p95_ms']:.3f} ms")
PY
