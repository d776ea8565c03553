# One security group per service, so each port is open to exactly who needs it:
#   a runner's gRPC port (Connect mTLS)  <- the controller's group only
#   a runner's / the controller's metrics <- the observability task's group (Prometheus)
#   the collector's OTLP port             <- the controller's and the runners' groups
#   Consul LAN gossip (8301, encrypted)   <- the VPC (servers and every task's agent)
# A runner's plaintext health port has no rule at all: the Consul agent that checks it
# runs in the same task (its check and the container health probe stay inside the task's
# network namespace). Nothing listens outside the VPC.

locals {
  task_security_groups = merge(
    { (var.controller_service) = aws_security_group.controller.id, observability = aws_security_group.observability.id },
    { for name, group in aws_security_group.runner : name => group.id },
  )
  # Services that export traces to the collector.
  otlp_clients = { for name, id in local.task_security_groups : name => id if name != "observability" }
}

resource "aws_security_group" "controller" {
  name        = "${var.name}-controller"
  description = "plugworker controller: metrics to Prometheus, Consul gossip"
  vpc_id      = var.vpc_id
}

resource "aws_security_group" "runner" {
  #checkov:skip=CKV2_AWS_5:Attached to its runner's aws_ecs_service.this (services.tf); checkov's graph does not follow the for_each key into the conditional there.
  for_each    = var.runners
  name        = "${var.name}-${each.key}"
  description = "plugworker runner ${each.key}: gRPC (mTLS) from the controller, metrics to Prometheus, Consul gossip"
  vpc_id      = var.vpc_id
}

resource "aws_security_group" "observability" {
  #checkov:skip=CKV2_AWS_5:Attached to the observability ECS service in modules/observability, through this module's output; checkov's graph does not follow module outputs.
  name        = "${var.name}-observability"
  description = "plugworker observability: OTLP from the services, Consul gossip"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "runner_grpc" {
  for_each                     = var.runners
  security_group_id            = aws_security_group.runner[each.key].id
  description                  = "gRPC over Connect mTLS from the controller"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = aws_security_group.controller.id
}

resource "aws_vpc_security_group_ingress_rule" "runner_metrics" {
  for_each                     = var.runners
  security_group_id            = aws_security_group.runner[each.key].id
  description                  = "Prometheus scrapes"
  ip_protocol                  = "tcp"
  from_port                    = each.value.metrics_port
  to_port                      = each.value.metrics_port
  referenced_security_group_id = aws_security_group.observability.id
}

resource "aws_vpc_security_group_ingress_rule" "controller_metrics" {
  security_group_id            = aws_security_group.controller.id
  description                  = "Prometheus scrapes (metrics beside the health endpoint)"
  ip_protocol                  = "tcp"
  from_port                    = local.controller_health_port
  to_port                      = local.controller_health_port
  referenced_security_group_id = aws_security_group.observability.id
}

resource "aws_vpc_security_group_ingress_rule" "otlp" {
  for_each                     = local.otlp_clients
  security_group_id            = aws_security_group.observability.id
  description                  = "OTLP traces from ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = 4317
  to_port                      = 4317
  referenced_security_group_id = each.value
}

resource "aws_vpc_security_group_ingress_rule" "gossip_tcp" {
  for_each          = local.task_security_groups
  security_group_id = each.value
  description       = "Consul LAN gossip (TCP, encrypted) from the servers and other agents"
  ip_protocol       = "tcp"
  from_port         = 8301
  to_port           = 8301
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_ingress_rule" "gossip_udp" {
  for_each          = local.task_security_groups
  security_group_id = each.value
  description       = "Consul LAN gossip (UDP, encrypted) from the servers and other agents"
  ip_protocol       = "udp"
  from_port         = 8301
  to_port           = 8301
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each          = local.task_security_groups
  security_group_id = each.value
  description       = "HTTPS: AWS APIs (endpoints), image_url jobs and images (through NAT)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "http" {
  for_each          = local.task_security_groups
  security_group_id = each.value
  description       = "HTTP image_url jobs (through NAT)"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "vpc" {
  for_each          = local.task_security_groups
  security_group_id = each.value
  description       = "gRPC to runners, Consul servers and gossip, OTLP, scrapes: inside the VPC"
  ip_protocol       = "-1"
  cidr_ipv4         = var.vpc_cidr
}
