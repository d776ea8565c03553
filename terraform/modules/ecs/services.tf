# Task definitions and services: the controller and each runner, every task with its
# Consul client agent (when joining a cluster), logs to CloudWatch, traces to the
# collector, and a Cloud Map A record per task for Prometheus.

locals {
  # The controller's shutdown on SIGTERM: a receive in progress ends (at most the receive
  # wait), running jobs finish until the grace after the signal, the rest are re-queued
  # (at most 15 s). ECS must wait longer than that before SIGKILL, or jobs caught by a
  # deploy spend a receive: stopTimeout derives from these (checked by the deploy checks,
  # scripts/deploy_checks/shutdown_rules.py; Fargate allows at most 120 s).
  controller_shutdown_grace_seconds = 30
  controller_receive_wait_seconds   = 20

  with_agent = local.consul_sidecar ? [local.consul_agent] : []
  # The service waits for its agent: it registers (runners) or queries (controller) there.
  wait_for_agent = local.consul_sidecar ? [{ containerName = "consul-agent", condition = "HEALTHY" }] : []

  controller_container = {
    name         = "controller"
    image        = "${var.image_repositories["controller"]}:${var.image_tag}"
    essential    = true
    command      = ["controller"]
    portMappings = [{ containerPort = 9090, protocol = "tcp" }]
    environment = concat(local.common_environment, [
      { name = "AWS_REGION", value = data.aws_region.current.name },
      { name = "PLUGWORKER_JOBS_QUEUE_URL", value = var.queues["jobs"].url },
      { name = "PLUGWORKER_RESULTS_QUEUE_URL", value = var.queues["results"].url },
      { name = "PLUGWORKER_DLQ_URL", value = var.queues["dlq"].url },
      { name = "PLUGWORKER_JOB_TIMEOUT", value = "${var.job_timeout_seconds}s" },
      { name = "PLUGWORKER_MAX_IN_FLIGHT", value = tostring(var.controller.max_in_flight) },
      { name = "PLUGWORKER_HEALTH_ADDRESS", value = "0.0.0.0:9090" },
      { name = "PLUGWORKER_PAYLOAD_BUCKET", value = var.payloads.name },
      { name = "PLUGWORKER_PAYLOAD_KEY_PREFIX", value = var.payloads.key_prefix },
      { name = "PLUGWORKER_SHUTDOWN_GRACE", value = "${local.controller_shutdown_grace_seconds}s" },
      { name = "PLUGWORKER_RECEIVE_WAIT", value = "${local.controller_receive_wait_seconds}s" },
      { name = "OTEL_SERVICE_NAME", value = "plugworker-controller" },
    ])
    healthCheck = {
      command     = ["CMD", "plugworker", "healthcheck"]
      interval    = 10
      timeout     = 6
      retries     = 3
      startPeriod = 30
    }
    dependsOn        = local.wait_for_agent
    stopTimeout      = local.controller_shutdown_grace_seconds + 30 # see controller_shutdown_grace_seconds
    logConfiguration = local.log_configuration["controller"]
  }

  runner_containers = {
    for name, runner in var.runners : name => {
      name         = name
      image        = "${var.image_repositories[name]}:${var.image_tag}"
      essential    = true
      portMappings = [{ containerPort = 50051, protocol = "tcp" }, { containerPort = 9464, protocol = "tcp" }]
      environment = concat(local.common_environment, [
        { name = "PLUGWORKER_LISTEN", value = "0.0.0.0:50051" },
        { name = "PLUGWORKER_METRICS_ADDRESS", value = "0.0.0.0:9464" },
        { name = "OTEL_SERVICE_NAME", value = name },
      ])
      healthCheck = {
        command     = ["CMD", name, "--health-probe"]
        interval    = 10
        timeout     = 6
        retries     = 3
        startPeriod = 90 # models load before the runner says SERVING
      }
      dependsOn        = local.wait_for_agent
      stopTimeout      = 60 # in-flight runs finish (PLUGWORKER_SHUTDOWN_GRACE 30 s), then deregister
      logConfiguration = local.log_configuration[name]
    }
  }
}

# One task definition and one service per deployable; they differ only in these.
locals {
  services = merge(
    {
      controller = {
        container = local.controller_container
        cpu       = var.controller.cpu
        memory    = var.controller.memory
        task_role = aws_iam_role.controller.arn
        min_count = var.controller.min_count
      }
    },
    {
      for name, runner in var.runners : name => {
        container = local.runner_containers[name]
        cpu       = runner.cpu
        memory    = runner.memory
        task_role = aws_iam_role.runner.arn
        min_count = runner.min_count
      }
    },
  )
}

resource "aws_ecs_task_definition" "this" {
  for_each                 = local.services
  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = each.value.task_role
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64" # the image-runner carries the x86_64 ONNX Runtime
  }
  container_definitions = jsonencode(concat(
    [each.value.container],
    [for agent in local.with_agent : merge(agent, { logConfiguration = local.log_configuration[each.key] })],
  ))
}

resource "aws_service_discovery_service" "this" {
  for_each = local.services
  name     = each.key
  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.this.id
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
  for_each               = local.services
  name                   = each.key
  cluster                = aws_ecs_cluster.this.id
  task_definition        = aws_ecs_task_definition.this[each.key].arn
  desired_count          = each.value.min_count
  launch_type            = "FARGATE"
  enable_execute_command = true
  propagate_tags         = "SERVICE"
  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }
  service_registries {
    registry_arn = aws_service_discovery_service.this[each.key].arn
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  lifecycle {
    ignore_changes = [desired_count] # owned by autoscaling
  }
}
