"""Each deployment check passes on the repository and fails when its rule is broken.

Every test copies terraform/ and infra/ to a temporary repository, breaks one thing, and
asserts the check reports that thing. Run: python -m unittest deploy_checks.test_deploy_checks
(from scripts/, with the deploy-checks venv; scripts/check-deploy.sh does both).
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

from . import compose_rules, dockerfile_rules, emulators, terraform_rules, tools

REPO = pathlib.Path(__file__).resolve().parents[2]
# The runners the repository deploys (its compose entries; the rules keep the tfvars keys
# equal to them). Tests take their names from here and name none, so a runner added as the
# README says passes them unchanged (scripts/check-add-runner.sh runs them on such a copy).
RUNNERS = compose_rules.runner_names(REPO)
RUNNER = RUNNERS[-1]  # the runner whose entry a test breaks


class Scratch:
    """A copy of the deployment files, with everything else linked from the repository."""

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = pathlib.Path(self._tmp.name)
        for name in ("terraform", "infra"):
            shutil.copytree(REPO / name, self.root / name, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
        shutil.copy(REPO / "README.md", self.root / "README.md")
        for name in ("models", "scripts", "services"):
            (self.root / name).symlink_to(REPO / name)

    def edit(self, relative: str, old: str, new: str, count: int = 1):
        path = self.root / relative
        text = path.read_text()
        if old not in text:
            raise AssertionError(f"{relative}: {old!r} not found; the test is out of date")
        path.write_text(text.replace(old, new, count))

    def close(self):
        self._tmp.cleanup()


class Case(unittest.TestCase):
    def setUp(self):
        self.scratch = Scratch()
        self.addCleanup(self.scratch.close)

    def assertReports(self, problems, pattern):
        self.assertTrue(any(re.search(pattern, p) for p in problems), f"expected a problem matching {pattern!r}, got {problems}")


class TerraformRules(Case):
    def check(self):
        return terraform_rules.run(self.scratch.root / "terraform")

    def test_the_repository_passes(self):
        self.assertEqual(self.check(), [])

    def test_a_jobs_queue_without_redrive_fails(self):
        self.scratch.edit("terraform/modules/queues/main.tf", "  redrive_policy = jsonencode({", "  dummy = jsonencode({")
        self.assertReports(self.check(), r"\[redrive\].*jobs queue .* has no redrive_policy")

    def test_redrive_to_an_undefined_queue_fails(self):
        self.scratch.edit("terraform/modules/queues/main.tf", "deadLetterTargetArn = aws_sqs_queue.dlq.arn", "deadLetterTargetArn = aws_sqs_queue.elsewhere.arn")
        self.assertReports(self.check(), r"\[redrive\].*aws_sqs_queue\.elsewhere is not defined")

    def test_a_dlq_keeping_messages_shorter_than_its_source_fails(self):
        self.scratch.edit("terraform/modules/queues/main.tf", "message_retention_seconds = 1209600", "message_retention_seconds = 3600")
        self.assertReports(self.check(), r"\[redrive\].*DLQ keeps messages 3600s")

    def test_an_unencrypted_queue_fails(self):
        self.scratch.edit("terraform/modules/queues/main.tf", 'name                      = "${var.name}-results"\n  message_retention_seconds = 345600\n  kms_master_key_id         = var.kms_key_arn',
                          'name                      = "${var.name}-results"\n  message_retention_seconds = 345600')
        self.assertReports(self.check(), r"\[encryption\].*aws_sqs_queue\.results is not encrypted")

    def test_an_unencrypted_log_group_fails(self):
        self.scratch.edit("terraform/modules/observability/main.tf", "  kms_key_id        = var.logs_kms_key_arn\n", "")
        self.assertReports(self.check(), r"\[encryption\].*aws_cloudwatch_log_group\.this has no kms_key_id")

    def test_ingress_from_anywhere_fails(self):
        self.scratch.edit("terraform/modules/consul/main.tf", "    cidr_blocks = [var.vpc_cidr]\n  }\n  ingress {\n    description = \"LAN gossip (UDP)\"",
                          "    cidr_blocks = [\"0.0.0.0/0\"]\n  }\n  ingress {\n    description = \"LAN gossip (UDP)\"")
        self.assertReports(self.check(), r"\[open_ingress\].*aws_security_group\.servers allows ingress from 0\.0\.0\.0/0")

    def test_a_fixed_visibility_timeout_fails(self):
        self.scratch.edit("terraform/modules/queues/main.tf", "visibility_timeout_seconds = local.visibility_timeout_seconds", "visibility_timeout_seconds = 360")
        self.assertReports(self.check(), r"\[visibility\].*not derived from var\.job_timeout_seconds")

    def test_a_visibility_timeout_without_margin_fails(self):
        self.scratch.edit("terraform/modules/queues/main.tf", "var.job_timeout_seconds + var.visibility_margin_seconds", "var.job_timeout_seconds + 5")
        self.assertReports(self.check(), r"\[visibility\].*must exceed the job timeout by at least 30s")

    def test_queues_and_controller_on_different_timeouts_fail(self):
        self.scratch.edit("terraform/main.tf", "  job_timeout_seconds = var.job_timeout_seconds\n  max_receive_count", "  job_timeout_seconds = 900\n  max_receive_count")
        self.assertReports(self.check(), r"\[visibility\].*module queues must get job_timeout_seconds = var\.job_timeout_seconds")

    def test_the_controller_sending_to_the_jobs_queue_fails(self):
        self.scratch.edit("terraform/modules/ecs/iam.tf", '"sqs:GetQueueAttributes"]', '"sqs:GetQueueAttributes", "sqs:SendMessage"]')
        self.assertReports(self.check(), r"\[controller_permissions\].*may not \['sqs:SendMessage'\] on the jobs queue")

    def test_wildcard_sqs_actions_fail(self):
        self.scratch.edit("terraform/modules/ecs/iam.tf", 'actions   = ["sqs:SendMessage"]', 'actions   = ["sqs:*"]')
        self.assertReports(self.check(), r"\[controller_permissions\].*wildcard SQS action")

    def test_a_runner_with_queue_access_fails(self):
        self.scratch.edit("terraform/modules/ecs/iam.tf", 'actions   = ["ec2:DescribeInstances"]', 'actions   = ["ec2:DescribeInstances", "sqs:ReceiveMessage"]')
        self.assertReports(self.check(), r"\[controller_permissions\].*policy task_common grants \['sqs:ReceiveMessage'\]")

    def test_a_bucket_without_kms_fails(self):
        self.scratch.edit("terraform/modules/payloads/main.tf", 'sse_algorithm     = "aws:kms"', 'sse_algorithm     = "AES256"')
        self.assertReports(self.check(), r"\[s3_buckets\].*aws_s3_bucket\.payloads is not encrypted with a KMS key")

    def test_a_bucket_accepting_public_acls_fails(self):
        self.scratch.edit("terraform/modules/payloads/main.tf", "block_public_acls       = true", "block_public_acls       = false")
        self.assertReports(self.check(), r"\[s3_buckets\].*aws_s3_bucket\.payloads does not block public access \(block_public_acls not true\)")

    def test_a_bucket_served_over_plain_http_fails(self):
        self.scratch.edit("terraform/modules/payloads/main.tf", '      "${aws_s3_bucket.payloads.arn}/*",\n', "")
        self.assertReports(self.check(), r"\[s3_buckets\].*aws_s3_bucket\.payloads has no bucket policy denying s3:\* to everyone without TLS")

    def test_payloads_expiring_before_the_dlq_fails(self):
        self.scratch.edit("terraform/variables.tf", "  default     = 15\n", "  default     = 14\n")
        self.assertReports(self.check(), r"\[s3_buckets\].*objects of aws_s3_bucket\.payloads expire after 14 days, not after the longest queue retention \(14 days\)")


class Checkov(Case):
    # That the repository passes checkov is `python -m deploy_checks`'s own first run (a
    # checkov run takes seconds); these show each failure is reported.
    def test_a_key_without_rotation_fails(self):
        self.scratch.edit("terraform/main.tf", "  enable_key_rotation     = true\n", "")
        self.assertReports(tools.checkov(self.scratch.root / "terraform", "terraform"), r"checkov CKV_AWS_7 .*aws_kms_key\.this")

    def test_a_skip_without_justification_fails(self):
        self.scratch.edit("terraform/main.tf", "  enable_key_rotation     = true\n", "  #checkov:skip=CKV_AWS_7\n")
        self.assertReports(tools.checkov(self.scratch.root / "terraform", "terraform"), r"CKV_AWS_7 skipped without a justification")

    def test_a_dockerfile_running_as_root_fails(self):
        self.scratch.edit("infra/docker/runner.Dockerfile", "USER 10001:10001\n", "")
        self.assertReports(tools.checkov(self.scratch.root / "infra" / "docker", "dockerfile"), r"checkov CKV_DOCKER_3 ")


class TerraformFmt(Case):
    @unittest.skipIf(shutil.which("terraform") is None, "no terraform binary on this machine")
    def test_unformatted_files_fail(self):
        self.assertEqual(tools.terraform_fmt(self.scratch.root / "terraform"), [])
        self.scratch.edit("terraform/modules/queues/main.tf", "  receive_wait_time_seconds  = 20", "  receive_wait_time_seconds    =    20")
        self.assertReports(tools.terraform_fmt(self.scratch.root / "terraform"), r"modules/queues/main\.tf is not formatted")


class Dockerfiles(Case):
    def check(self):
        return dockerfile_rules.run(self.scratch.root, compose_rules.runner_names(self.scratch.root))

    def test_the_repository_passes(self):
        self.assertEqual(self.check(), [])

    def test_root_no_healthcheck_single_stage_and_missing_sources_fail(self):
        self.scratch.edit("infra/docker/controller.Dockerfile", "USER 10001:10001", "USER root")
        self.scratch.edit("infra/docker/runner.Dockerfile", "HEALTHCHECK", "# HEALTHCHECK")
        self.scratch.edit("infra/docker/runner.Dockerfile", "COPY models/ models/", "COPY modles/ models/")
        problems = self.check()
        self.assertReports(problems, r"controller\.Dockerfile: the runtime stage does not switch to a non-root USER")
        self.assertReports(problems, r"runner\.Dockerfile: the runtime stage has no HEALTHCHECK")
        self.assertReports(problems, r"runner\.Dockerfile: COPY modles/: no such path")

    def test_a_single_stage_image_fails(self):
        text = (self.scratch.root / "infra/docker/runner.Dockerfile").read_text()
        runtime = text[text.index("FROM debian"):]
        (self.scratch.root / "infra/docker/runner.Dockerfile").write_text(runtime)
        self.assertReports(self.check(), r"runner\.Dockerfile: not multi-stage")


class Compose(Case):
    def check(self):
        return compose_rules.run(self.scratch.root)

    def test_the_repository_passes(self):
        self.assertEqual(self.check(), [])

    def test_a_misspelt_variable_fails_and_the_required_one_is_missed(self):
        self.scratch.edit("infra/docker-compose.yml", "PLUGWORKER_JOBS_QUEUE_URL:", "PLUGWORKER_JOBS_QUEUE_ULR:")
        problems = self.check()
        self.assertReports(problems, r"controller sets PLUGWORKER_JOBS_QUEUE_ULR, which `plugworker controller` does not read")
        self.assertReports(problems, r"controller does not set PLUGWORKER_JOBS_QUEUE_URL \(--jobs-queue-url\)")

    def test_a_payload_bucket_sqs_init_does_not_create_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "      PLUGWORKER_PAYLOAD_BUCKET: plugworker-payloads\n", "      PLUGWORKER_PAYLOAD_BUCKET: elsewhere\n")
        self.assertReports(self.check(), r"controller PLUGWORKER_PAYLOAD_BUCKET=elsewhere is not the bucket plugworker-payloads that sqs-init creates")

    def test_a_runner_variable_typo_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "  PLUGWORKER_METRICS_ADDRESS: 0.0.0.0:9464\n", "  PLUGWORKER_METRIC_ADDRESS: 0.0.0.0:9464\n")
        self.assertReports(self.check(), rf"{RUNNER} sets PLUGWORKER_METRIC_ADDRESS, which `{RUNNER}` does not read")

    def test_a_port_nobody_listens_on_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4317\n      RUST_LOG: info\n    volumes:\n      - controller-token",
                          "OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4999\n      RUST_LOG: info\n    volumes:\n      - controller-token")
        self.assertReports(self.check(), r"controller: OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4999 names otel-collector:4999")

    def test_a_published_port_the_service_does_not_listen_on_fails(self):
        self.scratch.edit("infra/docker-compose.yml", 'ports: ["9090:9090"]', 'ports: ["9090:9091"]')
        self.assertReports(self.check(), r"controller publishes 9090:9091, but listens on \[9090\]")

    def test_a_scrape_target_on_the_wrong_port_fails(self):
        self.scratch.edit("infra/prometheus.yml", '"otel-collector:8889"', '"otel-collector:8899"')
        self.assertReports(self.check(), r"prometheus\.yml: job otel-collector-spanmetrics scrapes otel-collector:8899")

    def test_the_collector_exporting_to_a_closed_port_fails(self):
        self.scratch.edit("infra/tempo.yaml", "endpoint: 0.0.0.0:4317", "endpoint: 0.0.0.0:4417")
        self.assertReports(self.check(), r"otel-collector\.yaml: exporter otlp/tempo sends to tempo:4317")

    def test_a_missing_dockerfile_and_mount_and_dependency_fail(self):
        self.scratch.edit("infra/docker-compose.yml", "dockerfile: infra/docker/runner.Dockerfile", "dockerfile: infra/docker/runners.Dockerfile")
        self.scratch.edit("infra/docker-compose.yml", "./tempo.yaml:/etc/tempo.yaml:ro", "./tempo.yml:/etc/tempo.yaml:ro")
        self.scratch.edit("infra/docker-compose.yml", "depends_on: [tempo]", "depends_on: [jaeger]")
        problems = self.check()
        self.assertReports(problems, rf"service {RUNNER}: Dockerfile .*runners\.Dockerfile does not exist")
        self.assertReports(problems, r"service tempo mounts \./tempo\.yml, which does not exist")
        self.assertReports(problems, r"service otel-collector depends on jaeger, which is not a service")

    def test_an_interpolation_without_default_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "${GRAFANA_ADMIN_PASSWORD:-plugworker}", "${GRAFANA_ADMIN_PASSWORD}")
        self.assertReports(self.check(), r"\$\{GRAFANA_ADMIN_PASSWORD\} has no default")

    def test_queue_names_and_job_timeout_must_match_the_init_job(self):
        self.scratch.edit("infra/docker-compose.yml", "PLUGWORKER_JOB_TIMEOUT: 300s", "PLUGWORKER_JOB_TIMEOUT: 900s")
        self.scratch.edit("infra/docker-compose.yml", "123456789012/plugworker-results", "123456789012/plugworker-result")
        problems = self.check()
        self.assertReports(problems, r"JOB_TIMEOUT_SECONDS=300 differs from the controller's PLUGWORKER_JOB_TIMEOUT=900s")
        self.assertReports(problems, r"PLUGWORKER_RESULTS_QUEUE_URL=.* is not the queue plugworker-results")


@unittest.skipUnless(emulators.MOTO_INSTALLED, "the SQS emulator venv (scripts/setup.sh) is not installed")
class CreateQueues(unittest.TestCase):
    """infra/sqs/create_queues.py against the same emulator the tests use (moto)."""

    def setUp(self):
        self.python = str(emulators.MOTO_PYTHON)
        self.env = dict(os.environ, SQS_ENDPOINT=emulators.moto(self), AWS_REGION="us-east-1",
                        AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local", JOB_TIMEOUT_SECONDS="120")

    def run_script(self, **env):
        return subprocess.run([self.python, str(REPO / "infra/sqs/create_queues.py")], env=dict(self.env, **env), capture_output=True, text=True)

    def attributes(self, url):
        code = ("import boto3, json, sys; sqs = boto3.client('sqs', endpoint_url=sys.argv[1], region_name='us-east-1');"
                "print(json.dumps(sqs.get_queue_attributes(QueueUrl=sys.argv[2], AttributeNames=['All'])['Attributes']))")
        out = subprocess.run([self.python, "-c", code, self.env["SQS_ENDPOINT"], url], env=self.env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def test_queues_are_created_with_redrive_and_derived_visibility_idempotently(self):
        first = self.run_script()
        self.assertEqual(first.returncode, 0, first.stderr)
        urls = dict(line.split("=", 1) for line in first.stdout.split())
        self.assertTrue(urls["JOBS_QUEUE_URL"].endswith("/plugworker-jobs"), urls)
        jobs = self.attributes(urls["JOBS_QUEUE_URL"])
        self.assertEqual(jobs["VisibilityTimeout"], "180")  # 120 s job timeout + 60 s margin
        self.assertIn("plugworker-jobs-dlq", jobs["RedrivePolicy"])
        self.assertEqual(int(json.loads(jobs["RedrivePolicy"])["maxReceiveCount"]), 5)
        again = self.run_script(JOB_TIMEOUT_SECONDS="600")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(again.stdout, first.stdout)
        self.assertEqual(self.attributes(urls["JOBS_QUEUE_URL"])["VisibilityTimeout"], "660")

    def test_the_payload_bucket_is_created_idempotently(self):
        for _ in range(2):
            run = self.run_script()
            self.assertEqual(run.returncode, 0, run.stderr)
            self.assertIn("PAYLOAD_BUCKET=plugworker-payloads", run.stdout.split())
        code = ("import boto3, sys; s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1');"
                "print(' '.join(b['Name'] for b in s3.list_buckets()['Buckets']))")
        out = subprocess.run([self.python, "-c", code, self.env["SQS_ENDPOINT"]], env=self.env, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.split(), ["plugworker-payloads"])

    def test_bad_settings_are_refused_with_the_variable_named(self):
        bad = self.run_script(JOB_TIMEOUT_SECONDS="five minutes")
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("JOB_TIMEOUT_SECONDS='five minutes' is not a whole number", bad.stderr)
        too_long = self.run_script(JOB_TIMEOUT_SECONDS="43200")
        self.assertIn("exceeds the SQS maximum", too_long.stderr)


# The shutdown rule's tests live beside their rule; imported here so this module runs them.
from .test_shutdown_rules import ShutdownRules  # noqa: E402,F401


def load_tests(loader, tests, pattern):
    """Adds the tests of the runners-as-data and mesh rules (test_terraform_rules.py). Loaded
    here, not imported at the top, because that module imports Case from this one."""
    from . import test_terraform_rules
    tests.addTests(loader.loadTestsFromModule(test_terraform_rules))
    return tests


if __name__ == "__main__":
    unittest.main()
