output "repository_urls" {
  description = "Repository URL by deployable (controller, image-runner, nlp-runner)."
  value       = { for name, repo in aws_ecr_repository.this : name => repo.repository_url }
}

output "repository_arns" {
  description = "ARNs of the repositories."
  value       = [for repo in aws_ecr_repository.this : repo.arn]
}
