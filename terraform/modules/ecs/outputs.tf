output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  description = "The ECS cluster's ARN."
  value       = aws_ecs_cluster.this.arn
}

output "namespace" {
  description = "Cloud Map private DNS namespace of the tasks."
  value       = local.namespace
}

output "namespace_id" {
  description = "Cloud Map namespace id."
  value       = aws_service_discovery_private_dns_namespace.this.id
}

output "observability_security_group_id" {
  description = "Security group of the observability task (Prometheus may scrape the services; they may send it OTLP)."
  value       = aws_security_group.observability.id
}

output "consul_agent_container" {
  description = "The Consul client agent container (without its log configuration), for other tasks of the stack."
  value       = local.consul_agent
}

output "consul_ca_mount" {
  description = "Read-only mount of the task volume \"consul-ca\" where the agent writes the CA."
  value       = local.consul_ca_mount
}

output "execution_role_arn" {
  description = "Task execution role (image pulls, logs)."
  value       = aws_iam_role.execution.arn
}

output "execution_role_name" {
  description = "Task execution role name."
  value       = aws_iam_role.execution.name
}

output "task_common_policy_json" {
  description = "Policy every task role carries (ECS Exec, Consul auto-join)."
  value       = data.aws_iam_policy_document.task_common.json
}
