#!/bin/sh
# `meshctl apply -f FILE`, retried while meshd's admin API is not up yet (meshctl exit 2),
# up to ATTEMPTS times. meshctl reads MESHCTL_ADMIN, MESHCTL_CA and MESHCTL_TOKEN.
set -eu
file=${1:?usage: mesh-apply.sh FILE}
attempt=1
while :; do
    status=0
    meshctl apply -f "$file" || status=$?
    if [ "$status" -eq 0 ]; then
        exit 0
    fi
    if [ "$status" -ne 2 ] || [ "$attempt" -ge "${ATTEMPTS:-90}" ]; then
        echo "mesh-apply: meshctl apply -f $file failed (exit $status)" >&2
        exit 1
    fi
    echo "mesh-apply: meshd's admin API at ${MESHCTL_ADMIN:-?} not reachable yet, retrying" >&2
    attempt=$((attempt + 1))
    sleep "${RETRY_SECONDS:-2}"
done
