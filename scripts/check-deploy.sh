#!/usr/bin/env bash
# Static checks of the deployment files (terraform/, infra/docker-compose.yml, the
# Dockerfiles): HCL rules, checkov (offline), terraform fmt where terraform is installed,
# compose consistency against the built binaries' --help; then the tests proving each
# check fails when its rule is broken, and the generated fourth runner (a throw-away runner
# added as one crate, one compose entry and one tfvars entry passes every check;
# deploy_checks/new_runner.py). Part of scripts/test.sh; needs the workspace
# binaries built and the venv that scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
venv="${PLUGWORKER_DEPLOY_VENV:-$HOME/.cache/plugworker/deploy-venv}"
if [ ! -x "$venv/bin/checkov" ]; then
  echo "check-deploy: $venv has no checkov; run scripts/setup.sh" >&2
  exit 1
fi
cd scripts
"$venv/bin/python" -m deploy_checks ..
"$venv/bin/python" -m unittest deploy_checks.test_deploy_checks deploy_checks.test_compose_rules
