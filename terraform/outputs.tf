output "jobs_queue_url" {
  description = "Submit jobs here (plugworker submit --jobs-queue-url)."
  value       = module.queues.jobs.url
}

output "results_queue_url" {
  description = "Results arrive here (plugworker results --results-queue-url)."
  value       = module.queues.results.url
}

output "dlq_url" {
  description = "Poison jobs end up here."
  value       = module.queues.dlq.url
}

output "payload_bucket" {
  description = "Bodies too large for their queue go here (plugworker submit --payload-bucket; AWS's SQS extended clients: this bucket, key prefix payloads/); runners read image_s3 inputs under inputs/."
  value       = module.payloads.bucket.name
}

output "galleries_bucket" {
  description = "The meme galleries' bucket: a runner entry's `gallery` is a prefix in it (PLUGWORKER_MEME_GALLERY=s3://BUCKET/PREFIX)."
  value       = module.galleries.bucket.name
}

output "galleries" {
  description = "The gallery each runner follows (the --gallery of `plugworker gallery`), by runner; runners without one are left out."
  value       = { for name, runner in var.runners : name => "s3://${module.galleries.bucket.name}/${runner.gallery}" if runner.gallery != null }
}

output "gallery_operator_policy_arn" {
  description = "Attach to the IAM roles of the operators who publish galleries (or list them in gallery_operator_roles)."
  value       = module.galleries.operators_policy_arn
}

output "consul_ca_cert_parameter" {
  description = "SSM parameter holding Consul's CA certificate (CONSUL_CACERT): /NAME/consul/ca-cert, or consul_parameters_prefix/ca-cert with an existing cluster."
  value       = module.mesh.ca_cert_parameter
}

output "gallery_operator_token_parameter" {
  description = "SSM parameter holding the Consul token `plugworker gallery` announces a new version with (write plugworker/galleries/)."
  value       = "${module.mesh.prefix}/tokens/gallery-operator"
}

output "jobs_visibility_timeout_seconds" {
  description = "The jobs queue's visibility timeout (job timeout + margin)."
  value       = module.queues.visibility_timeout_seconds
}

output "ecr_repositories" {
  description = "Push the images here: the controller and every runner, by name."
  value       = module.ecr.repository_urls
}

output "ecs_cluster" {
  description = "The ECS cluster running the services."
  value       = module.ecs.cluster_name
}

output "consul_http_address" {
  description = "Consul's HTTPS API: port 8501 on a server's loopback (scripts/aws-port-forward.sh consul forwards it to https://127.0.0.1:8501), or the existing cluster's."
  value       = local.create_consul ? "any instance tagged ${module.consul[0].join_tag}, port 8501 (HTTPS)" : "the existing cluster joined with ${var.consul_retry_join}"
}

output "consul_parameters" {
  description = "SSM prefix of the mesh's secrets: gossip-key, ca-cert (CONSUL_CACERT), tokens/management, tokens/<role> (docs/deploy-aws.md)."
  value       = module.mesh.prefix
}

output "grafana_url" {
  description = "Grafana inside the VPC (scripts/aws-port-forward.sh grafana forwards it to http://127.0.0.1:3000)."
  value       = module.observability.grafana_url
}

output "region" {
  description = "The region everything is in."
  value       = var.region
}
