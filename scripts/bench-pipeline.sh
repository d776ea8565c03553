#!/usr/bin/env bash
# A pipeline job's latency against its steps run alone, same run (docs/benchmarks.md,
# Pipelines).
#
# The stack of the pipeline soak (scripts/soak.py, SOAK_MODE=pipeline: moto SQS, the
# embedded registry with ACLs and intentions on, mTLS runners, `plugworker controller`,
# the demo's meme_report pipeline stored in KV) with one image-runner and one nlp-runner.
# Each round sends, in a shuffled order and one job at a time (the next is sent once the
# previous result is in): the demo meme to meme_classifier (the `label` step alone), to
# ocr (`text`), the meme's text to language_detection (`lang`), and the meme to the
# meme_report pipeline (all three). A job's latency is the controller's own `total_ms`
# (receipt to result), so SQS polling does not count. The first BENCH_PIPELINE_WARMUP
# rounds (default 3) are left out. Prints each kind's p50 and p95, the sum and the max of
# the steps' p50s, the critical path (max(label, text) + lang), the pipeline's p50, and
# the median over rounds of pipeline / sum and pipeline / max within a round. Every job
# must come back as the result of that job (its id), ok, with a non-null output and, for
# the pipeline, each of its three steps answered (no step error, no null output: `lang`
# is optional, so an ok job could otherwise time two steps as three); one that does not
# fails the bench.
#   BENCH_PIPELINE_ROUNDS=40 scripts/bench-pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${BENCH_PIPELINE_ROUNDS:-40}"
warmup="${BENCH_PIPELINE_WARMUP:-3}"
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ && "$warmup" =~ ^[0-9]+$ ]]; then
  echo "bench-pipeline: BENCH_PIPELINE_ROUNDS and BENCH_PIPELINE_WARMUP must be integers (rounds > 0)" >&2
  exit 2
fi
script="$(mktemp --suffix=.py)"
trap 'rm -f "$script"' EXIT
cat >"$script" <<'PY'
import base64, json, random, statistics, sys, time
sys.path.insert(0, "scripts")
import soak  # noqa: E402  (reads SOAK_MODE and PLUGWORKER_BIN when imported)

rounds, warmup = int(sys.argv[1]), int(sys.argv[2])
meme = {"image_base64": base64.b64encode(open("scripts/demo/meme.jpg", "rb").read()).decode()}


def problem(body, result):
    """Why `result` is not the full answer to `body`, or None."""
    if result.get("job_id") != body["id"]:
        return f"the result of job {result.get('job_id')!r}, not {body['id']!r}"
    if result.get("status") != "ok" or result.get("result") is None:
        return "not ok"
    if "pipeline" in body:
        steps, outputs = result.get("steps") or {}, result["result"]
        if sorted(steps) != ["label", "lang", "text"]:
            return f"steps {sorted(steps)}"
        for name, step in steps.items():
            if step.get("error") or step.get("result") is None or outputs.get(name) is None:
                return f"step {name} has no output"
    return None


def run(stack, body):
    """Sends one job and waits for its result; the result document. Exits unless it is
    the full answer to that job."""
    stack.sqs.send_message(QueueUrl=stack.jobs, MessageBody=json.dumps(body))
    deadline = time.time() + 120
    while time.time() < deadline:
        for message in stack.sqs.receive_message(QueueUrl=stack.results, MaxNumberOfMessages=1, WaitTimeSeconds=1).get("Messages", []):
            stack.sqs.delete_message(QueueUrl=stack.results, ReceiptHandle=message["ReceiptHandle"])
            result = json.loads(message["Body"])
            wrong = problem(body, result)
            if wrong:
                sys.exit(f"bench-pipeline: job {body['id']} failed ({wrong}): {message['Body'][:300]}")
            return result
    sys.exit(f"bench-pipeline: no result for job {body['id']} within 120 s")


random.seed(7)
stack = soak.Stack()
try:
    stack.start_runner("image-runner")
    stack.start_runner("nlp-runner")
    stack.start_controller()
    # The meme's text, the `lang` step's input when it runs alone.
    text = run(stack, {"id": "text-of-the-meme", "algorithm": "ocr", "payload": meme})["result"]["text"]
    kinds = {
        "label": {"algorithm": "meme_classifier", "payload": meme},
        "text": {"algorithm": "ocr", "payload": meme},
        "lang": {"algorithm": "language_detection", "payload": {"text": text}},
        "pipeline": {"pipeline": "meme_report", "payload": meme},
    }
    samples = {kind: [] for kind in kinds}
    for n in range(warmup + rounds):
        order = list(kinds)
        random.shuffle(order)
        for kind in order:
            ms = run(stack, dict(kinds[kind], id=f"{kind}-{n}"))["timings"]["total_ms"]
            if n >= warmup:
                samples[kind].append(ms)
finally:
    stack.stop()


def p(values, q):
    ordered = sorted(values)
    return ordered[round((len(ordered) - 1) * q)]


steps = ("label", "text", "lang")
p50 = {kind: statistics.median(values) for kind, values in samples.items()}
total, longest = sum(p50[s] for s in steps), max(p50[s] for s in steps)
critical = max(p50["label"], p50["text"]) + p50["lang"]
by_round = list(zip(*(samples[k] for k in ("label", "text", "lang", "pipeline"))))
to_sum = statistics.median(pipe / (a + b + c) for a, b, c, pipe in by_round)
to_max = statistics.median(pipe / max(a, b, c) for a, b, c, pipe in by_round)
print(f"\n{rounds} rounds (after {warmup} warm-up), one job at a time, latency = the controller's total_ms")
print(f"{'job':<34}{'p50 ms':>10}{'p95 ms':>10}")
names = {"label": "label alone (meme_classifier)", "text": "text alone (ocr)", "lang": "lang alone (language_detection)",
         "pipeline": "meme_report pipeline (all three)"}
for kind in kinds:
    print(f"{names[kind]:<34}{p50[kind]:>10.1f}{p(samples[kind], 0.95):>10.1f}")
print(f"sum of the steps' p50s:   {total:.1f} ms")
print(f"max of the steps' p50s:   {longest:.1f} ms")
print(f"critical path (max(label, text) + lang): {critical:.1f} ms")
print(f"pipeline p50 / sum: {p50['pipeline'] / total:.2f}; / max: {p50['pipeline'] / longest:.2f}; / critical path: {p50['pipeline'] / critical:.2f}")
print(f"within a round, median of pipeline / sum: {to_sum:.2f}; pipeline / max: {to_max:.2f}")
PY
# soak.sh builds, copies the binaries aside and runs the script with its Python.
SOAK_MODE=pipeline scripts/soak.sh "$script" "$rounds" "$warmup"
