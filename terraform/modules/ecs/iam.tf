# Least privilege: one execution role (pull images, write logs, read the tasks' Consul
# secrets from SSM), and one task role per service with only what that service does.

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-ecs-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "PullImages"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = var.image_repository_arns
  }
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource type
  }
  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for group in aws_cloudwatch_log_group.service : "${group.arn}:*"]
  }
  # ECS `secrets`: every task's agent (gossip key, CA, agent token) and each service's
  # token. Not the management token nor the CA's key: no task ever gets those.
  statement {
    sid       = "ConsulSecrets"
    actions   = ["ssm:GetParameters"]
    resources = local.task_secret_arns
  }
  statement {
    sid       = "ConsulSecretsDecryption"
    actions   = ["kms:Decrypt"]
    resources = [var.mesh.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["ssm.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
}

locals {
  task_secret_arns = distinct(concat(
    [var.mesh.gossip_key_arn, var.mesh.ca_cert_arn, var.mesh.agent_token_arn, var.mesh.controller_token_arn, var.mesh.prometheus_token_arn, aws_ssm_parameter.message_keys.arn],
    values(var.mesh.runner_token_arns),
  ))
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-and-log"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# What every task needs: ECS Exec (operators' shells and port forwards, through SSM) and
# the Consul agent's cloud auto-join.
data "aws_iam_policy_document" "task_common" {
  statement {
    sid = "EcsExec"
    actions = [
      "ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"] # ssmmessages actions have no resource type
  }
  statement {
    sid       = "ConsulAutoJoin"
    actions   = ["ec2:DescribeInstances"]
    resources = ["*"] # DescribeInstances cannot be scoped to resources
  }
}

# The controller: receive, delete and extend visibility on the jobs queue (and read its
# depth); send to the results queue and the DLQ. Nothing else on any queue. On the payload
# bucket: write, read and delete claim-check bodies under their prefix only.
data "aws_iam_policy_document" "controller" {
  source_policy_documents = [data.aws_iam_policy_document.task_common.json]
  statement {
    sid       = "ConsumeJobs"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"]
    resources = [var.queues["jobs"].arn]
  }
  statement {
    sid       = "SendResultsAndDeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [var.queues["results"].arn, var.queues["dlq"].arn]
  }
  statement {
    sid       = "QueueEncryption"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.queue_kms_key_arn]
  }
  statement {
    sid       = "ClaimCheckPayloads"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${var.payloads.arn}/${var.payloads.key_prefix}*"]
  }
  statement {
    sid       = "PayloadEncryption"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.payloads.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "controller" {
  name               = "${var.name}-controller"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy" "controller" {
  name   = "controller"
  role   = aws_iam_role.controller.id
  policy = data.aws_iam_policy_document.controller.json
}

# Runners touch no queue: ECS Exec, Consul auto-join, and reading input images (image_s3)
# under the payload bucket's inputs prefix. One role per runner: a runner whose entry of
# var.runners names a gallery (`gallery`) also reads that prefix of the galleries bucket,
# and nothing else of it; no runner writes a gallery (operators do, modules/galleries).
data "aws_iam_policy_document" "runner" {
  for_each                = var.runners
  source_policy_documents = [data.aws_iam_policy_document.task_common.json]
  statement {
    sid       = "ReadInputImages"
    actions   = ["s3:GetObject"]
    resources = ["${var.payloads.arn}/${var.payloads.inputs_prefix}*"]
  }
  statement {
    sid       = "InputDecryption"
    actions   = ["kms:Decrypt"]
    resources = distinct([var.payloads.kms_key_arn, var.galleries.kms_key_arn])
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${data.aws_region.current.name}.amazonaws.com"]
    }
  }
  # GetObject: `current`, manifests, embeddings and templates (services/meme/src/store.rs
  # reads nothing else, and lists nothing).
  dynamic "statement" {
    for_each = each.value.gallery == null ? [] : [each.value.gallery]
    content {
      sid       = "ReadGallery"
      actions   = ["s3:GetObject"]
      resources = ["${var.galleries.arn}/${statement.value}/*"]
    }
  }
  # ListBucket only so that S3 answers a missing object 404, not 403 (a gallery whose
  # `current` is not yet published); limited to the gallery's prefix.
  dynamic "statement" {
    for_each = each.value.gallery == null ? [] : [each.value.gallery]
    content {
      sid       = "ListGallery"
      actions   = ["s3:ListBucket"]
      resources = [var.galleries.arn]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${statement.value}/*"]
      }
    }
  }
}

resource "aws_iam_role" "runner" {
  for_each           = var.runners
  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  lifecycle {
    precondition {
      condition     = length("${var.name}-${each.key}") <= 64
      error_message = "The IAM role name ${var.name}-${each.key} is longer than IAM's 64 characters: use a shorter var.name or runner name."
    }
  }
}

resource "aws_iam_role_policy" "runner" {
  for_each = var.runners
  name     = "runner"
  role     = aws_iam_role.runner[each.key].id
  policy   = data.aws_iam_policy_document.runner[each.key].json
}
