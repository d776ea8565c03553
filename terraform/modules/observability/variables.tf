variable "name" {
  description = "Name prefix."
  type        = string
}

variable "cluster_arn" {
  description = "ECS cluster to run in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets."
  type        = list(string)
}

variable "security_group_id" {
  description = "The plugworker tasks' security group (the task scrapes them and receives their OTLP)."
  type        = string
}

variable "namespace_id" {
  description = "Cloud Map namespace id."
  type        = string
}

variable "namespace" {
  description = "Cloud Map namespace name (plugworker tasks are SERVICE.NAMESPACE)."
  type        = string
}

variable "runner_names" {
  description = "Runner services Prometheus scrapes."
  type        = list(string)
}

variable "execution_role_arn" {
  description = "Task execution role."
  type        = string
}

variable "execution_role_name" {
  description = "Task execution role name (gets read access to the Grafana password)."
  type        = string
}

variable "task_policy_json" {
  description = "Policy of the task role (ECS Exec)."
  type        = string
}

variable "grafana_admin_password_ssm_parameter" {
  description = "SSM SecureString parameter with Grafana's admin password."
  type        = string
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention."
  type        = number
}

variable "logs_kms_key_arn" {
  description = "KMS key of the log group."
  type        = string
}

variable "images" {
  description = "Images of the observability containers (the versions infra/docker-compose.yml runs)."
  type        = map(string)
  default = {
    otel_collector = "otel/opentelemetry-collector-contrib:0.120.0"
    tempo          = "grafana/tempo:2.7.1"
    prometheus     = "prom/prometheus:v3.2.1"
    grafana        = "grafana/grafana:11.5.2"
  }
}
