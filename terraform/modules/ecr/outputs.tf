output "repository_names" {
  description = "Repository name by deployable. Derived from the inputs alone, so known at plan time, before the repositories exist (the root's image lookups use it)."
  value       = local.names
}

output "repository_urls" {
  description = "Repository URL by deployable."
  value       = { for name, repo in aws_ecr_repository.this : name => repo.repository_url }
}

output "repository_arns" {
  description = "ARNs of the repositories."
  value       = [for repo in aws_ecr_repository.this : repo.arn]
}
