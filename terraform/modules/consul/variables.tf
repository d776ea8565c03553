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
