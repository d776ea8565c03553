#!/usr/bin/env bash
# Static checks of the deployment files (terraform/, infra/docker-compose.yml, the
# Dockerfiles): HCL rules, checkov (offline), terraform fmt where terraform is installed,
# compose consistency against the built binaries' --help; then the tests proving each
# check fails when its rule is broken. Part of scripts/test.sh; needs the workspace
# binaries built and the venv that scripts/setup.sh installs.
#
# With --runners (scripts/check-add-runner.sh, on a copy with a runner added): the checks,
# and of the self-tests those that read the runner list (the emulator-backed ones read
# none, and take minutes).
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
if [ "${1:-}" = --runners ]; then
  "$venv/bin/python" -m unittest deploy_checks.test_compose_rules deploy_checks.test_terraform_rules.RunnersAsData \
    deploy_checks.test_deploy_checks.Compose
else
  "$venv/bin/python" -m unittest deploy_checks.test_deploy_checks deploy_checks.test_compose_rules
fi
