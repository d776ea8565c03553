# One repository per deployable, NAME/<deployable>: the controller and every runner of
# var.runners (nothing here names one). Tags are immutable, so a task definition's image
# tag always means the same image; every push is scanned.

resource "aws_ecr_repository" "this" {
  for_each             = toset(var.deployables)
  name                 = local.names[each.value]
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.kms_key_arn
  }
}

# Untagged layers left by rebuilds go after two weeks; the last 50 tagged images stay.
resource "aws_ecr_lifecycle_policy" "this" {
  for_each   = aws_ecr_repository.this
  repository = each.value.name
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "expire untagged images after 14 days"
        selection    = { tagStatus = "untagged", countType = "sinceImagePushed", countUnit = "days", countNumber = 14 }
        action       = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "keep the last 50 images"
        selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 50 }
        action       = { type = "expire" }
      },
    ]
  })
}

locals {
  names = { for deployable in var.deployables : deployable => "${var.name}/${deployable}" }
}
