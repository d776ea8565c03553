#!/usr/bin/env bash
# The main job on the embedded default: no Consul, no AWS, nothing but this machine.
#
# `plugworker dev` starts the embedded Consul-compatible registry, this build's runners
# as separate processes (they register over HTTP exactly as with Consul), and the
# controller; it feeds it the jobs in scripts/demo-jobs.jsonl (or the file given) and
# prints one result per job. The pipelines in scripts/demo/pipelines (meme_report: the
# meme's template, its text, the text's language) are stored in the registry first, so
# jobs can name them. With no file given, four image jobs are added for the meme in
# scripts/demo/meme.jpg (a gallery template with captions): classified, its text read,
# both and the text's language in one job of the meme_report pipeline, and its text and
# language through a pipeline written in the job itself. Bad jobs get clear error
# results; a job for an algorithm no runner serves is retried, then reported once its
# attempts are used up.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
echo "==> setup: build tools and models (scripts/setup.sh --demo)"
scripts/setup.sh --demo

if [ $# -ge 1 ]; then
  jobs="$1"
else
  jobs="$(mktemp --suffix=.jsonl)"
  trap 'rm -f "$jobs"' EXIT
  cp scripts/demo-jobs.jsonl "$jobs"
  meme="$(base64 -w0 scripts/demo/meme.jpg)"
  for algorithm in meme_classifier ocr; do
    printf '{"id": "meme-%s", "algorithm": "%s", "payload": {"image_base64": "%s"}}\n' \
      "$algorithm" "$algorithm" "$meme" >>"$jobs"
  done
  printf '{"id": "meme-report-1", "pipeline": "meme_report", "payload": {"image_base64": "%s"}}\n' "$meme" >>"$jobs"
  printf '{"id": "meme-inline", "pipeline": {"text": {"algorithm": "ocr"}, "lang": {"algorithm": "language_detection", "input": {"text": "/text/text"}}}, "payload": {"image_base64": "%s"}}\n' \
    "$meme" >>"$jobs"
fi
# Only what the demo runs: the plugworker command and the deployed runners (the
# test command builds the rest), without their default features, i.e. without what the
# demo never touches: the AWS SDK (SQS, the S3 claim-check, `image_s3` inputs) and the
# optional ocrs engine. A quarter of the crates and the longest builds go
# (docs/benchmarks.md, First run). Cargo shows its own progress.
runners="$(scripts/runners.sh -p)"
mapfile -t runners <<<"$runners"
echo "==> building plugworker and the runners (first time: a few minutes)"
cargo build --locked -p plugworker-cli "${runners[@]}" --bins --no-default-features --features plugworker-cli/dev
echo "==> plugworker dev --jobs $jobs"
"$PLUGWORKER_BIN/plugworker" dev --jobs "$jobs" --pipelines scripts/demo/pipelines --results - --max-attempts 3 --runner-wait 3s
