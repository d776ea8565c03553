variable "name" {
  description = "Name prefix."
  type        = string
}

variable "cidr" {
  description = "VPC CIDR block."
  type        = string
}

variable "az_count" {
  description = "Availability zones to use."
  type        = number
}

variable "log_retention_days" {
  description = "Retention of the VPC flow logs."
  type        = number
}

variable "kms_key_arn" {
  description = "KMS key encrypting the flow log group."
  type        = string
}
