#!/bin/sh
# One-shot (service consul-certs, consul image, before the agent starts): the local stack's
# Consul TLS material, made once and kept in volumes.
#   /consul/tls (volume consul-tls, mounted only here and in the agent): CA key, server
#     certificate and key;
#   /consul/ca (volume consul-ca, mounted read-only by every Consul client): the CA
#     certificate alone, which clients verify the agent with.
# The server certificate names `consul` (the compose service), `localhost` and 127.0.0.1.
set -eu
cd /consul/tls
if [ ! -f consul-agent-ca.pem ]; then
  consul tls ca create -days=3650
fi
if [ ! -f dc1-server-consul-0.pem ]; then
  consul tls cert create -server -dc=dc1 -days=825 -additional-dnsname=consul
fi
# The agent runs as the image's `consul` user; keys readable by it alone.
chown consul:consul ./*.pem
chmod 0600 ./*-key.pem
cp consul-agent-ca.pem /consul/ca/consul-agent-ca.pem
chmod 0644 /consul/ca/consul-agent-ca.pem
echo "consul-certs: CA and server certificate in place"
