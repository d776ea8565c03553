# The image of every deployable (the controller and each runner), looked up at plan time.
# The repository names come from module.ecr's inputs, not its resources, so the lookup
# runs during `terraform plan`: a runner added to var.runners whose image was not pushed
# with var.image_tag fails the plan here, at data.aws_ecr_image.pushed["<runner>"], with
# ECR's "image ... does not exist within the repository NAME/<runner>" (or "repository
# ... does not exist" before `terraform apply -target=module.ecr`). The order on a first
# deploy and for a new runner: docs/deploy-aws.md, "Images first".
#
# Tasks then run the image by digest: what was scanned on push is what runs.

data "aws_ecr_image" "pushed" {
  for_each        = module.ecr.repository_names
  repository_name = each.value
  image_tag       = var.image_tag
}

locals {
  images = { for deployable, image in data.aws_ecr_image.pushed : deployable => "${module.ecr.repository_urls[deployable]}@${image.image_digest}" }
}
