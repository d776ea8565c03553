#!/bin/sh
# One-shot (service consul-init, consul image, after the agent is healthy): the local
# stack's ACLs and intentions. Idempotent: tokens that still work are kept.
#
#  - bootstraps the ACL system once; the management token stays in the consul-bootstrap
#    volume (mounted only here and, read-only, in the consul container for stack-up.sh);
#  - the agent's own token (node identity);
#  - one token per process, each in a volume only its holders mount:
#      every runner: service identity of its own name (write its own service, read the
#        catalog), in runner-tokens/<runner>; a runner following the meme gallery (its
#        environment merges x-gallery-runner-env) also policy plugworker-gallery-reader
#        (key_prefix "plugworker/galleries/" read: the galleries' versions it watches);
#      the controller: policy plugworker-controller (service "controller" write,
#        service_prefix "" read, node_prefix "" read, key_prefix "plugworker/pipelines/"
#        read: the stored pipelines it watches), in controller-token/token;
#      Prometheus: policy plugworker-prometheus (service_prefix "" read,
#        node_prefix "" read), in prometheus-token/token;
#      the gallery operators (`plugworker gallery`, compose service gallery): policy
#        plugworker-gallery-operator (key_prefix "plugworker/galleries/" write: announce
#        a new version), in gallery-operator-token/token;
#  - intentions: default deny (`*` -> `*`), then controller -> each runner allowed.
# The runners are the compose entries built with RUNNER=<name> (infra/docker-compose.yml,
# mounted read-only): a new entry gets its token and intention with no change here.
# `init.sh --list-runners FILE` prints those names, `--list-gallery-runners FILE` those
# following the gallery (the deploy checks compare both with their own reading of the
# compose file). A token that already works keeps its policies: after changing which
# runners follow the gallery, start from clean volumes (scripts/stack-up.sh down).
set -euf  # -f: no globbing (the wildcard intention is named "*")

list_runners() {
  # Runner entries are `build: {<<: *runner-build, args: {RUNNER: <name>}}` (the deploy
  # checks enforce that shape).
  sed -n 's/.*[{ ,]RUNNER: *\([A-Za-z0-9_-][A-Za-z0-9_-]*\).*/\1/p' "$1"
}

list_gallery_runners() {
  # Their entries' environment is `{<<: *gallery-runner-env, CONSUL_HTTP_TOKEN_FILE:
  # /run/consul-tokens/<name>}` (the deploy checks enforce that shape).
  sed -n 's|.*<<: *\*gallery-runner-env, *CONSUL_HTTP_TOKEN_FILE: */run/consul-tokens/\([A-Za-z0-9_-][A-Za-z0-9_-]*\).*|\1|p' "$1"
}

if [ "${1:-}" = --list-runners ]; then
  list_runners "$2"
  exit 0
fi
if [ "${1:-}" = --list-gallery-runners ]; then
  list_gallery_runners "$2"
  exit 0
fi

# Paths are the compose mounts; the variables exist for the deploy checks' test, which
# runs this script against a stand-in consul CLI.
COMPOSE_FILE="${COMPOSE_FILE:-/infra/docker-compose.yml}"
BOOTSTRAP="${CONSUL_INIT_BOOTSTRAP_DIR:-/consul/bootstrap}"
TOKENS="${CONSUL_INIT_TOKENS_DIR:-/tokens}"
RUNNER_TOKENS="$TOKENS/runners"
CONTROLLER_TOKEN="$TOKENS/controller/token"
PROMETHEUS_TOKEN="$TOKENS/prometheus/token"
GALLERY_OPERATOR_TOKEN="$TOKENS/gallery-operator/token"
PLUGWORKER_UID=10001    # the plugworker images' user
PROMETHEUS_UID=65534    # prom/prometheus runs as nobody

runners="$(list_runners "$COMPOSE_FILE")"
gallery_runners=" $(list_gallery_runners "$COMPOSE_FILE" | tr '\n' ' ')"
if [ -z "$runners" ]; then
  echo "consul-init: no runner entries (RUNNER: <name>) in $COMPOSE_FILE" >&2
  exit 1
fi

works() { # token file: does the agent accept it?
  [ -s "$1" ] && consul acl token read -self -token-file="$1" >/dev/null 2>&1
}

secret() { # reads SecretID from the CLI's default output on stdin
  awk '$1 == "SecretID:" { print $2 }'
}

install_token() { # file uid: moves file.new into place, readable by uid alone
  chown "$2:$2" "$1.new"
  chmod 0400 "$1.new"
  mv -f "$1.new" "$1"
}

# 1. Bootstrap (once per data dir).
mkdir -p "$BOOTSTRAP"
if ! works "$BOOTSTRAP/management.token"; then
  umask 077
  if ! consul acl bootstrap | secret > "$BOOTSTRAP/management.token.new" || [ ! -s "$BOOTSTRAP/management.token.new" ]; then
    echo "consul-init: ACL bootstrap failed and no working management token is stored; start from clean volumes: scripts/stack-up.sh down" >&2
    exit 1
  fi
  mv -f "$BOOTSTRAP/management.token.new" "$BOOTSTRAP/management.token"
  umask 022
  chmod 0444 "$BOOTSTRAP/management.token"  # read by the consul container's CLI (stack-up.sh)
  echo "consul-init: ACLs bootstrapped"
fi
export CONSUL_HTTP_TOKEN_FILE="$BOOTSTRAP/management.token"

ensure_token() { # file uid description create-args...
  file="$1" uid="$2" description="$3"
  shift 3
  mkdir -p "$(dirname "$file")"
  if works "$file"; then
    return 0
  fi
  consul acl token create -description="$description" "$@" | secret > "$file.new"
  [ -s "$file.new" ] || { echo "consul-init: creating the token for $description failed" >&2; exit 1; }
  install_token "$file" "$uid"
  echo "consul-init: token for $description created"
}

ensure_policy() { # name rules
  if ! consul acl policy read -name="$1" >/dev/null 2>&1; then
    consul acl policy create -name="$1" -rules="$2" >/dev/null
  else
    consul acl policy update -name="$1" -rules="$2" >/dev/null
  fi
}

# 2. The agent's token: it registers its node and syncs services with it.
ensure_token "$BOOTSTRAP/agent.token" 0 "consul agent (local stack)" -node-identity=consul:dc1
consul acl set-agent-token agent "$(cat "$BOOTSTRAP/agent.token")" >/dev/null

# 3. Per-process tokens.
ensure_policy plugworker-controller '
service "controller" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
key_prefix "plugworker/pipelines/" { policy = "read" }'
ensure_policy plugworker-prometheus '
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }'
ensure_policy plugworker-gallery-reader '
key_prefix "plugworker/galleries/" { policy = "read" }'
ensure_policy plugworker-gallery-operator '
key_prefix "plugworker/galleries/" { policy = "write" }'
ensure_token "$CONTROLLER_TOKEN" "$PLUGWORKER_UID" "plugworker controller (local stack)" -policy-name=plugworker-controller
ensure_token "$PROMETHEUS_TOKEN" "$PROMETHEUS_UID" "prometheus (local stack)" -policy-name=plugworker-prometheus
ensure_token "$GALLERY_OPERATOR_TOKEN" "$PLUGWORKER_UID" "plugworker gallery operators (local stack)" -policy-name=plugworker-gallery-operator
for runner in $runners; do
  case "$gallery_runners" in
    *" $runner "*)
      ensure_token "$RUNNER_TOKENS/$runner" "$PLUGWORKER_UID" "plugworker runner $runner (local stack)" -service-identity="$runner" \
        -policy-name=plugworker-gallery-reader ;;
    *)
      ensure_token "$RUNNER_TOKENS/$runner" "$PLUGWORKER_UID" "plugworker runner $runner (local stack)" -service-identity="$runner" ;;
  esac
done

# 4. Intentions: everything denied, then the controller may call each runner.
write_entry() { # HCL on stdin
  entry="$(mktemp)"
  cat > "$entry"
  consul config write "$entry" >/dev/null
  rm -f "$entry"
}
write_entry <<'HCL'
Kind = "service-intentions"
Name = "*"
Sources = [{ Name = "*", Action = "deny" }]
HCL
for runner in $runners; do
  write_entry <<HCL
Kind = "service-intentions"
Name = "$runner"
Sources = [{ Name = "controller", Action = "allow" }]
HCL
done
# A runner removed from compose loses its intention.
for name in $(consul config list -kind=service-intentions); do
  case " $(echo $runners) * " in
    *" $name "*) ;;
    *) consul config delete -kind=service-intentions -name="$name" >/dev/null
       echo "consul-init: removed the intention to $name (no longer a runner)" ;;
  esac
done
echo "consul-init: tokens and intentions ready for: controller, prometheus, gallery operators," $runners
