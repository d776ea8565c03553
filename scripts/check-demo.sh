#!/usr/bin/env bash
# The README's first command, checked: runs scripts/demo.sh exactly as a new user does
# (its lean build: no AWS SDK, no ocrs engine) and fails unless every demo job got the
# one final result it should, then checks that the lean build says clearly what it
# lacks: an `image_s3` job gets a permanent error naming the missing feature, and the
# SQS commands are absent with a note in `--help`, and neither the AWS SDK nor the ocrs
# engine is in that build. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "check-demo: the lean build has no AWS SDK and no ocrs engine"
demo_packages="$(scripts/runners.sh -p)"
mapfile -t demo_packages <<<"$demo_packages"
demo_packages=(-p plugworker-cli "${demo_packages[@]}")
lean="$(cargo tree --locked "${demo_packages[@]}" --no-default-features --features plugworker-cli/dev -e normal,build --prefix none)"
full="$(cargo tree --locked "${demo_packages[@]}" -e normal,build --prefix none)"
for crate in aws-config aws-sdk-sqs aws-sdk-s3 aws-smithy-runtime aws-lc-sys rten ocrs; do
  if ! grep -q "^$crate v" <<<"$full"; then
    echo "check-demo: $crate is not in the default build either; is its name right?" >&2
    exit 1
  fi
  if grep -q "^$crate v" <<<"$lean"; then
    echo "check-demo: $crate is in the demo's lean build; what brings it:" >&2
    cargo tree --locked "${demo_packages[@]}" --no-default-features --features plugworker-cli/dev -e normal,build -i "$crate" >&2
    exit 1
  fi
done

echo "check-demo: scripts/demo.sh"
scripts/demo.sh >"$work/demo.out" 2>"$work/demo.err" || {
  tail -n 40 "$work/demo.err" >&2
  echo "check-demo: scripts/demo.sh failed" >&2
  exit 1
}
python3 - "$work/demo.out" scripts/demo-jobs.jsonl <<'PY'
import json, sys
results = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
# One result per line of the jobs file (a line that is not JSON too), plus the four jobs
# demo.sh adds for its meme.
jobs = sum(1 for line in open(sys.argv[2]) if line.strip()) + 4
by_id = {r["job_id"]: r for r in results}
problems = []
def expect(condition, what):
    if not condition:
        problems.append(what)

expect(len(results) == jobs, f"{jobs} results expected, got {len(results)}")
expect(len(by_id) == jobs, "a job id appears twice (or not at all)")
for job, language in [("english", "en"), ("french", "fr"), ("german", "de"),
                      ("spanish", "es"), ("japanese", "ja")]:
    r = by_id.get(job, {})
    expect(r.get("status") == "ok" and r["result"]["language"] == language,
           f"{job}: language {language} expected, got {json.dumps(r)[:300]}")
for job, code in [("wrong-type", "invalid_payload"), ("unknown-algorithm", "no_runner"),
                  (None, "bad_json")]:
    r = by_id.get(job, {})
    expect(r.get("status") == "error" and r["error"]["code"] == code,
           f"{job}: error {code} expected, got {json.dumps(r)[:300]}")
meme = by_id.get("meme-meme_classifier", {})
expect(meme.get("status") == "ok" and meme["result"]["label"] == "chelsea-the-cat",
       f"meme_classifier: chelsea-the-cat expected, got {json.dumps(meme)[:300]}")
meme_text = "WHEN THE JOB\nFINALLY REACHES THE\nRUNNER"
ocr = by_id.get("meme-ocr", {})
expect(ocr.get("status") == "ok" and ocr["result"]["text"] == meme_text,
       f"ocr: the demo meme's three caption lines expected, got {json.dumps(ocr)[:300]}")
# The meme_report pipeline (scripts/demo/pipelines): three steps on three runners' algorithms
# in one job, the language detected in the text the OCR step read.
report = by_id.get("meme-report-1", {})
steps, outputs = report.get("steps") or {}, report.get("result") or {}
expect(report.get("status") == "ok" and report.get("algorithm") is None
       and (report.get("pipeline") or {}).get("name") == "meme_report"
       and isinstance(report["pipeline"].get("revision"), int),
       f"meme-report-1: an ok result of the stored pipeline meme_report expected, got {json.dumps(report)[:300]}")
expect(list(outputs) == ["label", "text", "lang"] and sorted(steps) == ["label", "lang", "text"],
       f"meme-report-1: the steps label, text and lang expected, got {sorted(outputs)} / {sorted(steps)}")
expect(all((steps.get(name) or {}).get("algorithm") == algorithm and steps[name].get("runner")
           for name, algorithm in [("label", "meme_classifier"), ("text", "ocr"), ("lang", "language_detection")]),
       f"meme-report-1: each step's algorithm and runner expected, got {json.dumps(steps)[:300]}")
expect((outputs.get("label") or {}).get("label") == "chelsea-the-cat",
       f"meme-report-1: label chelsea-the-cat expected, got {json.dumps(outputs.get('label'))[:200]}")
# The `text` step is the same call as the standalone ocr job: the same output.
expect((outputs.get("text") or {}).get("text") == meme_text and outputs.get("text") == ocr.get("result"),
       f"meme-report-1: the standalone ocr job's output (the three caption lines) expected, got {json.dumps(outputs.get('text'))[:200]}")
expect((outputs.get("lang") or {}).get("language") == "en",
       f"meme-report-1: the text's language (en) expected, got {json.dumps(outputs.get('lang'))[:200]}")
inline = by_id.get("meme-inline", {})
expect(inline.get("status") == "ok" and (inline.get("pipeline") or {}).get("name") == "inline"
       and (inline.get("result") or {}).get("lang", {}).get("language") == "en",
       f"meme-inline: the inline pipeline's language en expected, got {json.dumps(inline)[:300]}")
if problems:
    sys.exit("check-demo: the demo's results are wrong:\n  " + "\n  ".join(problems))
print(f"check-demo: {len(results)} results, each as expected")
PY

echo "check-demo: the lean build refuses image_s3 clearly"
printf '%s\n' '{"id": "from-s3", "algorithm": "meme_classifier", "payload": {"image_s3": "s3://some-bucket/meme.jpg"}}' >"$work/s3.jsonl"
"$PLUGWORKER_BIN/plugworker" dev --jobs "$work/s3.jsonl" --results "$work/s3-results.jsonl" \
  --format json --runner image-runner --runner-wait 60s 2>"$work/s3.err" >/dev/null || {
  tail -n 40 "$work/s3.err" >&2
  exit 1
}
python3 - "$work/s3-results.jsonl" <<'PY'
import json, sys
results = [json.loads(line) for line in open(sys.argv[1])]
ok = (len(results) == 1 and results[0]["status"] == "error"
      and results[0]["error"]["class"] == "permanent"
      and "built without S3 support" in results[0]["error"]["message"])
if not ok:
    sys.exit(f"check-demo: image_s3 on the lean build: a permanent error naming the missing S3 support expected, got {results}")
print("check-demo: image_s3 ->", results[0]["error"]["message"][:120], "...")
PY

help="$("$PLUGWORKER_BIN/plugworker" --help)"
if grep -qE '^  (controller|submit|results) ' <<<"$help" || ! grep -q "no AWS support" <<<"$help"; then
  echo "check-demo: the lean plugworker should list no SQS command and say why; --help was:" >&2
  echo "$help" >&2
  exit 1
fi
echo "check-demo: the lean build's --help says the SQS commands need the default build"
