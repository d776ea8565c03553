variable "name" {
  description = "Name prefix: repositories are NAME/<deployable>."
  type        = string
}

variable "deployables" {
  description = "What gets a repository: the controller and every runner (the root passes keys(var.runners))."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key encrypting the images."
  type        = string
}
