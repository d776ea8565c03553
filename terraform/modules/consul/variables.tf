variable "name" {
  description = "Name prefix; also the auto-join tag value."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the servers."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR allowed to reach the servers (agents in tasks, operators via SSM)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the servers."
  type        = list(string)
}

variable "server_count" {
  description = "Servers to run (1, 3 or 5)."
  type        = number
}

variable "consul_version" {
  description = "Consul package version."
  type        = string
}

variable "instance_type" {
  description = "Server instance type."
  type        = string
  default     = "t3.small"
}

variable "parameters_prefix" {
  description = "SSM prefix of the mesh's parameters (modules/mesh): gossip-key, ca-cert, ca-key, tokens/*, mesh."
  type        = string
}

variable "parameter_arn_prefix" {
  description = "ARN prefix of those parameters (the servers may read them, nothing else)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key the parameters are encrypted with."
  type        = string
}
