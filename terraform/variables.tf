variable "name" {
  description = "Name prefix of every resource (queues, cluster, repositories)."
  type        = string
  default     = "plugworker"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name: 2-31 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC."
  type        = string
  default     = "10.42.0.0/16"
  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be an IPv4 CIDR of /20 or larger (room for the subnets)."
  }
}

variable "availability_zone_count" {
  description = "Availability zones to spread subnets and tasks over."
  type        = number
  default     = 2
  validation {
    condition     = var.availability_zone_count >= 2 && var.availability_zone_count <= 4
    error_message = "availability_zone_count must be 2, 3 or 4."
  }
}

variable "image_tag" {
  description = "Tag of the images pushed to the ECR repositories (the controller and every runner) (see README, Deploy to AWS)."
  type        = string
  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid Docker tag other than 'latest' (the repositories are immutable)."
  }
}

variable "job_timeout_seconds" {
  description = "The controller's --job-timeout. The jobs queue's visibility timeout is derived from it."
  type        = number
  default     = 300
  validation {
    condition     = var.job_timeout_seconds >= 1 && var.job_timeout_seconds <= 43000
    error_message = "job_timeout_seconds must be between 1 and 43000 (SQS visibility is at most 43200 s)."
  }
}

variable "max_receive_count" {
  description = "Receives of one job before SQS moves it to the dead-letter queue."
  type        = number
  default     = 5
  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "payload_expiration_days" {
  description = "Days after which objects in the payload bucket expire: the backstop for bodies of messages never consumed by a client that deletes them. Longer than the dead-letter queue's 14 days, so no message outlives its body."
  type        = number
  default     = 15
  validation {
    condition     = var.payload_expiration_days >= 15 && var.payload_expiration_days <= 3650
    error_message = "payload_expiration_days must be between 15 (the DLQ keeps messages 14 days) and 3650."
  }
}

variable "consul_retry_join" {
  description = "Empty: this stack creates a Consul server cluster. Otherwise the go-discover string the task agents join an existing cluster with (e.g. provider=aws region=eu-west-1 tag_key=consul tag_value=prod); see consul_parameters_prefix."
  type        = string
  default     = ""
  validation {
    condition     = var.consul_retry_join == "" || length(var.consul_retry_join) > 3
    error_message = "consul_retry_join must be empty or a go-discover string."
  }
}

variable "consul_parameters_prefix" {
  description = "With an existing cluster (consul_retry_join): SSM prefix under which its operator stored its gossip key (PREFIX/gossip-key) and CA certificate (PREFIX/ca-cert), as SecureString parameters encrypted with this stack's KMS key or one the execution role may use. Unused when this stack creates the cluster."
  type        = string
  default     = ""
}

variable "consul_previous_ca_cert" {
  description = "During a rotation of the Consul CA this stack generated: the previous CA certificate (PEM), still trusted beside the new one. Empty otherwise (docs/deploy-aws.md, \"Rotating the CA\")."
  type        = string
  default     = ""
}

variable "consul_datacenter" {
  description = "Datacenter of the existing Consul cluster the task agents join (default: the stack's name, which is also the datacenter of a cluster this stack creates)."
  type        = string
  default     = ""
}

variable "consul_server_count" {
  description = "Consul servers to run when this stack creates the cluster (odd, for a quorum)."
  type        = number
  default     = 3
  validation {
    condition     = contains([1, 3, 5], var.consul_server_count)
    error_message = "consul_server_count must be 1, 3 or 5."
  }
}

variable "consul_version" {
  description = "Consul version for the servers and the client agent in every task (1.12 or later: the configuration uses the tls { defaults, internal_rpc, https } blocks)."
  type        = string
  default     = "1.20.5"
  validation {
    condition     = can(regex("^1\\.(1[2-9]|[2-9][0-9])\\.[0-9]+$", var.consul_version))
    error_message = "consul_version must be a Consul release 1.12.0 or later (MAJOR.MINOR.PATCH)."
  }
}

variable "controller" {
  description = "Controller service: task size, and autoscaling on the jobs queue's depth."
  type = object({
    cpu              = number
    memory           = number
    min_count        = number
    max_count        = number
    backlog_per_task = number
    max_in_flight    = number
  })
  default = {
    cpu              = 512
    memory           = 1024
    min_count        = 1
    max_count        = 4
    backlog_per_task = 200
    max_in_flight    = 64
  }
  validation {
    condition     = var.controller.min_count >= 1 && var.controller.max_count >= var.controller.min_count
    error_message = "controller: need min_count >= 1 and max_count >= min_count."
  }
}

variable "runners" {
  description = "Runner services by name (set in runners.auto.tfvars, the one place runners are named): task size, autoscaling on CPU and, optionally, ports and the gallery it reads."
  type = map(object({
    cpu          = number
    memory       = number
    min_count    = number
    max_count    = number
    cpu_target   = number
    port         = optional(number, 50051) # gRPC over Connect mTLS (PLUGWORKER_LISTEN)
    health_port  = optional(number, 50052) # plaintext gRPC health (PLUGWORKER_HEALTH_LISTEN)
    metrics_port = optional(number, 9464)  # Prometheus /metrics (PLUGWORKER_METRICS_ADDRESS)
    gallery      = optional(string)        # prefix in the galleries bucket it follows (PLUGWORKER_MEME_GALLERY), read-only
  }))
  validation {
    condition     = length(var.runners) >= 1
    error_message = "runners: at least one runner (runners.auto.tfvars)."
  }
  validation {
    # Runner names become ECR repositories, ECS services, Consul services, log groups and
    # IAM roles (<name>-<runner>), beside the controller's, the observability task's and
    # the roles <name>-ecs-execution, <name>-consul-server and <name>-vpc-flow-logs.
    condition     = alltrue([for name, _ in var.runners : can(regex("^[a-z][a-z0-9-]{1,40}$", name)) && !contains(["controller", "observability"], name) && !contains(["ecs-execution", "consul-server", "vpc-flow-logs"], name)])
    error_message = "runners: names are 2-41 lowercase letters, digits or dashes starting with a letter, and none of \"controller\", \"observability\", \"ecs-execution\", \"consul-server\" or \"vpc-flow-logs\"."
  }
  validation {
    condition     = alltrue([for _, r in var.runners : r.min_count >= 1 && r.max_count >= r.min_count && r.cpu_target > 0 && r.cpu_target <= 100])
    error_message = "runners: min_count >= 1, max_count >= min_count, 0 < cpu_target <= 100."
  }
  validation {
    condition = alltrue([for _, r in var.runners : length(distinct([r.port, r.health_port, r.metrics_port])) == 3 && alltrue([
      for p in [r.port, r.health_port, r.metrics_port] : p >= 1024 && p <= 65535 && !contains([8301, 8501], p)
    ])])
    error_message = "runners: port, health_port and metrics_port differ, lie in 1024-65535 and are not the Consul agent's 8301 or 8501."
  }
  validation {
    # A prefix, not a pattern: no wildcard, no empty or dot segment, no leading or trailing
    # slash (the runner's role may read exactly <prefix>/*).
    condition = alltrue([for _, r in var.runners : r.gallery == null ? true : (
      can(regex("^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$", r.gallery)) && length(r.gallery) <= 200
    )])
    error_message = "runners: gallery is a prefix in the galleries bucket such as \"memes\" or \"boards/main\": letters, digits, '.', '_', '-' in '/'-separated segments, none starting with '.', at most 200 characters."
  }
}

variable "gallery_noncurrent_days" {
  description = "Days the galleries bucket keeps an object's previous version (a `current` replaced or an object deleted outside `plugworker gallery`)."
  type        = number
  default     = 90
  validation {
    condition     = var.gallery_noncurrent_days >= 1 && var.gallery_noncurrent_days <= 3650
    error_message = "gallery_noncurrent_days must be between 1 and 3650."
  }
}

variable "gallery_operator_roles" {
  description = "Names of IAM roles (made outside this stack) that publish galleries: each gets the operators' policy (output gallery_operator_policy_arn). Empty: attach that policy yourself."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention of every service's logs."
  type        = number
  default     = 365
  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts."
  }
}

variable "grafana_admin_password_ssm_parameter" {
  description = "Name of an SSM SecureString parameter holding Grafana's admin password (created by you; never in state)."
  type        = string
  validation {
    condition     = startswith(var.grafana_admin_password_ssm_parameter, "/")
    error_message = "grafana_admin_password_ssm_parameter must be a parameter name starting with '/'."
  }
}
