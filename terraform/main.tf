# plugworker on AWS: network, queues, image repositories, the mesh's secrets, Consul, the
# ECS services and the observability task. README, "Deploy to AWS", walks through it;
# docs/deploy-aws.md says how the trust is set up and rotated. Runners are data: the
# map var.runners (runners.auto.tfvars) is the only place one is named.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  create_consul      = var.consul_retry_join == ""
  controller_service = "controller"
  datacenter         = var.consul_datacenter != "" ? var.consul_datacenter : var.name
  # Known before the observability module exists, so the services can point at it.
  namespace     = "${var.name}.internal"
  otlp_endpoint = "http://observability.${local.namespace}:4317"
}

# One customer-managed key for the stack's data at rest: queues, payloads, logs and images. The
# Consul servers' volumes use the account's EBS key instead: a customer key would have to
# name the Auto Scaling service-linked role, which does not exist before an account's
# first auto-scaling group.
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" means this key only; writes are limited to the account root and CloudWatch Logs for this stack's log groups.
  #checkov:skip=CKV_AWS_356:A key policy's Resource "*" means this key only (AWS requires "*" in key policies).
  #checkov:skip=CKV_AWS_109:The account root administering its own key is AWS's default key policy; without it the key would become unmanageable.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy, "*" is this key
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogsEncrypt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:aws:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:/${var.name}/*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: queues, payloads, logs and images at rest"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

module "network" {
  source             = "./modules/network"
  name               = var.name
  cidr               = var.vpc_cidr
  az_count           = var.availability_zone_count
  log_retention_days = var.log_retention_days
  kms_key_arn        = aws_kms_key.this.arn
}

module "queues" {
  source              = "./modules/queues"
  name                = var.name
  job_timeout_seconds = var.job_timeout_seconds
  max_receive_count   = var.max_receive_count
  kms_key_arn         = aws_kms_key.this.arn
}

# Bodies too large for their queue (claim-check) and the runners' input images.
module "payloads" {
  source          = "./modules/payloads"
  name            = var.name
  kms_key_arn     = aws_kms_key.this.arn
  expiration_days = var.payload_expiration_days
}

# Meme galleries (docs/gallery.md): a runner reads the prefix its entry names (`gallery`),
# operators publish with the policy this module makes.
module "galleries" {
  source             = "./modules/galleries"
  name               = var.name
  kms_key_arn        = aws_kms_key.this.arn
  noncurrent_days    = var.gallery_noncurrent_days
  consul_token_arn   = module.mesh.gallery_operator_token_arn
  consul_ca_cert_arn = module.mesh.ca_cert_arn
  operator_roles     = var.gallery_operator_roles
}

module "ecr" {
  source      = "./modules/ecr"
  name        = var.name
  deployables = concat([local.controller_service], keys(var.runners))
  kms_key_arn = aws_kms_key.this.arn
}

# Gossip key, CA and ACL tokens in SSM; the tokens and intentions the servers create.
module "mesh" {
  source             = "./modules/mesh"
  name               = var.name
  datacenter         = local.datacenter
  runner_names       = keys(var.runners)
  gallery_runners    = [for name, runner in var.runners : name if runner.gallery != null]
  controller_service = local.controller_service
  existing           = { retry_join = var.consul_retry_join, parameters_prefix = var.consul_parameters_prefix }
  previous_ca_cert   = var.consul_previous_ca_cert
  kms_key_arn        = aws_kms_key.this.arn
}

module "consul" {
  source               = "./modules/consul"
  count                = local.create_consul ? 1 : 0
  name                 = var.name
  vpc_id               = module.network.vpc_id
  vpc_cidr             = module.network.vpc_cidr
  subnet_ids           = module.network.private_subnet_ids
  server_count         = var.consul_server_count
  consul_version       = var.consul_version
  parameters_prefix    = module.mesh.prefix
  parameter_arn_prefix = module.mesh.parameter_arn_prefix[0]
  kms_key_arn          = aws_kms_key.this.arn
}

module "ecs" {
  source                = "./modules/ecs"
  name                  = var.name
  vpc_id                = module.network.vpc_id
  vpc_cidr              = module.network.vpc_cidr
  subnet_ids            = module.network.private_subnet_ids
  images                = local.images
  image_repository_arns = module.ecr.repository_arns
  queues = {
    jobs    = module.queues.jobs
    results = module.queues.results
    dlq     = module.queues.dlq
  }
  queue_kms_key_arn   = aws_kms_key.this.arn
  payloads            = module.payloads.bucket
  galleries           = module.galleries.bucket
  job_timeout_seconds = var.job_timeout_seconds
  consul = {
    retry_join = local.create_consul ? module.consul[0].retry_join : var.consul_retry_join
    version    = var.consul_version
    datacenter = local.datacenter
  }
  mesh = {
    gossip_key_arn       = module.mesh.gossip_key_arn
    ca_cert_arn          = module.mesh.ca_cert_arn
    agent_token_arn      = module.mesh.agent_token_arn
    controller_token_arn = module.mesh.controller_token_arn
    prometheus_token_arn = module.mesh.prometheus_token_arn
    runner_token_arns    = module.mesh.runner_token_arns
    kms_key_arn          = aws_kms_key.this.arn
  }
  controller_service = local.controller_service
  otlp_endpoint      = local.otlp_endpoint
  controller         = var.controller
  runners            = var.runners
  log_retention_days = var.log_retention_days
  logs_kms_key_arn   = aws_kms_key.this.arn
}

module "observability" {
  source                               = "./modules/observability"
  name                                 = var.name
  cluster_arn                          = module.ecs.cluster_arn
  subnet_ids                           = module.network.private_subnet_ids
  security_group_id                    = module.ecs.observability_security_group_id
  namespace_id                         = module.ecs.namespace_id
  namespace                            = module.ecs.namespace
  consul_agent_container               = module.ecs.consul_agent_container
  consul_ca_mount                      = module.ecs.consul_ca_mount
  consul_datacenter                    = local.datacenter
  prometheus_consul_token_arn          = module.mesh.prometheus_token_arn
  execution_role_arn                   = module.ecs.execution_role_arn
  execution_role_name                  = module.ecs.execution_role_name
  task_policy_json                     = module.ecs.task_common_policy_json
  grafana_admin_password_ssm_parameter = var.grafana_admin_password_ssm_parameter
  log_retention_days                   = var.log_retention_days
  logs_kms_key_arn                     = aws_kms_key.this.arn
}

# The namespace the services were pointed at must be the one the ECS module created.
check "otlp_endpoint_matches" {
  assert {
    condition     = module.observability.otlp_endpoint == local.otlp_endpoint
    error_message = "The services export to ${local.otlp_endpoint} but the collector is at ${module.observability.otlp_endpoint}."
  }
}
