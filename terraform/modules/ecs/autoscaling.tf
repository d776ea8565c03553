# The controller scales on the jobs waiting per controller task (queue depth / tasks);
# each runner scales on its average CPU.

resource "aws_appautoscaling_target" "controller" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.this[var.controller_service].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.controller.min_count
  max_capacity       = var.controller.max_count
}

resource "aws_appautoscaling_policy" "controller_backlog" {
  name               = "${var.name}-controller-backlog-per-task"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.controller.service_namespace
  resource_id        = aws_appautoscaling_target.controller.resource_id
  scalable_dimension = aws_appautoscaling_target.controller.scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value       = var.controller.backlog_per_task
    scale_in_cooldown  = 120
    scale_out_cooldown = 60
    customized_metric_specification {
      metrics {
        id          = "backlog_per_task"
        expression  = "visible / IF(tasks > 0, tasks, 1)"
        label       = "jobs waiting per controller task"
        return_data = true
      }
      metrics {
        id          = "visible"
        return_data = false
        metric_stat {
          stat = "Sum"
          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesVisible"
            dimensions {
              name  = "QueueName"
              value = var.queues["jobs"].name
            }
          }
        }
      }
      metrics {
        id          = "tasks"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"
            dimensions {
              name  = "ClusterName"
              value = aws_ecs_cluster.this.name
            }
            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.this[var.controller_service].name
            }
          }
        }
      }
    }
  }
}

resource "aws_appautoscaling_target" "runner" {
  for_each           = var.runners
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.this[each.key].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = each.value.min_count
  max_capacity       = each.value.max_count
}

resource "aws_appautoscaling_policy" "runner_cpu" {
  for_each           = var.runners
  name               = "${var.name}-${each.key}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.runner[each.key].service_namespace
  resource_id        = aws_appautoscaling_target.runner[each.key].resource_id
  scalable_dimension = aws_appautoscaling_target.runner[each.key].scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value       = each.value.cpu_target
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}
