#!/bin/sh
# Build helm (v4, pinned) from the Go module proxy into .tools/bin/helm, once.
#
#   deploy/install-helm.sh            # or: make helm
#
# The deployment tests (tests/e2e/test_deploy_*.py) run `helm lint` and `helm template` with
# it, and call this script themselves when the binary is missing. The build is reproducible:
# one pinned module version whose go.sum hashes the checksum database verifies, no cgo,
# paths trimmed. It uses Go's usual module and build caches, so a second build on the same
# machine takes seconds; a first one downloads and compiles a few hundred modules.
set -eu

HELM_MODULE=helm.sh/helm/v4
HELM_VERSION=${HELM_VERSION:-v4.3.2}

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.tools/bin"
stamp="$bin/helm.version"

if [ -x "$bin/helm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$HELM_VERSION" ]; then
    exit 0
fi

GO=${GO:-$(command -v go || true)}
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then
    GO=/usr/local/go/bin/go
fi
if [ -z "$GO" ]; then
    echo "install-helm: no Go toolchain (go on PATH or /usr/local/go/bin/go); set GO=/path/to/go" >&2
    exit 1
fi

mkdir -p "$bin"
echo "install-helm: building $HELM_MODULE $HELM_VERSION with $("$GO" version)" >&2
# GOTOOLCHAIN=local: build with this Go, never fetch another toolchain.
GOBIN="$bin" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    "$GO" install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "$HELM_MODULE/cmd/helm@$HELM_VERSION"
echo "$HELM_VERSION" >"$stamp"
"$bin/helm" version >&2
