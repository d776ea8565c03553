# The ECS cluster (Fargate), its Cloud Map namespace (Prometheus finds every controller
# and runner task there), the tasks' security group and log groups, and the shared
# pieces of every task definition: the Consul client agent sidecar, logging and the
# environment that points at Consul and the collector.

data "aws_region" "current" {}

locals {
  namespace = "${var.name}.internal"
  # With a retry_join, a Consul client agent runs in every task and the service talks to
  # it on loopback: registrations then live and die with the task, like on a VM.
  consul_sidecar   = var.consul.retry_join != ""
  consul_http_addr = local.consul_sidecar ? "127.0.0.1:8500" : var.consul.http_address
  consul_agent = {
    # The image's entrypoint adds -data-dir and -config-dir to `agent`.
    name      = "consul-agent"
    image     = "hashicorp/consul:${var.consul.version}"
    essential = true
    command = [
      "agent",
      "-datacenter=${var.consul.datacenter}",
      "-client=127.0.0.1",
      "-bind={{ GetPrivateInterfaces | include \"type\" \"IPv4\" | attr \"address\" }}",
      "-retry-join=${var.consul.retry_join}",
    ]
    healthCheck = {
      command     = ["CMD", "consul", "members"]
      interval    = 10
      timeout     = 5
      retries     = 3
      startPeriod = 10
    }
  }
  common_environment = [
    { name = "CONSUL_HTTP_ADDR", value = local.consul_http_addr },
    { name = "OTEL_EXPORTER_OTLP_ENDPOINT", value = var.otlp_endpoint },
    { name = "PLUGWORKER_LOG_FORMAT", value = "json" },
    { name = "RUST_LOG", value = "info" },
  ]
}

resource "aws_ecs_cluster" "this" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled" # RunningTaskCount per service: the controller's scaling metric
  }
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE"]
  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = local.namespace
  description = "plugworker tasks, for Prometheus and the collector"
  vpc         = var.vpc_id
}

resource "aws_security_group" "tasks" {
  name        = "${var.name}-tasks"
  description = "plugworker tasks: gRPC, metrics, OTLP and Consul gossip inside the VPC"
  vpc_id      = var.vpc_id

  ingress {
    description = "tasks talk to each other: gRPC to runners, scrapes, OTLP, Grafana"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    self        = true
  }
  ingress {
    description = "Consul gossip (TCP) and health checks from the servers"
    from_port   = 8301
    to_port     = 8301
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }
  ingress {
    description = "Consul gossip (UDP)"
    from_port   = 8301
    to_port     = 8301
    protocol    = "udp"
    cidr_blocks = [var.vpc_cidr]
  }
  ingress {
    description = "gRPC health checks by Consul agents elsewhere in the VPC"
    from_port   = 50051
    to_port     = 50051
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }
  egress {
    description = "HTTPS: AWS APIs (endpoints), image_url jobs and images (through NAT)"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
  egress {
    description = "HTTP image_url jobs (through NAT)"
    from_port   = 80
    to_port     = 80
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
  egress {
    description = "gRPC to runners, Consul servers and gossip, OTLP, scrapes: inside the VPC"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = [var.vpc_cidr]
  }
}

resource "aws_cloudwatch_log_group" "service" {
  # Not keys(local.services): those services' containers refer to these groups.
  for_each          = toset(concat(["controller"], keys(var.runners)))
  name              = "/${var.name}/${each.value}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
}

# The logging block of a container of `service`, with a stream prefix per container.
locals {
  log_configuration = {
    for service, group in aws_cloudwatch_log_group.service : service => {
      logDriver = "awslogs"
      options = {
        awslogs-group         = group.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = service
      }
    }
  }
}
