#!/usr/bin/env python3
"""Creates plugworker's queues and payload bucket on the local stack's emulator, idempotently.

- the dead-letter queue first, kept 14 days (the SQS maximum) so nothing poisoned is lost;
- the jobs queue, redriving to the DLQ after MAX_RECEIVE_COUNT receives, with a visibility
  timeout of the controller's job timeout plus a margin: the same rule as terraform/
  (modules/queues), so a job whose controller died reappears soon after its run would have
  timed out, never while it may still be running;
- the results queue;
- the payload bucket, for bodies too large for their queue (claim-check,
  docs/claim-check.md), on the same endpoint: moto serves S3 beside SQS.

Environment: SQS_ENDPOINT (e.g. http://sqs:5000), AWS_REGION, QUEUE_PREFIX (plugworker),
JOB_TIMEOUT_SECONDS (300, the controller's --job-timeout), VISIBILITY_MARGIN_SECONDS (60),
MAX_RECEIVE_COUNT (5), PAYLOAD_BUCKET (QUEUE_PREFIX-payloads). Prints the queue URLs and
the bucket as KEY=VALUE lines.
"""
import json
import os
import sys

import boto3
from botocore.config import Config


def settings(env=os.environ):
    def number(name, default):
        value = env.get(name, str(default))
        try:
            parsed = int(value)
        except ValueError:
            sys.exit(f"create_queues: {name}={value!r} is not a whole number")
        if parsed <= 0:
            sys.exit(f"create_queues: {name} must be positive, got {parsed}")
        return parsed

    job_timeout = number("JOB_TIMEOUT_SECONDS", 300)
    visibility = job_timeout + number("VISIBILITY_MARGIN_SECONDS", 60)
    if visibility > 43200:
        sys.exit(f"create_queues: visibility timeout {visibility}s exceeds the SQS maximum of 43200s")
    prefix = env.get("QUEUE_PREFIX", "plugworker")
    return {
        "prefix": prefix,
        "visibility": visibility,
        "max_receive_count": number("MAX_RECEIVE_COUNT", 5),
        "bucket": env.get("PAYLOAD_BUCKET", f"{prefix}-payloads"),
    }


def create(sqs, config):
    prefix = config["prefix"]
    dlq_url = sqs.create_queue(
        QueueName=f"{prefix}-jobs-dlq", Attributes={"MessageRetentionPeriod": "1209600"}
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    jobs_attributes = {
        "VisibilityTimeout": str(config["visibility"]),
        "ReceiveMessageWaitTimeSeconds": "20",
        "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(config["max_receive_count"])}
        ),
    }
    jobs_url = sqs.create_queue(QueueName=f"{prefix}-jobs")["QueueUrl"]
    # Set separately: create_queue refuses different attributes for an existing queue,
    # and a re-run with a new job timeout must update it.
    sqs.set_queue_attributes(QueueUrl=jobs_url, Attributes=jobs_attributes)
    results_url = sqs.create_queue(QueueName=f"{prefix}-results")["QueueUrl"]
    return {"JOBS_QUEUE_URL": jobs_url, "RESULTS_QUEUE_URL": results_url, "DLQ_URL": dlq_url}


def create_bucket(s3, name):
    try:
        s3.create_bucket(Bucket=name)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    return {"PAYLOAD_BUCKET": name}


def main():
    config = settings()
    endpoint = os.environ.get("SQS_ENDPOINT")
    region = os.environ.get("AWS_REGION", "us-east-1")
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=region)
    # Path-style: the emulator's host name has no per-bucket DNS.
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name=region, config=Config(s3={"addressing_style": "path"})
    )
    created = dict(create(sqs, config), **create_bucket(s3, config["bucket"]))
    for key, value in created.items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main()
