#!/usr/bin/env bash
# The default path at benchmark speed: per-job times of `plugworker dev` (the debug build
# that `scripts/demo.sh` runs) next to the release benchmark's, in one run.
#
# 1. The release benchmark (`cargo bench -p image-runner --bench image_latency`) renders
#    the 6 bench memes (500 px) into a folder and measures meme_classifier and ocr on them,
#    warm, one image at a time, decode included.
# 2. The same images go through `plugworker dev` as jobs, one job at a time
#    (`--max-in-flight 1`), each image 6 times per algorithm; the runner's own run time
#    of every job (`timings.run_ms`: from the run slot to the answer, so base64 and image
#    decoding and the algorithm, not the gRPC hop, JSON parsing or schema validation) is
#    read from the results. Each algorithm's first job is left out (warm-up, as the
#    benchmark does).
#
# Prints p50/p95 of both and the ratio dev/release per algorithm (goal <= 1.2).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/fetch-models.sh >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== release benchmark (renders the bench memes into $work/inputs)"
release="$(cargo bench --locked -q -p image-runner --bench image_latency -- "$work/inputs" |
  tee /dev/stderr | sed -n 's/^RESULT //p')"

echo "== the demo's debug build"
cargo build --locked -p plugworker-cli -p image-runner -p nlp-runner --bins

repeats="${BENCH_DEV_REPEATS:-6}"
python3 - "$work/inputs" "$work/jobs.jsonl" "$repeats" <<'PY'
import base64, json, pathlib, sys
inputs, out, repeats = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
images = sorted(inputs.glob("meme-*.jpg"))
with out.open("w") as f:
    for algorithm in ("meme_classifier", "ocr"):
        for r in range(repeats):
            for image in images:
                payload = {"image_base64": base64.b64encode(image.read_bytes()).decode()}
                f.write(json.dumps({"id": f"{algorithm}-{r}-{image.stem}",
                                    "algorithm": algorithm, "payload": payload}) + "\n")
PY
echo "== plugworker dev (debug build), one job at a time"
"$PLUGWORKER_BIN/plugworker" dev --jobs "$work/jobs.jsonl" --results "$work/results.jsonl" \
  --format json --max-in-flight 1 --runner-wait 60s --runner image-runner >/dev/null

python3 - "$release" "$work/results.jsonl" <<'PY'
import json, statistics, sys
release = json.loads(sys.argv[1])
by_algorithm = {}
for line in open(sys.argv[2]):
    result = json.loads(line)
    if result.get("status") != "ok":
        sys.exit(f"bench-dev: job {result.get('job_id')} did not succeed: {line[:300]}")
    by_algorithm.setdefault(result["algorithm"], []).append(result["timings"]["run_ms"])

def percentile(samples, p):
    samples = sorted(samples)
    return samples[round((len(samples) - 1) * p)]

print("\nsame run, same images: plugworker dev (debug build, one job at a time, runner's run time)")
print("vs the release benchmark (warm, one image at a time, decode included):")
worst = 0.0
for name, key in (("meme_classifier", "meme"), ("ocr", "ocr")):
    samples = by_algorithm[name][1:]
    d50, d95 = percentile(samples, 0.5), percentile(samples, 0.95)
    r50, r95 = release[f"{key}_p50_ms"], release[f"{key}_p95_ms"]
    worst = max(worst, d50 / r50)
    print(f"  {name:<16} dev p50 {d50:7.1f} ms  p95 {d95:7.1f} ms   release p50 {r50:7.1f} ms"
          f"  p95 {r95:7.1f} ms   dev/release p50 {d50 / r50:.2f}  ({len(samples)} jobs)")
print(f"worst dev/release p50: {worst:.2f} (goal <= 1.2) {'MET' if worst <= 1.2 else 'NOT MET'}")
PY
