#!/bin/sh
# The admin API's tokens file for meshd --tokens: one editor token for every namespace,
# generated once (kept in the mesh-run volume across restarts).
set -eu
umask 077
if [ ! -s /run/mesh/admin.token ]; then
    python -c 'import secrets; print(secrets.token_urlsafe(32))' >/run/mesh/admin.token
fi
token=$(cat /run/mesh/admin.token)
printf 'tokens:\n  - token: "%s"\n    role: editor\n    namespaces: ["*"]\n' "$token" \
    >/run/mesh/tokens.yaml
# meshd and setup run as the image's user.
chown -R 10001:10001 /run/mesh
chmod 0755 /run/mesh
