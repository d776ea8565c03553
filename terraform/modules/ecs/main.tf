# The ECS cluster (Fargate), its Cloud Map namespace (the services' OTLP endpoint), the
# tasks' security groups and log groups, and the shared pieces of every task definition:
# the Consul client agent that runs in each task, logging, and the environment that points
# at that agent and the collector.

data "aws_region" "current" {}

locals {
  namespace = "${var.name}.internal"

  # Every task runs a Consul client agent and its service talks to it over HTTPS on
  # loopback, with its own ACL token: registrations live and die with the task, and each
  # service gets its Connect leaf certificate from its own agent.
  consul_https_port = 8501
  consul_ca_file    = "/consul/ca/ca.pem" # on the task's "consul-ca" volume
  consul_environment = [
    { name = "CONSUL_HTTP_ADDR", value = "https://127.0.0.1:${local.consul_https_port}" },
    { name = "CONSUL_CACERT", value = local.consul_ca_file },
  ]
  consul_ca_mount = { sourceVolume = "consul-ca", containerPath = "/consul/ca", readOnly = true }
  # The agent's configuration: joins the cluster, HTTPS only (auto-encrypt certificate
  # from the servers, signed by the stack's CA), gossip encrypted and verified, ACLs on
  # with default deny, Connect. The client address is the task's own loopback.
  consul_agent_config = jsonencode({
    datacenter              = var.consul.datacenter
    bind_addr               = "{{ GetPrivateInterfaces | include \"type\" \"IPv4\" | attr \"address\" }}"
    client_addr             = "127.0.0.1"
    retry_join              = [var.consul.retry_join]
    ports                   = { http = -1, https = local.consul_https_port, dns = -1 }
    encrypt_verify_incoming = true
    encrypt_verify_outgoing = true
    tls = {
      defaults     = { ca_file = local.consul_ca_file, verify_outgoing = true }
      internal_rpc = { verify_server_hostname = true }
    }
    auto_encrypt = { tls = true }
    acl          = { enabled = true, default_policy = "deny", down_policy = "extend-cache", enable_token_persistence = false }
    connect      = { enabled = true }
  })
  consul_agent = {
    name      = "consul-agent"
    image     = "hashicorp/consul:${var.consul.version}"
    essential = true
    # Secrets arrive as environment (ECS `secrets`, from SSM SecureString) and go into
    # files only the agent reads: the gossip key and agent token into its config, the CA
    # onto the shared volume for the service's CONSUL_CACERT. The image's entrypoint adds
    # -data-dir and -config-dir and drops to the consul user.
    entryPoint = ["/bin/sh", "-ec"]
    command = [join("\n", [
      "printf '%s\\n' \"$CONSUL_CA_PEM\" > ${local.consul_ca_file} && chmod 0644 ${local.consul_ca_file}",
      "umask 077",
      "printf '%s' \"$CONSUL_AGENT_CONFIG\" > /consul/config/agent.json",
      "printf '{\"encrypt\":\"%s\",\"acl\":{\"tokens\":{\"agent\":\"%s\"}}}' \"$CONSUL_GOSSIP_KEY\" \"$CONSUL_HTTP_TOKEN\" > /consul/config/secrets.json",
      "chown consul:consul /consul/config/agent.json /consul/config/secrets.json",
      "unset CONSUL_GOSSIP_KEY CONSUL_CA_PEM",
      "exec docker-entrypoint.sh agent",
    ])]
    environment = concat(local.consul_environment, [{ name = "CONSUL_AGENT_CONFIG", value = local.consul_agent_config }])
    secrets = [
      { name = "CONSUL_HTTP_TOKEN", valueFrom = var.mesh.agent_token_arn }, # also the health check's
      { name = "CONSUL_GOSSIP_KEY", valueFrom = var.mesh.gossip_key_arn },
      { name = "CONSUL_CA_PEM", valueFrom = var.mesh.ca_cert_arn },
    ]
    mountPoints = [merge(local.consul_ca_mount, { readOnly = false })]
    healthCheck = {
      command     = ["CMD", "consul", "members"]
      interval    = 10
      timeout     = 5
      retries     = 3
      startPeriod = 20
    }
  }
  common_environment = concat(local.consul_environment, [
    { name = "OTEL_EXPORTER_OTLP_ENDPOINT", value = var.otlp_endpoint },
    { name = "PLUGWORKER_LOG_FORMAT", value = "json" },
    { name = "RUST_LOG", value = "info" },
  ])
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
  description = "plugworker tasks: the collector's OTLP endpoint"
  vpc         = var.vpc_id
}

resource "aws_cloudwatch_log_group" "service" {
  # Not keys(local.services): those services' containers refer to these groups.
  for_each          = toset(concat([var.controller_service], keys(var.runners)))
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
