#!/usr/bin/env bash
# Forwards Grafana (3000) or Consul's HTTPS API (8501, a server's loopback) of the AWS deployment to
# 127.0.0.1 through SSM Session Manager: nothing in terraform/ is reachable from outside
# the VPC. Run from terraform/'s folder after `terraform apply` (it reads the outputs).
# Needs the AWS CLI and its Session Manager plugin.
#   scripts/aws-port-forward.sh grafana   # then http://127.0.0.1:3000
#   scripts/aws-port-forward.sh consul    # then, with CONSUL_CACERT and a token (docs/deploy-aws.md):
#                                         # CONSUL_HTTP_ADDR=https://127.0.0.1:8501 consul catalog services -tags
set -euo pipefail
what="${1:-}"
tf_dir="${TF_DIR:-$(pwd)}"
output() { terraform -chdir="$tf_dir" output -raw "$1"; }
region="$(output region)"
cluster="$(output ecs_cluster)"

case "$what" in
  grafana)
    # ECS Exec target of the observability task's grafana container.
    task="$(aws ecs list-tasks --region "$region" --cluster "$cluster" --service-name observability \
      --desired-status RUNNING --query 'taskArns[0]' --output text)"
    [ "$task" != None ] || { echo "aws-port-forward: no running observability task in $cluster" >&2; exit 1; }
    runtime="$(aws ecs describe-tasks --region "$region" --cluster "$cluster" --tasks "$task" \
      --query "tasks[0].containers[?name=='grafana'].runtimeId | [0]" --output text)"
    target="ecs:${cluster}_${task##*/}_${runtime}"
    port=3000
    ;;
  consul)
    # Any running Consul server (they carry the auto-join tag the stack gave them).
    tag="$(output consul_http_address | sed -n 's/^any instance tagged \([^=]*\)=\([^,]*\),.*/\1 \2/p')"
    [ -n "$tag" ] || { echo "aws-port-forward: Consul is an existing cluster here: $(output consul_http_address)" >&2; exit 1; }
    read -r key value <<<"$tag"
    target="$(aws ec2 describe-instances --region "$region" \
      --filters "Name=tag:$key,Values=$value" Name=instance-state-name,Values=running \
      --query 'Reservations[0].Instances[0].InstanceId' --output text)"
    [ "$target" != None ] || { echo "aws-port-forward: no running Consul server tagged $key=$value" >&2; exit 1; }
    port=8501 # HTTPS only: the servers serve no plain HTTP
    ;;
  *)
    echo "usage: $0 grafana|consul" >&2
    exit 2
    ;;
esac

scheme=http; [ "$what" = consul ] && scheme=https
echo "aws-port-forward: $what on $scheme://127.0.0.1:$port (Ctrl-C to stop)"
exec aws ssm start-session --region "$region" --target "$target" \
  --document-name AWS-StartPortForwardingSession \
  --parameters "portNumber=$port,localPortNumber=$port"
