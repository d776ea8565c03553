# The jobs queue (redriving poison jobs to the DLQ), the results queue and the DLQ, all
# encrypted at rest with the stack's KMS key.
#
# Visibility timeout = job timeout + margin (the same rule as infra/sqs/create_queues.py):
# the controller extends a running job's visibility by heartbeats, so this only matters
# when a controller dies; then the job reappears soon after its run would have timed
# out, never while it may still be running.

locals {
  visibility_timeout_seconds = var.job_timeout_seconds + var.visibility_margin_seconds
}

resource "aws_sqs_queue" "dlq" {
  name                      = "${var.name}-jobs-dlq"
  message_retention_seconds = 1209600 # 14 days, the maximum: poison jobs are kept for inspection
  kms_master_key_id         = var.kms_key_arn
}

resource "aws_sqs_queue" "jobs" {
  name                       = "${var.name}-jobs"
  visibility_timeout_seconds = local.visibility_timeout_seconds
  receive_wait_time_seconds  = 20
  message_retention_seconds  = 345600 # 4 days
  kms_master_key_id          = var.kms_key_arn
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })
}

resource "aws_sqs_queue" "results" {
  name                      = "${var.name}-results"
  message_retention_seconds = 345600
  kms_master_key_id         = var.kms_key_arn
}

# Only the jobs queue may redrive into the DLQ.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.jobs.arn]
  })
}
