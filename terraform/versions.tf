terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    # The mesh's secrets: ACL token IDs and the gossip key (modules/mesh).
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    # The Consul CA (modules/mesh).
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = {
      Project = "plugworker"
      Stack   = var.name
    }
  }
}
