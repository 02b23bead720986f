#!/bin/sh
# Write an Envoy bootstrap that joins the mesh, as an operator would by hand:
#
#   meshctl token create IDENTITY --ttl TTL                  (a join token for this proxy)
#   meshctl bootstrap --node-id ID --node-cluster CLUSTER --xds HOST:PORT \
#       --token TOKEN --ca CA.pem [--delta] > OUT
#
# Environment: NODE_ID, NODE_CLUSTER, IDENTITY (`ns/name` for a sidecar, `gateway:CLUSTER`
# for a gateway), XDS (meshd's HOST:PORT, a name in its certificate), ENVOY_ADMIN_PORT,
# TOKEN_TTL, OUT, DELTA (non-empty: Delta ADS); and meshctl's own MESHCTL_ADMIN, MESHCTL_CA
# and MESHCTL_TOKEN (an admin editor token that may issue join tokens for IDENTITY).
# Retries while meshd's admin API is not up yet (meshctl exit 2), up to ATTEMPTS times.
set -eu
: "${NODE_ID:?}" "${NODE_CLUSTER:?}" "${IDENTITY:?}" "${XDS:?}" "${OUT:?}" "${MESHCTL_CA:?}"
attempt=1
while :; do
    status=0
    token=$(meshctl token create "$IDENTITY" --ttl "${TOKEN_TTL:-8760h}") || status=$?
    if [ "$status" -eq 0 ]; then
        break
    fi
    if [ "$status" -ne 2 ] || [ "$attempt" -ge "${ATTEMPTS:-90}" ]; then
        echo "envoy-bootstrap: meshctl token create $IDENTITY failed (exit $status)" >&2
        exit 1
    fi
    echo "envoy-bootstrap: meshd's admin API at ${MESHCTL_ADMIN:-?} not reachable yet, retrying" >&2
    attempt=$((attempt + 1))
    sleep "${RETRY_SECONDS:-2}"
done
meshctl bootstrap --node-id "$NODE_ID" --node-cluster "$NODE_CLUSTER" --xds "$XDS" \
    --admin-port "${ENVOY_ADMIN_PORT:-9901}" --token "$token" --ca "$MESHCTL_CA" \
    ${DELTA:+--delta} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "envoy-bootstrap: wrote $OUT for node $NODE_ID ($NODE_CLUSTER, identity $IDENTITY)" >&2
