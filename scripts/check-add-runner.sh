#!/usr/bin/env bash
# Adding a runner, proven as a user does it (README, "Adding a runner"): copies the
# repository (its tracked files and new ones, as a clean clone has them: no target folder,
# no ignored files), adds the README's example runner from that section's own blocks
# (deploy_checks/add_runner.py: the crate, one compose entry, one tfvars entry), updates
# the lock file with `cargo update --workspace`, builds that crate alone with --locked
# (reusing $CARGO_TARGET_DIR), and runs the deploy checks and their runner self-tests on
# the copy (scripts/check-deploy.sh --runners). Fails if any step would fail for the user:
# a README block that is not the file it shows, a lock file left stale, a script or
# self-test that names the runners instead of reading them. Part of scripts/test.sh, after
# the workspace build (the checks read the other binaries' --help); needs the venv that
# scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

# One place for the copy, in the target folder: cargo keys the copy's crates by their
# path, so at the same path the next run finds them built (and tar keeps the files' times,
# so unchanged crates are fresh); a new place each run would rebuild the kit.
copy="$CARGO_TARGET_DIR/check-add-runner"
runner=""
cleanup() {
  rm -rf "$copy"
  # The build put the throw-away binary beside the workspace's: it is no binary of theirs.
  if [ -n "$runner" ]; then rm -f "$CARGO_TARGET_DIR/debug/$runner" "$CARGO_TARGET_DIR/debug/$runner.d"; fi
}
trap cleanup EXIT

rm -rf "$copy"
mkdir -p "$copy"
# A tracked file deleted in the working tree is skipped.
git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xpf - -C "$copy"

runner="$(cd scripts && python3 -m deploy_checks.add_runner "$copy")"
echo "check-add-runner: added $runner to a copy in $copy as the README says"

cd "$copy"
listed="$(scripts/runners.sh)"
if ! grep -qx "$runner" <<<"$listed"; then
  echo "check-add-runner: scripts/runners.sh does not list $runner: $listed" >&2
  exit 1
fi
cargo update --workspace --offline --quiet
cargo build --locked --offline --quiet -p "$runner"
scripts/check-deploy.sh --runners
echo "check-add-runner: $runner builds, and the deploy checks and their self-tests pass with it"
