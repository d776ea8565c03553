# The local stack's Consul agent (infra/docker-compose.yml): one server, ACLs with default
# deny, Connect (the built-in CA) for the runners' and controller's mTLS, and the HTTP API
# on the compose network only over TLS. Local only; docs/deploy-local.md explains each
# choice and what the AWS deployment does instead.
datacenter = "dc1"
node_name  = "consul"
server     = true
bootstrap_expect = 1
data_dir   = "/consul/data"
ui_config { enabled = true }

# Gossip and server RPC stay on the container's loopback (`-bind=127.0.0.1` in compose):
# with a single agent there is no peer, and nothing on the network can join or talk RPC,
# so there is no gossip key or RPC TLS to manage here.
client_addr = "0.0.0.0"
addresses {
  # Plain HTTP only inside the container (health check, scripts/stack-up.sh via
  # `docker compose exec`); everyone else uses HTTPS.
  http  = "127.0.0.1"
  https = "0.0.0.0"
}
ports {
  http     = 8500
  https    = 8501
  # No Envoy, no peering, no DNS: nothing else listens.
  grpc     = -1
  grpc_tls = -1
  dns      = -1
}

# Certificates made by infra/consul/certs.sh (the consul-certs service) with
# `consul tls ca create` / `consul tls cert create -server`. Clients verify the agent with
# the CA; they present no certificate to it (their identity is their ACL token).
tls {
  defaults {
    ca_file         = "/consul/tls/consul-agent-ca.pem"
    cert_file       = "/consul/tls/dc1-server-consul-0.pem"
    key_file        = "/consul/tls/dc1-server-consul-0-key.pem"
    verify_incoming = false
  }
}

acl {
  enabled                  = true
  default_policy           = "deny"
  down_policy              = "extend-cache"
  # The agent token infra/consul/init.sh sets survives restarts.
  enable_token_persistence = true
}

connect {
  enabled = true
}
