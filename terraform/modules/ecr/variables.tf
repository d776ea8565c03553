variable "name" {
  description = "Name prefix: repositories are NAME/controller, NAME/image-runner, NAME/nlp-runner."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the images."
  type        = string
}
