# The mesh's secrets, generated here and kept only in SSM SecureString parameters (and in
# Terraform's state, which must therefore be an encrypted backend with restricted access):
#
#   /NAME/consul/gossip-key            gossip encryption key (32 random bytes, base64)
#   /NAME/consul/ca-cert, ca-key       the CA (ca-cert: a bundle, the current CA first): signs the servers' TLS certificates, and is the
#                                      Connect CA's root, so it also signs the client agents'
#                                      auto-encrypt certificates (their HTTPS) and every
#                                      service's leaf certificate: one trust anchor
#                                      (CONSUL_CACERT) for everything
#   /NAME/consul/tokens/management     the initial management token (servers only)
#   /NAME/consul/tokens/agent          the client agents' token (node write)
#   /NAME/consul/tokens/controller     service identity "controller" and policy NAME-controller
#                                      (read plugworker/pipelines/, the stored pipelines)
#   /NAME/consul/tokens/prometheus     read-only: services and nodes, for consul_sd_configs
#   /NAME/consul/tokens/runners/<name> one per runner: service identity <name>, and for a
#                                      runner that follows a gallery policy NAME-gallery-reader
#                                      (read plugworker/galleries/, the galleries' versions)
#   /NAME/consul/tokens/gallery-operator policy NAME-gallery-operator (write
#                                      plugworker/galleries/): what `plugworker gallery`
#                                      announces a new version with; for operators, no task
#   /NAME/consul/mesh                  what the servers' bootstrap script creates from: the
#                                      tokens' accessor IDs and roles, and the intentions
#
# Tasks receive their token through ECS `secrets` (as CONSUL_HTTP_TOKEN), never in plain
# environment. With an existing cluster (var.existing) the gossip key and CA are that
# cluster's, read from the operator's parameters; the tokens are still generated here and
# the operator creates them in the cluster with the same script (docs/deploy-aws.md).

locals {
  create_cluster = var.existing.retry_join == ""
  prefix         = "/${var.name}/consul"
  shared_prefix  = local.create_cluster ? local.prefix : trimsuffix(var.existing.parameters_prefix, "/")
  # Every token but the management token, by role; runners by their service name.
  roles = merge(
    {
      agent      = { parameter = "${local.prefix}/tokens/agent", policy = "agent", service = "" }
      controller = { parameter = "${local.prefix}/tokens/controller", policy = "controller", service = var.controller_service }
      prometheus = { parameter = "${local.prefix}/tokens/prometheus", policy = "prometheus", service = "" }
      # Operators publishing galleries; held by no task (docs/deploy-aws.md, "Galleries").
      gallery-operator = { parameter = "${local.prefix}/tokens/gallery-operator", policy = "gallery-operator", service = "" }
    },
    { for runner in var.runner_names : "runner:${runner}" => {
      parameter = "${local.prefix}/tokens/runners/${runner}"
      # A runner that follows a gallery watches its version in the KV; others read no key.
      policy  = contains(var.gallery_runners, runner) ? "gallery-reader" : ""
      service = runner
    } },
  )
}

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

# Consul accepts caller-chosen accessor and secret IDs (UUIDs): the tokens exist in SSM
# before the cluster does, and the bootstrap script creates them with these IDs.
resource "random_uuid" "accessor" {
  for_each = local.roles
}

resource "random_uuid" "secret" {
  for_each = local.roles
}

resource "aws_ssm_parameter" "token" {
  for_each    = local.roles
  name        = each.value.parameter
  description = "Consul ACL token (${each.key}) of ${var.name}"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = random_uuid.secret[each.key].result
}

resource "random_uuid" "management" {
  count = local.create_cluster ? 1 : 0
}

resource "aws_ssm_parameter" "management_token" {
  count       = local.create_cluster ? 1 : 0
  name        = "${local.prefix}/tokens/management"
  description = "Consul initial management token of ${var.name} (servers and break-glass only)"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = random_uuid.management[0].result
}

resource "random_bytes" "gossip_key" {
  count  = local.create_cluster ? 1 : 0
  length = 32
}

resource "aws_ssm_parameter" "gossip_key" {
  count       = local.create_cluster ? 1 : 0
  name        = "${local.prefix}/gossip-key"
  description = "Consul gossip encryption key of ${var.name}"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = random_bytes.gossip_key[0].base64
}

resource "tls_private_key" "ca" {
  count       = local.create_cluster ? 1 : 0
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "ca" {
  count                 = local.create_cluster ? 1 : 0
  private_key_pem       = tls_private_key.ca[0].private_key_pem
  is_ca_certificate     = true
  validity_period_hours = var.ca_validity_hours
  early_renewal_hours   = 0 # rotation is an operator's decision (docs/deploy-aws.md)
  allowed_uses          = ["cert_signing", "crl_signing", "digital_signature"]
  subject {
    common_name  = "${var.name} Consul CA"
    organization = var.name
  }
}

resource "aws_ssm_parameter" "ca_cert" {
  count       = local.create_cluster ? 1 : 0
  name        = "${local.prefix}/ca-cert"
  description = "Consul CA certificate of ${var.name} (agents' TLS and Connect root)"
  type        = "SecureString" # public, but one kind of parameter keeps the policies simple
  key_id      = var.kms_key_arn
  # The trust bundle: the current CA first; during a rotation, the previous one after it.
  value = "${tls_self_signed_cert.ca[0].cert_pem}${var.previous_ca_cert}"
}

resource "aws_ssm_parameter" "ca_key" {
  count       = local.create_cluster ? 1 : 0
  name        = "${local.prefix}/ca-key"
  description = "Consul CA private key of ${var.name} (read by the servers only)"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = tls_private_key.ca[0].private_key_pem
}

# What the servers' bootstrap script (modules/consul/mesh.py) makes true in Consul, re-read
# every minute: adding a runner to var.runners adds its token and intention without
# replacing a server. No secret here: tokens are referenced by parameter name.
resource "aws_ssm_parameter" "mesh" {
  name        = "${local.prefix}/mesh"
  description = "Consul ACL tokens and intentions ${var.name} needs (read by the servers' bootstrap script)"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value = jsonencode({
    stack      = var.name # marks the tokens and intentions this stack owns
    datacenter = var.datacenter
    controller = var.controller_service
    runners    = var.runner_names
    tokens = [for role, token in local.roles : {
      role        = role
      accessor_id = random_uuid.accessor[role].result
      parameter   = token.parameter
      policy      = token.policy  # "agent", "prometheus", "controller", "gallery-reader" or "gallery-operator": a policy the script defines
      service     = token.service # a service identity (the controller: both)
    }]
    # Default deny for every pair, then the controller allowed to each runner.
    intentions = concat(
      [{ Kind = "service-intentions", Name = "*", Sources = [{ Name = "*", Action = "deny" }] }],
      [for runner in var.runner_names : { Kind = "service-intentions", Name = runner, Sources = [{ Name = var.controller_service, Action = "allow" }] }],
    )
  })
}
