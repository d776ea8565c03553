# The payload bucket: bodies of jobs, results and dead letters too large for their queue
# (claim-check in the format of AWS's SQS Extended Client Library, docs/claim-check.md),
# and the inputs/ prefix runners read images from (image_s3).
#
# - SSE-KMS with the stack's key (bucket keys on: one KMS call per bucket and period, not
#   per object); public access blocked; ACLs disabled (bucket owner owns every object);
#   the bucket policy refuses any request not made over TLS.
# - Versioning stays off, deliberately: payloads are written once under a random key,
#   never overwritten, and deleted as soon as their message is. With versioning a delete
#   would only hide the body (a noncurrent version would keep the job's image or text),
#   which defeats deleting it; nothing here needs an earlier version.
# - Lifecycle: every object expires after expiration_days, which must exceed the longest
#   time a message can point at it (the DLQ keeps messages 14 days): the backstop for
#   bodies whose message was never consumed by a client that deletes them.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  bucket = "${var.name}-payloads-${data.aws_caller_identity.current.account_id}-${data.aws_region.current.name}"
}

resource "aws_s3_bucket" "payloads" {
  #checkov:skip=CKV_AWS_21:Versioning would keep every deleted payload as a noncurrent version; payloads are written once under random keys and must really go when deleted (see the comment above).
  #checkov:skip=CKV_AWS_144:Payloads live minutes to days and are re-sent by their producer if lost; replicating them to a second region would only copy personal data further.
  #checkov:skip=CKV_AWS_18:Access goes through the stack's IAM roles only and is recorded by CloudTrail (enable S3 data events for an object-level audit); server access logs would need a second bucket for transient data.
  #checkov:skip=CKV2_AWS_62:Nothing reacts to payload objects: the messages that point at them are the notification.
  bucket        = local.bucket
  force_destroy = false
  lifecycle {
    precondition {
      condition     = length(local.bucket) <= 63
      error_message = "The payload bucket name ${local.bucket} is longer than S3's 63 characters: use a shorter var.name."
    }
  }
}

resource "aws_s3_bucket_ownership_controls" "payloads" {
  bucket = aws_s3_bucket.payloads.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "payloads" {
  bucket                  = aws_s3_bucket.payloads.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "payloads" {
  bucket = aws_s3_bucket.payloads.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "payloads" {
  bucket = aws_s3_bucket.payloads.id
  versioning_configuration {
    status = "Disabled" # see the comment at the top
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "payloads" {
  bucket = aws_s3_bucket.payloads.id
  rule {
    id     = "expire-payloads"
    status = "Enabled"
    filter {}
    expiration {
      days = var.expiration_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "payloads" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.payloads.arn,
      "${aws_s3_bucket.payloads.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "payloads" {
  bucket = aws_s3_bucket.payloads.id
  policy = data.aws_iam_policy_document.payloads.json
  # The public access block must exist first, or S3 may evaluate the policy without it.
  depends_on = [aws_s3_bucket_public_access_block.payloads]
}
