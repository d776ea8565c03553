"""Delivery soak (scripts/soak.sh): N jobs through moto SQS, the embedded registry,
test-runners and `plugworker controller`, while runners are SIGKILLed at random and the
controller is restarted twice. Prints submitted / distinct final results / duplicates /
DLQ entries (with and without an error result) / missing, and checks every job's outcome:
each valid job must end `ok` and each invalid one with its expected error code; the exit
status is 1 otherwise. Not a test: a figure.

SOAK_MODE=pipeline: the pipeline soak instead. The demo's meme_report pipeline
(scripts/demo/pipelines/meme_report.json: label, text, lang) is stored in the registry's
KV, and every job names it with the demo meme as payload; two image-runner instances and
one nlp-runner serve the steps, and one image-runner is SIGKILLed once a third of the
results are in, at a moment its metrics show a run in flight (not restarted: the rest runs
on the other). Each result must be ok with all three steps, each step's report naming its
runner, the template chelsea-the-cat, the meme's text and its language (en); and at least
one step must have been retried on the surviving image-runner (a kill that interrupted no
call would prove nothing). Also prints the jobs' latency (median, p95) and the step calls
that were retried.

The mesh runs as deployed: the registry enforces ACLs (default deny) and intentions
(default deny); each process holds a token of its own (the controller the controller
policy, each runner its service identity), one intention allows controller -> test-runner,
and runners serve mTLS only (Connect native) while the controller dials them with its leaf.

Environment: SOAK_MODE (delivery, or pipeline), SOAK_JOBS (5000; pipeline: 1000),
SOAK_RUNNERS (3 test-runners; pipeline: 2 image-runners), SOAK_KILL_EVERY (seconds between
runner kills, 4; delivery only), SOAK_RESTARTS (controller restarts, 2; pipeline: 0),
SOAK_TIMEOUT (seconds to wait for every result, 1800), PLUGWORKER_BIN (the folder of the
binaries), PLUGWORKER_MOTO_SERVER. Run from the repository's root (the runners' ./models).
"""
import collections
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import base64
import statistics

import boto3

BIN = pathlib.Path(os.environ["PLUGWORKER_BIN"])
MOTO = os.environ.get("PLUGWORKER_MOTO_SERVER") or str(pathlib.Path(sys.executable).parent / "moto_server")
PIPELINE = os.environ.get("SOAK_MODE", "delivery") == "pipeline"
JOBS = int(os.environ.get("SOAK_JOBS", "1000" if PIPELINE else "5000"))
RUNNERS = int(os.environ.get("SOAK_RUNNERS", "2" if PIPELINE else "3"))
KILL_EVERY = float(os.environ.get("SOAK_KILL_EVERY", "4"))
RESTARTS = int(os.environ.get("SOAK_RESTARTS", "0" if PIPELINE else "2"))
REPO = pathlib.Path(__file__).resolve().parent.parent
MEME_REPORT = REPO / "scripts/demo/pipelines/meme_report.json"
TIMEOUT = float(os.environ.get("SOAK_TIMEOUT", "1800"))
AWS_ENV = {"AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
LOGS = pathlib.Path(tempfile.mkdtemp(prefix="plugworker-soak-"))
BOOTSTRAP_TOKEN = "6c1f3b52-2a8e-4d7b-9e0f-1a2b3c4d5e6f"
MESSAGE_KEYS = f"soak:{os.urandom(24).hex()}"
# The controller's policy (consul_client::admin::controller_rules("controller")).
CONTROLLER_RULES = ('service "controller" {\n  policy = "write"\n}\nservice_prefix "" {\n  policy = "read"\n}\nnode_prefix "" {\n  policy = "read"\n}\n'
                    'key_prefix "plugworker/pipelines/" {\n  policy = "read"\n}\n')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message: str):
    print(f"soak: {time.strftime('%H:%M:%S')} {message}", flush=True)


class Stack:
    def __init__(self):
        self.processes = []
        moto_port = free_port()
        self.endpoint = f"http://127.0.0.1:{moto_port}"
        self.spawn("moto", [MOTO, "-H", "127.0.0.1", "-p", str(moto_port)])
        self.sqs = boto3.client("sqs", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
        for _ in range(300):
            try:
                self.sqs.list_queues()
                break
            except Exception:
                time.sleep(0.1)
        size = {"MaximumMessageSize": "262144"}
        self.dlq = self.sqs.create_queue(QueueName="soak-dlq", Attributes=size)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"})
        self.jobs = self.sqs.create_queue(QueueName="soak-jobs", Attributes=dict(size, VisibilityTimeout="20", RedrivePolicy=redrive))["QueueUrl"]
        self.results = self.sqs.create_queue(QueueName="soak-results", Attributes=size)["QueueUrl"]
        self.registry_address = f"127.0.0.1:{free_port()}"
        self.spawn("registry", [str(BIN / "plugworker"), "registry", "--listen", self.registry_address,
                                "--acl-enabled", "--acl-default-policy", "deny", "--acl-bootstrap-token", BOOTSTRAP_TOKEN,
                                "--default-intention-policy", "deny"])
        for _ in range(300):
            try:
                self.consul("GET", "/v1/status/leader")
                break
            except Exception:
                time.sleep(0.1)
        policy = self.consul("PUT", "/v1/acl/policy", {"Name": "plugworker-controller", "Rules": CONTROLLER_RULES})
        self.controller_token = self.consul("PUT", "/v1/acl/token", {"Description": "controller", "Policies": [{"ID": policy["ID"]}]})["SecretID"]
        self.runner_tokens = {}
        for service in ("image-runner", "nlp-runner") if PIPELINE else ("test-runner",):
            self.runner_tokens[service] = self.consul("PUT", "/v1/acl/token", {"Description": service, "ServiceIdentities": [{"ServiceName": service}]})["SecretID"]
            self.consul("PUT", "/v1/config", {"Kind": "service-intentions", "Name": service, "Sources": [{"Name": "controller", "Action": "allow"}]})
        if PIPELINE:
            # Stored with the management token: the controller's may only read pipelines.
            self.consul("PUT", "/v1/kv/plugworker/pipelines/meme_report", json.loads(MEME_REPORT.read_text()))
        self.runners = []
        self.controller = None
        self.generation = 0

    def consul(self, method, path, body=None):
        """One Consul API call with the management token; the decoded answer."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://{self.registry_address}{path}", data=data, method=method, headers={"X-Consul-Token": BOOTSTRAP_TOKEN})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def spawn(self, name, args, env=None):
        handle = open(LOGS / f"{name}.log", "ab")
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=handle, env=dict(os.environ, **(env or {})), start_new_session=True)
        self.processes.append(process)
        return process

    def start_runner(self, service="test-runner"):
        self.generation += 1
        limits = ["--max-concurrent-runs", "16"] if service == "test-runner" else []
        listen, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        process = self.spawn(
            f"{service}-{self.generation}",
            [str(BIN / service), "--listen", listen, "--consul-address", f"http://{self.registry_address}",
             "--health-listen", f"127.0.0.1:{free_port()}", "--metrics-address", metrics,
             "--check-interval", "1s", "--deregister-critical-after", "3s", *limits],
            {"CONSUL_HTTP_TOKEN": self.runner_tokens[service]},
        )
        # The port a step report's runner address names, and where its runs in flight show.
        process.port, process.metrics = listen.rsplit(":", 1)[1], metrics
        if service != "nlp-runner":
            self.runners.append(process)
        return process

    def start_controller(self):
        self.generation += 1
        self.controller = self.spawn(
            f"controller-{self.generation}",
            [str(BIN / "plugworker"), "controller", "--jobs-queue-url", self.jobs, "--results-queue-url", self.results,
             "--sqs-endpoint", self.endpoint, "--consul-address", f"http://{self.registry_address}",
             "--health-address", f"127.0.0.1:{free_port()}", "--receive-wait", "1s", "--retry-base", "500ms",
             "--retry-max", "5s", "--shutdown-grace", "3s", "--max-in-flight", "32"],
            # One key for every controller, as deployed: a copy one controller re-queued
            # is the same job to the next.
            dict(AWS_ENV, CONSUL_HTTP_TOKEN=self.controller_token, PLUGWORKER_MESSAGE_KEYS=MESSAGE_KEYS),
        )

    def restart_controller(self):
        old = self.controller
        old.send_signal(signal.SIGTERM)
        code = old.wait(timeout=60)
        log(f"controller stopped (exit {code}); starting another")
        self.start_controller()

    def kill_a_runner(self, replace=True, busy=False):
        """SIGKILLs a live runner (with `busy`, once its metrics show a run in flight, so
        the kill interrupts calls); the killed process, or None."""
        alive = [r for r in self.runners if r.poll() is None]
        if not alive:
            return None
        victim = random.choice(alive)
        deadline = time.time() + 60
        while busy and runs_in_flight(victim) == 0:
            if time.time() > deadline:
                raise SystemExit("soak: the runner to kill had no run in flight for 60 s")
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        if replace:
            self.start_runner()
        return victim

    def stop(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def runs_in_flight(runner) -> float:
    """The runner's plugworker_runner_runs_in_flight, summed over its algorithms."""
    with urllib.request.urlopen(f"http://{runner.metrics}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("plugworker_runner_runs_in_flight{"))


def job(i: int):
    """A job body and the outcome it must end with: ("ok", "") or ("error", its code)."""
    kind = random.random()
    # Invalid jobs: each gets a permanent error result (and a DLQ copy), never a retry.
    if kind < 0.01:
        return "{not json", ("error", "bad_json")
    if kind < 0.02:
        return json.dumps({"id": f"j{i}", "payload": {}}), ("error", "missing_algorithm")
    if kind < 0.03:
        return json.dumps({"id": f"j{i}", "algorithm": "add", "payload": {"numbers": "seven"}}), ("error", "invalid_payload")
    if kind < 0.5:
        return json.dumps({"id": f"j{i}", "algorithm": "add", "payload": {"numbers": [i, 1]}}), ("ok", "")
    return json.dumps({"id": f"j{i}", "algorithm": "echo", "payload": {"message": f"soak {i}", "delay_ms": random.choice([0, 20, 100, 400])}}), ("ok", "")


def meme_job(i: int, meme: str):
    return json.dumps({"id": f"meme-{i}", "pipeline": "meme_report", "payload": {"image_base64": meme}}), ("ok", "")


def pipeline_problem(result: dict):
    """What is wrong with a meme_report result, or None: all three steps, each with its
    runner and output, the demo meme's template, text and language."""
    steps, outputs = result.get("steps") or {}, result.get("result") or {}
    if (result.get("pipeline") or {}).get("name") != "meme_report":
        return f"pipeline {result.get('pipeline')}"
    for name, algorithm in (("label", "meme_classifier"), ("text", "ocr"), ("lang", "language_detection")):
        step = steps.get(name) or {}
        if step.get("algorithm") != algorithm or not step.get("runner") or step.get("error") or step.get("result") is None:
            return f"step {name}: {json.dumps(step)[:200]}"
    if (outputs.get("label") or {}).get("label") != "chelsea-the-cat":
        return f"label {outputs.get('label')}"
    if "FINALLY REACHES" not in (outputs.get("text") or {}).get("text", ""):
        return f"text {outputs.get('text')}"
    if (outputs.get("lang") or {}).get("language") != "en":
        return f"lang {outputs.get('lang')}"
    return None


def submit(stack: Stack, ids: set, jobs: list, expected: dict):
    """Sends the jobs (in a thread of its own: the chaos starts while they arrive) and
    records each message id's expected outcome."""
    bodies = [body for body, _ in jobs]
    sqs = boto3.client("sqs", endpoint_url=stack.endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(k), "MessageBody": body} for k, body in enumerate(bodies[start:start + 10])]
        response = sqs.send_message_batch(QueueUrl=stack.jobs, Entries=entries)
        if response.get("Failed"):
            raise SystemExit(f"soak: submitting failed: {response['Failed']}")
        for sent in response["Successful"]:
            expected[sent["MessageId"]] = jobs[start + int(sent["Id"])][1]
        ids.update(m["MessageId"] for m in response["Successful"])


def drain(sqs, url, attributes=False, limit=None):
    """Receives and deletes what `url` holds (at most `limit` messages)."""
    out = []
    while limit is None or len(out) < limit:
        kwargs = {"MessageAttributeNames": ["All"]} if attributes else {}
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, **kwargs).get("Messages", [])
        if not messages:
            return out
        sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
        out.extend(messages)
    return out


def main():
    random.seed(int(os.environ.get("SOAK_SEED", "12")))
    stack = Stack()
    try:
        for _ in range(RUNNERS):
            stack.start_runner("image-runner" if PIPELINE else "test-runner")
        if PIPELINE:
            stack.start_runner("nlp-runner")
            meme = base64.b64encode((REPO / "scripts/demo/meme.jpg").read_bytes()).decode()
            jobs = [meme_job(i, meme) for i in range(JOBS)]
        else:
            jobs = [job(i) for i in range(JOBS)]
        time.sleep(2)
        stack.start_controller()
        started = time.time()
        submitted = set()
        expected = {}
        first = {}
        bad = {}
        latency = []
        retried = collections.Counter()
        # Step calls retried and answered by each runner (by its port), for the kill's check.
        retried_on = collections.Counter()
        survivors = []
        sender = threading.Thread(target=submit, args=(stack, submitted, jobs, expected))
        sender.start()
        log(f"submitting {JOBS} jobs; logs in {LOGS}")
        results = collections.Counter()
        statuses = collections.Counter()
        errors = set()
        restarts = 0
        kills = 0
        next_kill = time.time() + KILL_EVERY
        deadline = time.time() + TIMEOUT

        def record(message):
            result = json.loads(message["Body"])
            results[result["message_id"]] += 1
            if result["status"] == "error":
                errors.add(result["message_id"])
            if results[result["message_id"]] == 1:
                outcome = (result["status"], (result.get("error") or {}).get("code", ""))
                statuses[outcome] += 1
                first[result["message_id"]] = outcome
                if PIPELINE:
                    latency.append(result["timings"]["total_ms"])
                    problem = pipeline_problem(result) if result["status"] == "ok" else None
                    if problem:
                        bad[result["message_id"]] = problem
                    for name, step in (result.get("steps") or {}).items():
                        # `calls`: the step's calls in this delivery (`attempt` is the delivery count).
                        if step.get("calls", 1) > 1:
                            retried[name] += 1
                            retried_on[(step.get("runner") or {}).get("address", "").rsplit(":", 1)[-1]] += 1
                    if result.get("attempt", 1) > 1:
                        retried["(job redelivered)"] += 1

        while time.time() < deadline:
            for message in drain(stack.sqs, stack.results, limit=100):
                record(message)
            done = len(set(submitted) & set(results))
            if restarts < RESTARTS and done >= JOBS * (restarts + 1) / (RESTARTS + 1):
                stack.restart_controller()
                restarts += 1
            if PIPELINE and kills == 0 and done >= JOBS / 3:
                victim = stack.kill_a_runner(replace=False, busy=True)
                survivors = [r for r in stack.runners if r is not victim]
                kills += 1
                log(f"SIGKILLed an image-runner with runs in flight, {done} of {JOBS} results in")
            if not PIPELINE and time.time() >= next_kill and done < JOBS:
                stack.kill_a_runner()
                kills += 1
                next_kill = time.time() + KILL_EVERY * random.uniform(0.5, 1.5)
            if done >= JOBS and not sender.is_alive():
                break
            time.sleep(0.2)
        elapsed = time.time() - started
        time.sleep(5)  # late duplicates
        for message in drain(stack.sqs, stack.results):
            record(message)
        dead = drain(stack.sqs, stack.dlq, attributes=True)
        silent = [m for m in dead if m.get("MessageAttributes", {}).get("plugworker_original_message_id", {}).get("StringValue") not in errors]
        distinct = len(submitted & set(results))
        duplicates = sum(n - 1 for n in results.values())
        wrong = {m: (first[m], expected[m]) for m in first if m in expected and first[m] != expected[m]}
        valid = sum(1 for m in expected if expected[m][0] == "ok")
        print()
        print(f"submitted:        {len(submitted)}")
        print(f"final results:    {distinct} distinct ({sum(results.values())} published)")
        print(f"duplicates:       {duplicates}")
        print(f"missing:          {len(submitted - set(results))}")
        print(f"DLQ:              {len(dead)} ({len(dead) - len(silent)} with an error result, {len(silent)} silent)")
        print(f"outcomes:         {dict(statuses)}")
        print(f"as expected:      {len(first) - len(wrong)} of {len(first)} ({valid} valid jobs must end ok, {len(expected) - valid} invalid ones with their code)")
        if wrong:
            print(f"UNEXPECTED:       {len(wrong)}, e.g. {list(wrong.items())[:5]} (got, expected)")
        if PIPELINE:
            print(f"pipeline results: {len(first) - len(bad) - len(wrong)} of {len(first)} ok with label, text and lang as expected")
            if bad:
                print(f"WRONG STEPS:      {len(bad)}, e.g. {list(bad.items())[:3]}")
            if latency:
                ordered = sorted(latency)
                print(f"job latency:      median {statistics.median(ordered):.0f} ms, p95 {ordered[int(0.95 * (len(ordered) - 1))]:.0f} ms, max {ordered[-1]:.0f} ms")
            print(f"steps retried:    {dict(retried) or 'none'} (a call to the killed runner, run again on the other;"
                  " a redelivered job ran its pipeline again from the start)")
            on_survivor = sum(retried_on[r.port] for r in survivors)
            print(f"retried on the surviving image-runner: {on_survivor} step calls")
            if not on_survivor:
                print("NO STEP RETRIED:  the SIGKILL interrupted no call that the other image-runner then answered")
        print(f"chaos:            {kills} runner SIGKILLs, {restarts} controller restarts")
        print(f"time:             {elapsed:.1f} s until every result ({distinct / elapsed:.1f} jobs/s)")
        print(f"logs:             {LOGS}")
        exercised = not PIPELINE or sum(retried_on[r.port] for r in survivors) > 0
        return 0 if distinct == len(submitted) and not silent and not wrong and not bad and exercised else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
