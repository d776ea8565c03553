output "bucket" {
  description = "The galleries bucket: name, arn and the KMS key of its objects."
  value = {
    name        = aws_s3_bucket.galleries.id
    arn         = aws_s3_bucket.galleries.arn
    kms_key_arn = var.kms_key_arn
  }
}

output "operators_policy_arn" {
  description = "The IAM policy allowing `plugworker gallery` to publish in the bucket."
  value       = aws_iam_policy.operators.arn
}
