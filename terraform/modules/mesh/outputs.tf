locals {
  parameter_arn = "arn:aws:ssm:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:parameter"
}

output "prefix" {
  description = "SSM prefix of the stack's mesh parameters (/NAME/consul)."
  value       = local.prefix
}

output "parameter_arn_prefix" {
  description = "ARN prefix of every parameter the tasks and servers read (this stack's and, with an existing cluster, its operator's)."
  value       = distinct(["${local.parameter_arn}${local.prefix}/", "${local.parameter_arn}${local.shared_prefix}/"])
}

output "gossip_key_arn" {
  description = "SSM parameter holding the gossip encryption key."
  value       = "${local.parameter_arn}${local.shared_prefix}/gossip-key"
}

output "ca_cert_parameter" {
  description = "Name of the SSM parameter holding the CA certificate: this stack's, or the existing cluster's under its parameters prefix."
  value       = "${local.shared_prefix}/ca-cert"
}

output "ca_cert_arn" {
  description = "SSM parameter holding the CA certificate (CONSUL_CACERT of every process)."
  value       = "${local.parameter_arn}${local.shared_prefix}/ca-cert"
}

output "agent_token_arn" {
  description = "SSM parameter holding the client agents' token."
  value       = aws_ssm_parameter.token["agent"].arn
}

output "controller_token_arn" {
  description = "SSM parameter holding the controller's token."
  value       = aws_ssm_parameter.token["controller"].arn
}

output "prometheus_token_arn" {
  description = "SSM parameter holding Prometheus's read-only token."
  value       = aws_ssm_parameter.token["prometheus"].arn
}

output "runner_token_arns" {
  description = "SSM parameter holding each runner's token, by runner."
  value       = { for runner in var.runner_names : runner => aws_ssm_parameter.token["runner:${runner}"].arn }
}

output "gallery_operator_token_arn" {
  description = "SSM parameter holding the operators' token for publishing galleries (write plugworker/galleries/)."
  value       = aws_ssm_parameter.token["gallery-operator"].arn
}
