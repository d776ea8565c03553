output "bucket" {
  description = "The payload bucket: name, arn, the claim-check key prefix, the runners' inputs prefix and the KMS key of its objects."
  value = {
    name          = aws_s3_bucket.payloads.id
    arn           = aws_s3_bucket.payloads.arn
    key_prefix    = var.key_prefix
    inputs_prefix = var.inputs_prefix
    kms_key_arn   = var.kms_key_arn
  }
}
