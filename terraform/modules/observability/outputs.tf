output "otlp_endpoint" {
  description = "OTLP/gRPC endpoint of the collector."
  value       = "http://observability.${var.namespace}:4317"
}

output "grafana_url" {
  description = "Grafana inside the VPC (from outside: scripts/aws-port-forward.sh grafana)."
  value       = "http://observability.${var.namespace}:3000"
}

output "service_name" {
  description = "ECS service of the observability task."
  value       = aws_ecs_service.this.name
}
