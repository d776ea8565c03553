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

variable "images" {
  description = "Image reference (repository@digest) by deployable: the controller and every runner."
  type        = map(string)
}

variable "image_repository_arns" {
  description = "ARNs of the image repositories (the execution role may pull from them only)."
  type        = list(string)
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

variable "galleries" {
  description = "The galleries bucket (modules/galleries): name, arn and kms_key_arn; a runner with `gallery` reads that prefix of it."
  type        = object({ name = string, arn = string, kms_key_arn = string })
}

variable "job_timeout_seconds" {
  description = "The controller's --job-timeout."
  type        = number
}

variable "consul" {
  description = "How every task's Consul client agent joins the cluster: retry_join (go-discover), version, datacenter."
  type        = object({ retry_join = string, version = string, datacenter = string })
  validation {
    condition     = var.consul.retry_join != ""
    error_message = "consul.retry_join: every task runs a client agent that must join a cluster."
  }
}

variable "mesh" {
  description = "The mesh's secrets (modules/mesh): SSM parameter ARNs of the gossip key, CA certificate and tokens, and the KMS key encrypting them."
  type = object({
    gossip_key_arn       = string
    ca_cert_arn          = string
    agent_token_arn      = string
    controller_token_arn = string
    prometheus_token_arn = string
    runner_token_arns    = map(string)
    kms_key_arn          = string
  })
}

variable "controller_service" {
  description = "Consul service name (and Connect identity) of the controller; also its ECS service, log group and image key."
  type        = string
  default     = "controller"
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
  description = "Runner task sizes, autoscaling, ports and gallery prefix (null: none), by runner name (the root's var.runners)."
  type = map(object({
    cpu          = number
    memory       = number
    min_count    = number
    max_count    = number
    cpu_target   = number
    port         = number
    health_port  = number
    metrics_port = number
    gallery      = string
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
