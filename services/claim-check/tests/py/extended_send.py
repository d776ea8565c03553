#!/usr/bin/env python3
"""Sends one message with AWS's SQS Extended Client for Python (`amazon-sqs-extended-client`
on PyPI), as a producer outside plugworker would.

The body is read from a file (UTF-8) and sent with large-payload support on `--bucket`:
the client stores it in S3 when it is over its threshold (256 KiB) and sends its pointer.
Endpoints, region and credentials come from the standard AWS environment variables
(AWS_ENDPOINT_URL, AWS_REGION, ...). Prints {"MessageId": ...} as JSON.
"""
import argparse
import json
import os

from sqs_extended_client import SQSExtendedClientSession


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queue-url", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--key", help="S3 key for the payload (the S3Key attribute); default: a random UUID")
    args = parser.parse_args()

    with open(args.body_file, encoding="utf-8", newline="") as handle:
        body = handle.read()
    session = SQSExtendedClientSession(region_name=os.environ.get("AWS_REGION", "us-east-1"))
    sqs = session.client("sqs")
    sqs.large_payload_support = args.bucket
    attributes = {}
    if args.key:
        attributes["S3Key"] = {"DataType": "String", "StringValue": args.key}
    response = sqs.send_message(QueueUrl=args.queue_url, MessageBody=body, MessageAttributes=attributes)
    print(json.dumps({"MessageId": response["MessageId"]}))


if __name__ == "__main__":
    main()
