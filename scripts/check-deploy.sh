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
# The controller image builds plugworker with the Dockerfile's default CLI_FEATURES: only
# production code, so neither the embedded registry (`dev`, `registry`) nor the meme model
# (`gallery`). Each name is checked against the default build first, so a renamed crate
# cannot pass unseen.
features="$(sed -n 's/^ARG CLI_FEATURES=//p' infra/docker/controller.Dockerfile)"
image_tree="$(cargo tree --locked -p plugworker-cli --no-default-features --features "$features" -e normal,build --prefix none)"
default_tree="$(cargo tree --locked -p plugworker-cli -e normal,build --prefix none)"
for crate in plugworker-embedded-consul plugworker-meme ort; do
  if ! grep -q "^$crate v" <<<"$default_tree" || grep -q "^$crate v" <<<"$image_tree"; then
    echo "check-deploy: $crate must be in plugworker's default build and not in the controller image's (--features $features)" >&2
    exit 1
  fi
done
cd scripts
"$venv/bin/python" -m deploy_checks ..
if [ "${1:-}" = --runners ]; then
  "$venv/bin/python" -m deploy_checks.selftests deploy_checks.test_compose_rules \
    deploy_checks.test_terraform_rules.RunnersAsData deploy_checks.test_deploy_checks.Compose
else
  "$venv/bin/python" -m deploy_checks.selftests deploy_checks.test_deploy_checks deploy_checks.test_compose_rules
fi
