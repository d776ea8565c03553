output "jobs" {
  description = "The jobs queue (url, arn, name)."
  value       = { url = aws_sqs_queue.jobs.id, arn = aws_sqs_queue.jobs.arn, name = aws_sqs_queue.jobs.name }
}

output "results" {
  description = "The results queue (url, arn, name)."
  value       = { url = aws_sqs_queue.results.id, arn = aws_sqs_queue.results.arn, name = aws_sqs_queue.results.name }
}

output "dlq" {
  description = "The dead-letter queue (url, arn, name)."
  value       = { url = aws_sqs_queue.dlq.id, arn = aws_sqs_queue.dlq.arn, name = aws_sqs_queue.dlq.name }
}

output "visibility_timeout_seconds" {
  description = "The jobs queue's visibility timeout (job timeout + margin)."
  value       = local.visibility_timeout_seconds
}
