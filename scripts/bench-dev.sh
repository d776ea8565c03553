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
# Both steps run BENCH_DEV_ROUNDS times (default 3), alternating, because a 2-core VM has
# slow windows that last tens of seconds: a window that falls on one side only skews a
# single round, not the median. Prints each round's p50s and ratios, then the median
# ratio dev/release per algorithm (goal <= 1.2).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/fetch-models.sh >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rounds="${BENCH_DEV_ROUNDS:-3}"
repeats="${BENCH_DEV_REPEATS:-6}"
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ && "$repeats" =~ ^[1-9][0-9]*$ ]]; then
  echo "bench-dev: BENCH_DEV_ROUNDS and BENCH_DEV_REPEATS must be positive integers" >&2
  exit 2
fi

echo "== building: the release benchmark and the demo's debug build"
cargo bench --locked -q -p image-runner --bench image_latency --no-run
cargo build --locked -p plugworker-cli -p image-runner -p nlp-runner --bins --no-default-features --features plugworker-cli/dev

for round in $(seq 1 "$rounds"); do
  echo "== round $round/$rounds: release benchmark (renders the bench memes into $work/inputs)"
  cargo bench --locked -q -p image-runner --bench image_latency -- "$work/inputs" |
    tee /dev/stderr | sed -n 's/^RESULT //p' >"$work/release-$round.json"
  if [ "$round" = 1 ]; then
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
  fi
  echo "== round $round/$rounds: plugworker dev (debug build), one job at a time"
  "$PLUGWORKER_BIN/plugworker" dev --jobs "$work/jobs.jsonl" --results "$work/dev-$round.jsonl" \
    --format json --max-in-flight 1 --runner-wait 60s --runner image-runner >/dev/null
done

python3 - "$work" "$rounds" <<'PY'
import json, pathlib, statistics, sys
work, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])

def percentile(samples, p):
    samples = sorted(samples)
    return samples[round((len(samples) - 1) * p)]

algorithms = (("meme_classifier", "meme"), ("ocr", "ocr"))
ratios = {name: [] for name, _ in algorithms}
print("\nsame images: plugworker dev (debug build, one job at a time, runner's run time)")
print("vs the release benchmark (warm, one image at a time, decode included), alternating:")
for n in range(1, rounds + 1):
    release = json.loads((work / f"release-{n}.json").read_text())
    by_algorithm = {}
    for line in open(work / f"dev-{n}.jsonl"):
        result = json.loads(line)
        if result.get("status") != "ok":
            sys.exit(f"bench-dev: job {result.get('job_id')} did not succeed: {line[:300]}")
        by_algorithm.setdefault(result["algorithm"], []).append(result["timings"]["run_ms"])
    for name, key in algorithms:
        samples = by_algorithm[name][1:]  # the first job warms the runner up
        d50, d95 = percentile(samples, 0.5), percentile(samples, 0.95)
        r50, r95 = release[f"{key}_p50_ms"], release[f"{key}_p95_ms"]
        ratios[name].append(d50 / r50)
        print(f"  round {n}  {name:<16} dev p50 {d50:7.1f} ms  p95 {d95:7.1f} ms"
              f"   release p50 {r50:7.1f} ms  p95 {r95:7.1f} ms   dev/release {d50 / r50:.2f}"
              f"  ({len(samples)} jobs)")
worst = 0.0
for name, _ in algorithms:
    median = statistics.median(ratios[name])
    worst = max(worst, median)
    print(f"median dev/release p50 over {rounds} rounds  {name:<16} {median:.2f}")
print(f"worst median dev/release p50: {worst:.2f} (goal <= 1.2) {'MET' if worst <= 1.2 else 'NOT MET'}")
PY
