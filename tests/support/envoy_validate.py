"""``envoy --mode validate`` on translated config: the translator's resources embedded in a
bootstrap as static resources (EDS clusters made STATIC with their ClusterLoadAssignment
inlined, each HTTP connection manager's RouteConfiguration inlined instead of RDS)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from integration.harness import envoy_binary
from tests.support.golden import messages, unpack
from tests.support.mtls_certs import validation_secrets
from xds_server.model.secret import SECRET_SDS_PREFIX
from xds_server.resources.types import CLUSTER, LISTENER, ROUTE, SECRET
from xds_server.translate import Translator

HCM = "envoy.filters.network.http_connection_manager"
ENVOY: str | None = envoy_binary()  # ENVOY_BIN, the venv's bundled binary, or PATH


def static_bootstrap(
    translator: Translator, node_cluster: str | None = None
) -> bootstrap_pb2.Bootstrap:
    """A bootstrap whose static resources are the translator's resources, EDS/RDS inlined:
    all of them, or what a proxy of ``node_cluster`` gets (its scope: its listeners, the
    route configurations it asks for by their name, the clusters it gets by wildcard).
    Envoy checks that every cluster an inlined route configuration names is there."""
    served = translator.served
    rule = translator.scopes(node_cluster) if node_cluster is not None else None
    clas: dict[str, endpoint_pb2.ClusterLoadAssignment] = {
        m.cluster_name: m for m in messages(translator, "endpoints")
    }
    # (by index key: a sidecar's variant of a listener's routes has the listener's name)
    routes: dict[str, Any] = {key: unpack(res) for key, res in served[ROUTE].items()}

    def held(type_url: str, msgs: list[Any]) -> list[Any]:
        if rule is None:
            return msgs
        return [m for m in msgs if rule.covers(type_url, m.name)]

    def route_key(name: str) -> str:
        return rule.alias(ROUTE, name) if rule is not None else name

    boot = bootstrap_pb2.Bootstrap()
    for msg in held(CLUSTER, messages(translator, "clusters")):
        cluster = cluster_pb2.Cluster()
        cluster.CopyFrom(msg)
        if cluster.type == cluster_pb2.Cluster.STATIC:  # (a sidecar's local application)
            boot.static_resources.clusters.append(cluster)
            continue
        assert cluster.type == cluster_pb2.Cluster.EDS, cluster.name
        cluster.ClearField("eds_cluster_config")
        cluster.type = cluster_pb2.Cluster.STATIC
        cluster.load_assignment.CopyFrom(clas[cluster.name])
        boot.static_resources.clusters.append(cluster)
    for msg in held(LISTENER, messages(translator, "listeners")):
        listener = listener_pb2.Listener()
        listener.CopyFrom(msg)
        if listener.HasField("api_listener"):
            continue  # for proxyless gRPC clients only; Envoy never subscribes to these
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.name != HCM:
                    continue
                hcm = hcm_pb2.HttpConnectionManager()
                assert f.typed_config.Unpack(hcm)
                if hcm.HasField("route_config"):  # (a sidecar inbound listener's own)
                    continue
                assert hcm.rds.route_config_name == listener.name
                hcm.ClearField("rds")
                hcm.route_config.CopyFrom(routes[route_key(listener.name)])
                f.typed_config.Pack(hcm)
        boot.static_resources.listeners.append(listener)
    _static_secrets(boot, _registry_secrets(translator))
    return boot


def _registry_secrets(translator: Translator) -> list[secret_pb2.Secret]:
    """The SDS Secrets of registry secrets (``secret:<ns>/<name>``) the translator serves:
    the certificates and client CAs of listeners' ``tls``, checked by Envoy as given."""
    out = []
    for name, resource in sorted(translator.served[SECRET].items()):
        if name.startswith(SECRET_SDS_PREFIX):
            secret = secret_pb2.Secret()
            assert resource.any.Unpack(secret), name
            out.append(secret)
    return out


def _static_secrets(
    boot: bootstrap_pb2.Bootstrap, registry: list[secret_pb2.Secret] | None = None
) -> None:
    """Serve the SDS secrets the TLS contexts name as static secrets of the bootstrap: the
    mesh's (``default``, ``ROOTCA``) and ``registry`` (listeners' certificates and client
    CAs): ``envoy --mode validate`` crashes initializing SDS over ADS (it has no ADS
    stream), and a static secret of the same name checks the same shape."""
    sockets = [c.transport_socket for c in boot.static_resources.clusters]
    sockets += [
        ch.transport_socket for ls in boot.static_resources.listeners for ch in ls.filter_chains
    ]
    used = False
    for socket in sockets:
        if not socket.name:
            continue
        context: tls_pb2.UpstreamTlsContext | tls_pb2.DownstreamTlsContext
        context = tls_pb2.DownstreamTlsContext()
        if not socket.typed_config.Unpack(context):
            context = tls_pb2.UpstreamTlsContext()
            assert socket.typed_config.Unpack(context)
        common = context.common_tls_context
        for sds in common.tls_certificate_sds_secret_configs:
            sds.ClearField("sds_config")
        # Only the validation context that is there: touching a field of the other would
        # set it (a listener's tls without client_ca has none at all).
        if common.HasField("validation_context_sds_secret_config"):  # (a listener's client CA)
            common.validation_context_sds_secret_config.ClearField("sds_config")
        elif common.HasField("combined_validation_context"):  # (mesh mTLS)
            common.combined_validation_context.validation_context_sds_secret_config.ClearField(
                "sds_config"
            )
        socket.typed_config.Pack(context)
        used = True
    if used:
        boot.static_resources.secrets.extend(validation_secrets())
        boot.static_resources.secrets.extend(registry or ())


def envoy_validate(configs: dict[str, Path]) -> dict[str, tuple[int, str]]:
    """Run ``envoy --mode validate`` on several files at once: name -> (exit code, output)."""
    assert ENVOY is not None, "no envoy binary found"
    procs = {
        name: subprocess.Popen(
            [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "error"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, path in configs.items()
    }
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate(timeout=60)
        out[name] = (proc.returncode, text)
    return out
