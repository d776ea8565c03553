#!/bin/bash
# plugworker-consul-mesh: makes Consul's ACL policies, tokens and intentions what the stack's
# SSM parameter MESH_PREFIX/mesh lists (terraform/modules/mesh). Idempotent; run every minute
# by a timer on each server of a cluster the stack created (only the leader writes), or by an
# operator against an existing cluster:
#   AWS_REGION=eu-west-1 MESH_PREFIX=/plugworker/consul MESH_ANY_NODE=1 \
#   CONSUL_HTTP_ADDR=https://127.0.0.1:8501 CONSUL_CACERT=ca.pem CONSUL_HTTP_TOKEN=<management> \
#   ./mesh.sh
# Tokens get the accessor and secret IDs terraform generated (the secret from its SSM
# parameter); a token whose secret changed there is replaced (rotation, docs/deploy-aws.md).
# Tokens and intentions this stack made that it no longer lists (a runner removed) are deleted.
set -euo pipefail
: "${AWS_REGION:?}" "${MESH_PREFIX:?}"
param() { aws ssm get-parameter --region "$AWS_REGION" --with-decryption --name "$1" --query Parameter.Value --output text; }
if [ -z "${CONSUL_HTTP_TOKEN:-}" ]; then
  CONSUL_HTTP_TOKEN="$(param "$MESH_PREFIX/tokens/management")"
  export CONSUL_HTTP_TOKEN
fi
if [ "${MESH_ANY_NODE:-0}" != 1 ] && ! consul info 2>/dev/null | grep -Eq '^[[:space:]]*leader = true'; then
  exit 0 # a follower: the leader applies
fi
mesh="$(param "$MESH_PREFIX/mesh")"
stack="$(jq -r .stack <<<"$mesh")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

policy() { # name, description, rules
  if consul acl policy read -name "$1" >/dev/null 2>&1; then
    consul acl policy update -name "$1" -description "$2" -rules "$3" >/dev/null
  else
    consul acl policy create -name "$1" -description "$2" -rules "$3" >/dev/null
  fi
}
# Client agents: register their own node (node names are per task, so a prefix), read
# services for their checks. Prometheus: read services and nodes (consul_sd_configs).
policy "$stack-agent" "plugworker $stack: client agents" \
  'node_prefix "" { policy = "write" }
service_prefix "" { policy = "read" }'
policy "$stack-prometheus" "plugworker $stack: Prometheus service discovery, read only" \
  'service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }'

# Tokens: runners and the controller get a service identity (write their own service
# name and its leaf certificate, read the catalog); agents and Prometheus a policy.
wanted=" "
while read -r token; do
  role="$(jq -r .role <<<"$token")"
  accessor="$(jq -r .accessor_id <<<"$token")"
  wanted+="$accessor "
  secret="$(param "$(jq -r .parameter <<<"$token")")"
  current="$(consul acl token read -accessor-id "$accessor" -format=json 2>/dev/null | jq -r .SecretID || true)"
  if [ "$current" = "$secret" ]; then
    continue
  fi
  if [ -n "$current" ]; then
    consul acl token delete -accessor-id "$accessor" >/dev/null
    echo "plugworker-consul-mesh: token $role: secret changed in SSM, replacing it"
  fi
  args=(-accessor "$accessor" -secret "$secret" -description "plugworker $stack $role")
  policy_name="$(jq -r .policy <<<"$token")"
  if [ -n "$policy_name" ]; then
    args+=(-policy-name "$stack-$policy_name")
  else
    args+=(-service-identity "$(jq -r .service <<<"$token")")
  fi
  consul acl token create "${args[@]}" >/dev/null
  echo "plugworker-consul-mesh: token $role created"
done < <(jq -c '.tokens[]' <<<"$mesh")
consul acl token list -format=json |
  jq -r --arg d "plugworker $stack " '.[] | select(.Description | startswith($d)) | .AccessorID' |
  while read -r accessor; do
    case "$wanted" in
      *" $accessor "*) ;;
      *) consul acl token delete -accessor-id "$accessor" >/dev/null && echo "plugworker-consul-mesh: stale token $accessor deleted" ;;
    esac
  done

# Intentions: default deny ("*" from "*"), the controller allowed to each runner. Each
# entry carries Meta plugworker-stack, so only this stack's entries are ever deleted.
names=" "
while read -r entry; do
  names+="$(jq -r .Name <<<"$entry") "
  jq --arg s "$stack" '. + {Meta: {"plugworker-stack": $s}}' <<<"$entry" > "$tmp/entry.json"
  consul config write "$tmp/entry.json" >/dev/null
done < <(jq -c '.intentions[]' <<<"$mesh")
consul config list -kind service-intentions | while read -r name; do
  case "$names" in *" $name "*) continue ;; esac
  owner="$(consul config read -kind service-intentions -name "$name" | jq -r '.Meta["plugworker-stack"] // ""')"
  if [ "$owner" = "$stack" ]; then
    consul config delete -kind service-intentions -name "$name" >/dev/null
    echo "plugworker-consul-mesh: intentions of $name deleted (no longer a runner of $stack)"
  fi
done
