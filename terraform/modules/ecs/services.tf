# Task definitions and services: the controller and each runner of var.runners, every task
# with its Consul client agent, its own Consul token (ECS `secrets`, from SSM), logs to
# CloudWatch and traces to the collector. Prometheus finds them in Consul.

locals {
  # The controller's shutdown on SIGTERM: a receive in progress ends (at most the receive
  # wait), running jobs finish until the grace after the signal, the rest are re-queued
  # (at most 15 s). ECS must wait longer than that before SIGKILL, or jobs caught by a
  # deploy spend a receive: stopTimeout derives from these (checked by the deploy checks,
  # scripts/deploy_checks/shutdown_rules.py; Fargate allows at most 120 s).
  controller_shutdown_grace_seconds = 30
  controller_receive_wait_seconds   = 20
  # Health (/healthz) and Prometheus metrics (/metrics) of the controller.
  controller_health_port = 9090

  # The service waits for its agent: it registers there and gets its certificate there.
  wait_for_agent = [{ containerName = "consul-agent", condition = "HEALTHY" }]

  controller_container = {
    name         = var.controller_service
    image        = var.images[var.controller_service]
    essential    = true
    command      = ["controller"]
    portMappings = [{ containerPort = local.controller_health_port, protocol = "tcp" }]
    environment = concat(local.common_environment, [
      # Its Connect identity: the source of every intention (controller -> each runner).
      { name = "PLUGWORKER_MESH_SERVICE", value = var.controller_service },
      { name = "AWS_REGION", value = data.aws_region.current.name },
      { name = "PLUGWORKER_JOBS_QUEUE_URL", value = var.queues["jobs"].url },
      { name = "PLUGWORKER_RESULTS_QUEUE_URL", value = var.queues["results"].url },
      { name = "PLUGWORKER_DLQ_URL", value = var.queues["dlq"].url },
      { name = "PLUGWORKER_JOB_TIMEOUT", value = "${var.job_timeout_seconds}s" },
      { name = "PLUGWORKER_MAX_IN_FLIGHT", value = tostring(var.controller.max_in_flight) },
      { name = "PLUGWORKER_HEALTH_ADDRESS", value = "0.0.0.0:${local.controller_health_port}" },
      { name = "PLUGWORKER_PAYLOAD_BUCKET", value = var.payloads.name },
      { name = "PLUGWORKER_PAYLOAD_KEY_PREFIX", value = var.payloads.key_prefix },
      { name = "PLUGWORKER_SHUTDOWN_GRACE", value = "${local.controller_shutdown_grace_seconds}s" },
      { name = "PLUGWORKER_RECEIVE_WAIT", value = "${local.controller_receive_wait_seconds}s" },
      { name = "OTEL_SERVICE_NAME", value = "plugworker-controller" },
    ])
    secrets = [
      { name = "CONSUL_HTTP_TOKEN", valueFrom = var.mesh.controller_token_arn },
      { name = "PLUGWORKER_MESSAGE_KEYS", valueFrom = aws_ssm_parameter.message_keys.arn },
    ]
    mountPoints = [local.consul_ca_mount]
    healthCheck = {
      command     = ["CMD", "plugworker", "healthcheck"]
      interval    = 10
      timeout     = 6
      retries     = 3
      startPeriod = 30
    }
    dependsOn        = local.wait_for_agent
    stopTimeout      = local.controller_shutdown_grace_seconds + 30 # see controller_shutdown_grace_seconds
    logConfiguration = local.log_configuration[var.controller_service]
  }

  runner_containers = {
    for name, runner in var.runners : name => {
      name      = name
      image     = var.images[name]
      essential = true
      portMappings = [
        { containerPort = runner.port, protocol = "tcp" },
        { containerPort = runner.health_port, protocol = "tcp" },
        { containerPort = runner.metrics_port, protocol = "tcp" },
      ]
      environment = concat(local.common_environment, [
        # Runner, reflection and health over Connect mTLS only: no plaintext mode on AWS.
        { name = "PLUGWORKER_LISTEN", value = "0.0.0.0:${runner.port}" },
        # gRPC health alone, plaintext: for the Consul agent's check (in this task) and
        # the container health probe.
        { name = "PLUGWORKER_HEALTH_LISTEN", value = "0.0.0.0:${runner.health_port}" },
        { name = "PLUGWORKER_METRICS_ADDRESS", value = "0.0.0.0:${runner.metrics_port}" },
        { name = "OTEL_SERVICE_NAME", value = name },
        ], runner.gallery == null ? [] : [
        # The gallery it follows (docs/gallery.md); its role may read that prefix only.
        { name = "PLUGWORKER_MEME_GALLERY", value = "s3://${var.galleries.name}/${runner.gallery}" },
        { name = "AWS_REGION", value = data.aws_region.current.name },
      ])
      secrets     = [{ name = "CONSUL_HTTP_TOKEN", valueFrom = var.mesh.runner_token_arns[name] }]
      mountPoints = [local.consul_ca_mount]
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
      (var.controller_service) = {
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
        task_role = aws_iam_role.runner[name].arn
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
    cpu_architecture        = "X86_64" # runner images carry x86_64 builds (ONNX Runtime)
  }
  # The agent writes the CA here; the service reads it (CONSUL_CACERT).
  volume {
    name = "consul-ca"
  }
  container_definitions = jsonencode([
    each.value.container,
    merge(local.consul_agent, { logConfiguration = local.log_configuration[each.key] }),
  ])
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
    security_groups  = [each.key == var.controller_service ? aws_security_group.controller.id : aws_security_group.runner[each.key].id]
    assign_public_ip = false
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  lifecycle {
    ignore_changes = [desired_count] # owned by autoscaling
  }
}

# The key every controller task signs its re-queued copies with, so a copy one task put back
# (scale-in, deploy) keeps its message id at another, and a producer's attributes are never
# believed (docs/delivery.md#message-keys). Rotating takes two deploys, so tasks of both
# deploys verify each other's copies: first "k1:<old>,k2:<new>" (the old key still signs),
# then "k2:<new>,k1:<old>" (the new one signs); drop k1 once no copy signed with it can be
# left (the queue's retention).
resource "random_bytes" "message_key" {
  length = 32
}

resource "aws_ssm_parameter" "message_keys" {
  name        = "/${var.name}/controller/message-keys"
  description = "Keys signing the controller's re-queued copies of ${var.name} (KEY_ID:SECRET)"
  type        = "SecureString"
  key_id      = var.mesh.kms_key_arn
  value       = "k1:${random_bytes.message_key.base64}"
}
