#!/usr/bin/env bash
# The deployed runners, one per line: the keys of `runners` in terraform/runners.auto.tfvars,
# the one place a runner is named (the deploy checks keep infra/docker-compose.yml's runner
# entries equal to it). With -p, as cargo arguments (`-p` and the package on two lines), so
# a script builds or lints every runner without naming one:
#   packages="$(scripts/runners.sh -p)"; mapfile -t packages <<<"$packages"
set -euo pipefail
cd "$(dirname "$0")/.."
tfvars=terraform/runners.auto.tfvars
# Keys quoted or bare, as terraform fmt leaves either: `  nlp-runner = {`, `  "nlp-runner" = {`.
names="$(sed -n '/^runners = {/,/^}/s/^ \{1,\}"\{0,1\}\([A-Za-z0-9_-]\{1,\}\)"\{0,1\} *= *{.*/\1/p' "$tfvars")"
if [ -z "$names" ]; then
  echo "runners.sh: no runner entry in $tfvars" >&2
  exit 1
fi
if [ "${1:-}" = -p ]; then
  sed 's/^/-p\n/' <<<"$names"
else
  echo "$names"
fi
