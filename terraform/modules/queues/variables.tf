variable "name" {
  description = "Name prefix: queues are NAME-jobs, NAME-results and NAME-jobs-dlq."
  type        = string
}

variable "job_timeout_seconds" {
  description = "The controller's --job-timeout."
  type        = number
}

variable "visibility_margin_seconds" {
  description = "Added to the job timeout for the jobs queue's visibility timeout."
  type        = number
  default     = 60
  validation {
    condition     = var.visibility_margin_seconds >= 30
    error_message = "visibility_margin_seconds must be at least 30: a job must never reappear while its run may still be going."
  }
}

variable "max_receive_count" {
  description = "Receives before a job moves to the dead-letter queue."
  type        = number
}

variable "kms_key_arn" {
  description = "KMS key encrypting the queues at rest."
  type        = string
}
