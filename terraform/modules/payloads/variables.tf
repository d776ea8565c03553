variable "name" {
  description = "Name prefix."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key the bucket encrypts objects with (SSE-KMS)."
  type        = string
}

variable "expiration_days" {
  description = "Days after which any object expires (longer than any queue keeps a message pointing at it)."
  type        = number
}

variable "key_prefix" {
  description = "Prefix of the claim-check payloads the controller writes, reads and deletes."
  type        = string
  default     = "payloads/"
}

variable "inputs_prefix" {
  description = "Prefix runners may read input images from (image_s3)."
  type        = string
  default     = "inputs/"
}
