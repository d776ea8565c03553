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
  description = "The observability task's security group (the services' groups let it scrape them; its own lets their OTLP in)."
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

variable "consul_agent_container" {
  description = "The stack's Consul client agent container (modules/ecs), run in this task for Prometheus's service discovery."
  type        = any
}

variable "consul_ca_mount" {
  description = "Read-only mount of the volume where the agent writes the CA."
  type        = object({ sourceVolume = string, containerPath = string, readOnly = bool })
}

variable "consul_datacenter" {
  description = "Datacenter of the Consul agents: Prometheus names it in every catalog query, so it never needs agent:read to ask its agent (/v1/agent/self)."
  type        = string
}

variable "prometheus_consul_token_arn" {
  description = "SSM SecureString parameter with Prometheus's read-only Consul token."
  type        = string
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
