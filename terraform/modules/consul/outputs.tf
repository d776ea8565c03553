output "retry_join" {
  description = "go-discover string that client agents join the servers with."
  value       = local.retry_join
}

output "join_tag" {
  description = "EC2 tag (key = value) of the servers."
  value       = "${local.join_tag_key}=${var.name}"
}

output "security_group_id" {
  description = "The servers' security group."
  value       = aws_security_group.servers.id
}
