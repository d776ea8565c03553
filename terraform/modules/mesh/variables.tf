variable "name" {
  description = "Name prefix; parameters live under /NAME/consul/."
  type        = string
}

variable "datacenter" {
  description = "Consul datacenter of the agents (recorded in the mesh parameter for the bootstrap script)."
  type        = string
}

variable "runner_names" {
  description = "Every runner service (the keys of var.runners): each gets its own token and the intention controller -> runner."
  type        = list(string)
}

variable "gallery_runners" {
  description = "The runners that follow a gallery (var.runners entries with `gallery`): their tokens may also read plugworker/galleries/."
  type        = list(string)
  validation {
    condition     = alltrue([for runner in var.gallery_runners : contains(var.runner_names, runner)])
    error_message = "gallery_runners: every one must be a runner (runner_names)."
  }
}

variable "controller_service" {
  description = "Consul service name of the controller (its Connect identity, the source of every intention)."
  type        = string
  default     = "controller"
}

variable "existing" {
  description = "An existing Consul cluster the agents join (retry_join non-empty): then its gossip key and CA certificate are read from SSM parameters PARAMETERS_PREFIX/gossip-key and PARAMETERS_PREFIX/ca-cert that its operator created, and nothing of the cluster's own is generated here."
  type        = object({ retry_join = string, parameters_prefix = string })
  validation {
    condition     = var.existing.retry_join == "" || startswith(var.existing.parameters_prefix, "/")
    error_message = "consul_parameters_prefix: joining an existing cluster (consul_retry_join) needs the SSM prefix holding its gossip-key and ca-cert, starting with '/'."
  }
}

variable "kms_key_arn" {
  description = "KMS key encrypting the SecureString parameters."
  type        = string
}

variable "ca_validity_hours" {
  description = "Lifetime of the generated CA (agents' TLS and the Connect CA root); rotate before it ends (docs/deploy-aws.md)."
  type        = number
  default     = 43800 # 5 years
}

variable "previous_ca_cert" {
  description = "During a CA rotation only: the previous CA certificate (PEM), trusted after the new one until every certificate it signed is gone (docs/deploy-aws.md). Empty otherwise."
  type        = string
  default     = ""
  validation {
    condition     = var.previous_ca_cert == "" || (startswith(var.previous_ca_cert, "-----BEGIN CERTIFICATE-----") && endswith(trimspace(var.previous_ca_cert), "-----END CERTIFICATE-----"))
    error_message = "previous_ca_cert must be empty or one PEM certificate."
  }
}
