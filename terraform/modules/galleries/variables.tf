variable "name" {
  description = "Name prefix."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key the bucket encrypts objects with (SSE-KMS), also encrypting the operators' Consul token in SSM."
  type        = string
}

variable "noncurrent_days" {
  description = "Days a replaced or deleted object's previous version is kept."
  type        = number
}

variable "consul_token_arn" {
  description = "SSM parameter holding the operators' Consul token (write plugworker/galleries/)."
  type        = string
}

variable "consul_ca_cert_arn" {
  description = "SSM parameter holding the Consul CA certificate."
  type        = string
}

variable "operator_roles" {
  description = "IAM role names (made outside this stack) the operators' policy is attached to."
  type        = list(string)
}
