variable "name" {
  description = "Name prefix."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the tasks."
  type        = string
}

variable "vpc_cidr" {
  description = "The VPC's CIDR (Consul servers gossip with the task agents from it)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the tasks."
  type        = list(string)
}

variable "image_repositories" {
  description = "ECR repository URL by deployable (controller, image-runner, nlp-runner)."
  type        = map(string)
}

variable "image_repository_arns" {
  description = "ARNs of those repositories (the execution role may pull from them only)."
  type        = list(string)
}

variable "image_tag" {
  description = "Image tag to run."
  type        = string
}

variable "queues" {
  description = "jobs, results and dlq: each with url, arn and name."
  type        = map(object({ url = string, arn = string, name = string }))
}

variable "queue_kms_key_arn" {
  description = "KMS key of the queues (the controller encrypts and decrypts messages)."
  type        = string
}

variable "payloads" {
  description = "The payload bucket: name, arn, key_prefix (claim-check, the controller's), inputs_prefix (read by runners) and kms_key_arn."
  type        = object({ name = string, arn = string, key_prefix = string, inputs_prefix = string, kms_key_arn = string })
}

variable "job_timeout_seconds" {
  description = "The controller's --job-timeout."
  type        = number
}

variable "consul" {
  description = "How tasks reach Consul: retry_join (a client agent runs in each task) or http_address (an existing agent or cluster address, used directly)."
  type        = object({ retry_join = string, http_address = string, version = string, datacenter = string })
  validation {
    condition     = var.consul.retry_join != "" || var.consul.http_address != ""
    error_message = "consul: set retry_join or http_address."
  }
}

variable "otlp_endpoint" {
  description = "OTLP/gRPC endpoint every service exports traces to."
  type        = string
}

variable "controller" {
  description = "Controller task size and autoscaling."
  type = object({
    cpu              = number
    memory           = number
    min_count        = number
    max_count        = number
    backlog_per_task = number
    max_in_flight    = number
  })
}

variable "runners" {
  description = "Runner task sizes and autoscaling, by runner name."
  type = map(object({
    cpu        = number
    memory     = number
    min_count  = number
    max_count  = number
    cpu_target = number
  }))
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention."
  type        = number
}

variable "logs_kms_key_arn" {
  description = "KMS key of the log groups."
  type        = string
}
