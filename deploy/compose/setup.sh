#!/bin/sh
# Once meshd is up: fetch the mesh CA's bundle, apply the demo's registry entries, and write
# a bootstrap (with its own join token) for each Envoy into /run/mesh.
set -eu
MESHCTL_TOKEN=$(cat /run/mesh/admin.token)
MESHCTL_ADMIN=meshd:18001
MESHCTL_CA=/run/mesh/ca.pem
export MESHCTL_TOKEN MESHCTL_ADMIN MESHCTL_CA
# The first meshd created the mesh CA in etcd; its bundle is public.
meshctl ca get --etcd etcd-1:2379,etcd-2:2379,etcd-3:2379 >"$MESHCTL_CA.tmp"
mv "$MESHCTL_CA.tmp" "$MESHCTL_CA"
sh /etc/mesh-scripts/mesh-apply.sh /deploy/demo.yaml
umask 022  # Envoy runs as its own user
NODE_ID=gateway-1 NODE_CLUSTER=gateway IDENTITY=gateway:gateway XDS=meshd:18000 \
    OUT=/run/mesh/gateway.yaml sh /etc/mesh-scripts/envoy-bootstrap.sh
NODE_ID=api-1 NODE_CLUSTER=api.shop IDENTITY=shop/api XDS=meshd:18000 \
    OUT=/run/mesh/sidecar-api.yaml sh /etc/mesh-scripts/envoy-bootstrap.sh
