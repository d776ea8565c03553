"""Delivery soak (scripts/soak.sh): N jobs through moto SQS, the embedded registry,
test-runners and `plugworker controller`, while runners are SIGKILLed at random and the
controller is restarted twice. Prints submitted / distinct final results / duplicates /
DLQ entries (with and without an error result) / missing, and checks every job's outcome:
each valid job must end `ok` and each invalid one with its expected error code; the exit
status is 1 otherwise. Not a test: a figure.

The mesh runs as deployed: the registry enforces ACLs (default deny) and intentions
(default deny); each process holds a token of its own (the controller the controller
policy, each runner its service identity), one intention allows controller -> test-runner,
and runners serve mTLS only (Connect native) while the controller dials them with its leaf.

Environment: SOAK_JOBS (5000), SOAK_RUNNERS (3), SOAK_KILL_EVERY (seconds between runner
kills, 4), SOAK_TIMEOUT (seconds to wait for every result, 1800), PLUGWORKER_BIN (the
folder of the binaries), PLUGWORKER_MOTO_SERVER.
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

import boto3

BIN = pathlib.Path(os.environ["PLUGWORKER_BIN"])
MOTO = os.environ.get("PLUGWORKER_MOTO_SERVER") or str(pathlib.Path(sys.executable).parent / "moto_server")
JOBS = int(os.environ.get("SOAK_JOBS", "5000"))
RUNNERS = int(os.environ.get("SOAK_RUNNERS", "3"))
KILL_EVERY = float(os.environ.get("SOAK_KILL_EVERY", "4"))
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
        self.runner_token = self.consul("PUT", "/v1/acl/token", {"Description": "test-runner", "ServiceIdentities": [{"ServiceName": "test-runner"}]})["SecretID"]
        self.consul("PUT", "/v1/config", {"Kind": "service-intentions", "Name": "test-runner", "Sources": [{"Name": "controller", "Action": "allow"}]})
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

    def start_runner(self):
        self.generation += 1
        process = self.spawn(
            f"runner-{self.generation}",
            [str(BIN / "test-runner"), "--listen", f"127.0.0.1:{free_port()}", "--consul-address", f"http://{self.registry_address}",
             "--health-listen", f"127.0.0.1:{free_port()}",
             "--check-interval", "1s", "--deregister-critical-after", "3s", "--max-concurrent-runs", "16"],
            {"CONSUL_HTTP_TOKEN": self.runner_token},
        )
        self.runners.append(process)

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

    def kill_a_runner(self):
        alive = [r for r in self.runners if r.poll() is None]
        if not alive:
            return
        victim = random.choice(alive)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.start_runner()

    def stop(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


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
            stack.start_runner()
        time.sleep(2)
        stack.start_controller()
        started = time.time()
        submitted = set()
        expected = {}
        first = {}
        sender = threading.Thread(target=submit, args=(stack, submitted, [job(i) for i in range(JOBS)], expected))
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

        while time.time() < deadline:
            for message in drain(stack.sqs, stack.results, limit=100):
                record(message)
            done = len(set(submitted) & set(results))
            if restarts < 2 and done >= JOBS * (restarts + 1) / 3:
                stack.restart_controller()
                restarts += 1
            if time.time() >= next_kill and done < JOBS:
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
        print(f"chaos:            {kills} runner SIGKILLs, {restarts} controller restarts")
        print(f"time:             {elapsed:.1f} s until every result")
        print(f"logs:             {LOGS}")
        return 0 if distinct == len(submitted) and not silent and not wrong else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
