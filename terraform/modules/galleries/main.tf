# The galleries bucket: meme galleries (docs/gallery.md), each under its own prefix, which
# runners follow while they serve and operators change with `plugworker gallery`. A runner
# reads the gallery its entry of var.runners names (`gallery`, modules/ecs); only the
# operators' policy below writes.
#
# - SSE-KMS with the stack's key (bucket keys on); public access blocked; ACLs disabled;
#   the bucket policy refuses any request not made over TLS.
# - Versioning on: a gallery's objects are written once and `current` is replaced only by
#   a conditional write, so a version of an object is never needed in normal operation;
#   versioning is what undoes a mistake outside `plugworker gallery` (a stray delete or
#   overwrite by another client): the previous version of `current` names a complete
#   gallery, and the objects it names are still there.
# - Lifecycle: nothing current ever expires (a gallery's templates are its data; versions
#   are removed from use by publishing, never by age); noncurrent versions expire after
#   noncurrent_days, incomplete uploads after a day.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  bucket = "${var.name}-galleries-${data.aws_caller_identity.current.account_id}-${data.aws_region.current.name}"
}

resource "aws_s3_bucket" "galleries" {
  #checkov:skip=CKV_AWS_144:A gallery is re-published from its operators' images and the manifests in the bucket; cross-region replication is the operator's choice, not the stack's default.
  #checkov:skip=CKV_AWS_18:Access goes through the stack's IAM roles and the operators' policy, recorded by CloudTrail (enable S3 data events for an object-level audit); every change is also a manifest naming its author and time.
  #checkov:skip=CKV2_AWS_62:Runners learn of a new version from Consul's KV and by polling `current`; nothing consumes S3 events.
  bucket        = local.bucket
  force_destroy = false
  lifecycle {
    precondition {
      condition     = length(local.bucket) <= 63
      error_message = "The galleries bucket name ${local.bucket} is longer than S3's 63 characters: use a shorter var.name."
    }
  }
}

resource "aws_s3_bucket_ownership_controls" "galleries" {
  bucket = aws_s3_bucket.galleries.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "galleries" {
  bucket                  = aws_s3_bucket.galleries.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "galleries" {
  bucket = aws_s3_bucket.galleries.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "galleries" {
  bucket = aws_s3_bucket.galleries.id
  versioning_configuration {
    status = "Enabled" # see the comment at the top
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "galleries" {
  bucket = aws_s3_bucket.galleries.id
  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  depends_on = [aws_s3_bucket_versioning.galleries]
}

data "aws_iam_policy_document" "galleries" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.galleries.arn,
      "${aws_s3_bucket.galleries.arn}/*",
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

resource "aws_s3_bucket_policy" "galleries" {
  bucket     = aws_s3_bucket.galleries.id
  policy     = data.aws_iam_policy_document.galleries.json
  depends_on = [aws_s3_bucket_public_access_block.galleries]
}

# The operators' policy: what `plugworker gallery add|remove|rollback|list|history` does on
# any gallery of the bucket, and the Consul token it announces a version with. Attach it
# to the operators' own IAM roles or groups (docs/deploy-aws.md, "Galleries"); no task
# role gets it.
data "aws_iam_policy_document" "operators" {
  # Unconditioned: the first `add` to a new prefix reads a `current` that does not exist
  # yet, which S3 answers 404 only to a principal allowed to list (403 otherwise).
  statement {
    sid       = "ListGalleries"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.galleries.arn]
  }
  # Put: templates, embeddings and manifests with If-None-Match, `current` with If-Match.
  # No delete: objects are never removed, a change is a new version.
  statement {
    sid       = "ReadAndPublishGalleries"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.galleries.arn}/*"]
  }
  statement {
    sid       = "GalleryEncryption"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
  # The Consul token that may write plugworker/galleries/ (and the CA to verify Consul).
  statement {
    sid       = "GalleryConsulToken"
    actions   = ["ssm:GetParameter"]
    resources = [var.consul_token_arn, var.consul_ca_cert_arn]
  }
  statement {
    sid       = "GalleryConsulTokenDecryption"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ssm.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
}

resource "aws_iam_policy" "operators" {
  name        = "${var.name}-gallery-operators"
  description = "plugworker ${var.name}: publish meme galleries (plugworker gallery) in ${local.bucket}"
  policy      = data.aws_iam_policy_document.operators.json
}

# Attached to the roles var.operator_roles names (roles made outside this stack).
resource "aws_iam_role_policy_attachment" "operators" {
  for_each   = toset(var.operator_roles)
  role       = each.value
  policy_arn = aws_iam_policy.operators.arn
}
