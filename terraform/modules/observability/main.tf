# Traces and metrics on AWS: one Fargate task with the OpenTelemetry Collector (OTLP in
# from every service), Tempo (traces), Prometheus (scrapes every controller and runner
# instance found in Consul, and the collector's span metrics; a Consul client agent runs
# in the task for it, as in every task of the stack) and Grafana (provisioned
# with the same data sources and dashboard as the local stack). Configurations come from
# infra/, with the addresses that differ inside one task rewritten: the containers share
# the task's network, so Tempo takes OTLP on 4417 (the collector owns 4317) and everything
# else is localhost. Operators reach Grafana by SSM port forwarding
# (scripts/aws-port-forward.sh grafana); nothing is exposed outside the VPC.
#
# Tempo and Prometheus keep their data on the task's ephemeral storage (72 h of traces,
# 15 days of metrics, within the 100 GiB asked for below): a replaced task starts empty.
# For longer retention, point Tempo at S3 and Prometheus at remote write.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  infra             = "${path.module}/../../../infra"
  collector_config  = replace(file("${local.infra}/otel-collector.yaml"), "endpoint: tempo:4317", "endpoint: localhost:4417")
  tempo_config      = replace(file("${local.infra}/tempo.yaml"), "endpoint: 0.0.0.0:4317", "endpoint: 0.0.0.0:4417")
  consul_token_file = "/prometheus/consul-token"
  prometheus_config = templatefile("${path.module}/prometheus.yml.tftpl", {
    consul_https_port = 8501
    ca_file           = "${var.consul_ca_mount.containerPath}/ca.pem"
    token_file        = local.consul_token_file
    datacenter        = var.consul_datacenter
  })
  datasources_config = replace(replace(file("${local.infra}/grafana/provisioning/datasources/datasources.yaml"),
  "http://prometheus:9090", "http://localhost:9090"), "http://tempo:3200", "http://localhost:3200")
  dashboards_config = replace(file("${local.infra}/grafana/provisioning/dashboards/dashboards.yaml"),
  "/var/lib/grafana/dashboards", "/tmp/grafana/dashboards")
  dashboard = jsonencode(jsondecode(file("${local.infra}/grafana/dashboards/plugworker.json")))

  log = {
    logDriver = "awslogs"
    options = {
      awslogs-group         = aws_cloudwatch_log_group.this.name
      awslogs-region        = data.aws_region.current.name
      awslogs-stream-prefix = "observability"
    }
  }
  parameter_arn = "arn:aws:ssm:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:parameter${var.grafana_admin_password_ssm_parameter}"
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/${var.name}/observability"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
}

resource "aws_iam_role_policy" "execution" {
  name = "observability-logs-and-grafana-password"
  role = var.execution_role_name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = "${aws_cloudwatch_log_group.this.arn}:*"
      },
      {
        Effect   = "Allow"
        Action   = ["ssm:GetParameters"]
        Resource = local.parameter_arn
      },

    ]
  })
}

resource "aws_iam_role" "task" {
  name = "${var.name}-observability"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy" "task" {
  name   = "observability"
  role   = aws_iam_role.task.id
  policy = var.task_policy_json
}

resource "aws_ecs_task_definition" "this" {
  family                   = "${var.name}-observability"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 2048
  memory                   = 4096
  execution_role_arn       = var.execution_role_arn
  task_role_arn            = aws_iam_role.task.arn
  ephemeral_storage {
    size_in_gib = 100
  }
  # The agent writes the CA here; Prometheus reads it.
  volume {
    name = "consul-ca"
  }
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  container_definitions = jsonencode([
    {
      name             = "otel-collector"
      image            = var.images.otel_collector
      essential        = true
      command          = ["--config=env:OTELCOL_CONFIG"]
      environment      = [{ name = "OTELCOL_CONFIG", value = local.collector_config }]
      portMappings     = [{ containerPort = 4317, protocol = "tcp" }, { containerPort = 8889, protocol = "tcp" }]
      dependsOn        = [{ containerName = "tempo", condition = "START" }]
      logConfiguration = local.log
    },
    {
      name             = "tempo"
      image            = var.images.tempo
      essential        = true
      entryPoint       = ["/bin/sh", "-c"]
      command          = ["printf '%s' \"$TEMPO_CONFIG\" > /tmp/tempo.yaml && exec /tempo -config.file=/tmp/tempo.yaml"]
      environment      = [{ name = "TEMPO_CONFIG", value = local.tempo_config }]
      portMappings     = [{ containerPort = 3200, protocol = "tcp" }]
      logConfiguration = local.log
    },
    {
      name       = "prometheus"
      image      = var.images.prometheus
      essential  = true
      entryPoint = ["/bin/sh", "-c"]
      # The read-only Consul token arrives from SSM (ECS secrets) and goes to a file only
      # Prometheus reads (consul_sd_configs' credentials_file), out of the environment.
      command = [join(" && ", [
        "printf '%s' \"$PROMETHEUS_CONFIG\" > /tmp/prometheus.yml",
        "(umask 077 && printf '%s' \"$CONSUL_HTTP_TOKEN\" > ${local.consul_token_file})",
        "unset CONSUL_HTTP_TOKEN",
        "exec /bin/prometheus --config.file=/tmp/prometheus.yml --storage.tsdb.path=/prometheus --storage.tsdb.retention.time=15d --web.enable-remote-write-receiver",
      ])]
      environment      = [{ name = "PROMETHEUS_CONFIG", value = local.prometheus_config }]
      secrets          = [{ name = "CONSUL_HTTP_TOKEN", valueFrom = var.prometheus_consul_token_arn }]
      mountPoints      = [var.consul_ca_mount]
      portMappings     = [{ containerPort = 9090, protocol = "tcp" }]
      dependsOn        = [{ containerName = "consul-agent", condition = "HEALTHY" }]
      logConfiguration = local.log
    },
    {
      name       = "grafana"
      image      = var.images.grafana
      essential  = true
      entryPoint = ["/bin/sh", "-c"]
      command = [join(" && ", [
        "mkdir -p /tmp/grafana/provisioning/datasources /tmp/grafana/provisioning/dashboards /tmp/grafana/dashboards",
        "printf '%s' \"$DATASOURCES\" > /tmp/grafana/provisioning/datasources/datasources.yaml",
        "printf '%s' \"$DASHBOARDS\" > /tmp/grafana/provisioning/dashboards/dashboards.yaml",
        "printf '%s' \"$DASHBOARD\" > /tmp/grafana/dashboards/plugworker.json",
        "exec /run.sh",
      ])]
      environment = [
        { name = "DATASOURCES", value = local.datasources_config },
        { name = "DASHBOARDS", value = local.dashboards_config },
        { name = "DASHBOARD", value = local.dashboard },
        { name = "GF_PATHS_PROVISIONING", value = "/tmp/grafana/provisioning" },
        { name = "GF_AUTH_ANONYMOUS_ENABLED", value = "false" },
      ]
      secrets          = [{ name = "GF_SECURITY_ADMIN_PASSWORD", valueFrom = local.parameter_arn }]
      portMappings     = [{ containerPort = 3000, protocol = "tcp" }]
      dependsOn        = [{ containerName = "prometheus", condition = "START" }, { containerName = "tempo", condition = "START" }]
      logConfiguration = local.log
    },
    merge(var.consul_agent_container, { logConfiguration = local.log }),
  ])
}

resource "aws_service_discovery_service" "this" {
  name = "observability"
  dns_config {
    namespace_id   = var.namespace_id
    routing_policy = "MULTIVALUE"
    dns_records {
      type = "A"
      ttl  = 10
    }
  }
  health_check_custom_config {
    failure_threshold = 1
  }
}

resource "aws_ecs_service" "this" {
  name                   = "observability"
  cluster                = var.cluster_arn
  task_definition        = aws_ecs_task_definition.this.arn
  desired_count          = 1
  launch_type            = "FARGATE"
  enable_execute_command = true
  propagate_tags         = "SERVICE"
  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [var.security_group_id]
    assign_public_ip = false
  }
  service_registries {
    registry_arn = aws_service_discovery_service.this.arn
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
}
