#!/usr/bin/env python3
"""Creates plugworker's queues on an SQS endpoint (the local stack's emulator), idempotently.

- the dead-letter queue first, kept 14 days (the SQS maximum) so nothing poisoned is lost;
- the jobs queue, redriving to the DLQ after MAX_RECEIVE_COUNT receives, with a visibility
  timeout of the controller's job timeout plus a margin: the same rule as terraform/
  (modules/queues), so a job whose controller died reappears soon after its run would have
  timed out, never while it may still be running;
- the results queue.

Environment: SQS_ENDPOINT (e.g. http://sqs:5000), AWS_REGION, QUEUE_PREFIX (plugworker),
JOB_TIMEOUT_SECONDS (300, the controller's --job-timeout), VISIBILITY_MARGIN_SECONDS (60),
MAX_RECEIVE_COUNT (5). Prints the queue URLs as KEY=URL lines.
"""
import json
import os
import sys

import boto3


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
    return {
        "prefix": env.get("QUEUE_PREFIX", "plugworker"),
        "visibility": visibility,
        "max_receive_count": number("MAX_RECEIVE_COUNT", 5),
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


def main():
    config = settings()
    sqs = boto3.client(
        "sqs",
        endpoint_url=os.environ.get("SQS_ENDPOINT"),
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
    )
    for key, url in create(sqs, config).items():
        print(f"{key}={url}")


if __name__ == "__main__":
    main()
