#!/usr/bin/env python3
"""Receives one message with AWS's SQS Extended Client for Python (`amazon-sqs-extended-client`
on PyPI), as a consumer outside plugworker would, and deletes it.

The client fetches an offloaded body from S3 transparently; the body is written to
`--out` exactly (UTF-8). With `--delete-payload` the client deletes the S3 object with the
message (through the S3 pointer it embeds in the receipt handle). Endpoints, region and
credentials come from the standard AWS environment variables. Prints the message's id,
attributes (as the client hands them to its caller) and receipt handle as JSON; exits 1
if no message arrives within `--wait` seconds.
"""
import argparse
import json
import os
import sys
import time

from sqs_extended_client import SQSExtendedClientSession


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--wait", type=float, default=20)
    parser.add_argument("--delete-payload", action="store_true")
    args = parser.parse_args()

    session = SQSExtendedClientSession(region_name=os.environ.get("AWS_REGION", "us-east-1"))
    sqs = session.client("sqs")
    sqs.delete_payload_from_s3 = args.delete_payload
    deadline = time.monotonic() + args.wait
    while True:
        response = sqs.receive_message(
            QueueUrl=args.queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        )
        messages = response.get("Messages", [])
        if messages:
            break
        if time.monotonic() > deadline:
            print(f"no message on {args.queue_url} within {args.wait}s", file=sys.stderr)
            sys.exit(1)
    message = messages[0]
    with open(args.out, "w", encoding="utf-8", newline="") as handle:
        handle.write(message["Body"])
    sqs.delete_message(QueueUrl=args.queue_url, ReceiptHandle=message["ReceiptHandle"])
    attributes = {
        name: value.get("StringValue", value.get("BinaryValue"))
        for name, value in message.get("MessageAttributes", {}).items()
    }
    print(json.dumps({"MessageId": message["MessageId"], "MessageAttributes": attributes, "ReceiptHandle": message["ReceiptHandle"]}))


if __name__ == "__main__":
    main()
