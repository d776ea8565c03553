"""Static checks of the deployment files (issue: deployment).

Docker and the Terraform providers cannot run on the development and CI machines, so
what can be checked without them is checked here, on every `scripts/test.sh`:

- `terraform_rules`: HCL assertions on terraform/ (python-hcl2): redrive to a DLQ,
  encryption at rest, no ingress from the whole internet, the visibility timeout derived
  from the controller's job timeout, the controller's queue permissions.
- `compose_rules`: infra/docker-compose.yml: images or builds exist, mounted files exist,
  dependencies exist, every environment variable the services read is one the binaries
  know and every required one is set, ports agree across services and configs.
- `dockerfile_rules`: each deployable's Dockerfile is multi-stage, runs as non-root,
  has a HEALTHCHECK, and copies only paths that exist.
- `tools`: `checkov` (offline) with zero failed checks, and `terraform fmt -check` where a
  terraform binary is installed.

Each rule returns a list of violations (strings naming file and reason); none means pass.
"""
