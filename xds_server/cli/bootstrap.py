"""Envoy bootstrap generator: the one static file an Envoy needs to join the mesh over ADS.

:func:`bootstrap` is pure (no I/O): it returns a plain dict that serializes to YAML or JSON
with :func:`render`. The result is a complete Envoy v3 bootstrap for a sidecar or gateway:
node identity, an admin listener, one static cluster (``xds_cluster``) pointing at meshd,
and ``dynamic_resources`` that take Clusters and Listeners (and through them endpoints and
routes) from the ADS stream, state-of-the-world (``GRPC``) or incremental (``DELTA_GRPC``).

Field paths checked against the real Envoy 1.40 binary (``envoy --mode validate``):

- ADS reconnect back-off:
  ``dynamic_resources.ads_config.grpc_services[0].envoy_grpc.retry_policy.retry_back_off``
  (``base_interval``, ``max_interval``). Envoy reads it only from the first grpc_service and
  only for ``envoy_grpc``; without it the xDS stream backs off from 500 ms up to 30 s.
- Receive size: ``dynamic_resources.ads_config.grpc_services[0].envoy_grpc
  .max_receive_message_length``. Envoy's own gRPC client treats an unset value as "no limit"
  (a 9 MB CDS response is accepted without it); we still pin an explicit, generous cap so the
  limit is visible in the config and a runaway control plane cannot exhaust memory.
- Health checks handed out by meshd (HDS): top-level ``hds_config`` (an ApiConfigSource,
  ``GRPC`` over ``xds_cluster``). Load reports (LRS):
  ``cluster_manager.load_stats_config`` (same shape). meshd sets both periods in its
  responses (``--report-interval-ms``), so nothing here depends on them.
- Zone: ``node.locality.zone``; meshd prefers probing an endpoint from its own zone.
- Join token (``token``): ``initial_metadata`` on each ``grpc_service`` (ADS, HDS, LRS), so
  every stream opens with ``authorization: Bearer <token>``.
- meshd over TLS (``ca_pem``): an ``UpstreamTlsContext`` transport socket on
  ``xds_cluster`` that trusts only the given bundle and, since Envoy checks no name unless
  told to, matches meshd's certificate against the dialled host (a DNS or IP SAN).
- Several meshd replicas (``xds_addresses``): one endpoint each in ``xds_cluster``
  (``STATIC`` when every address is an IP, else ``STRICT_DNS``, which resolves IPs too);
  ADS, HDS and LRS each open their stream on one of them (round robin) and, when it
  dies, on another at the next retry; a TLS SAN matcher per host.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any, Literal

from xds_server.resources.types import XDS_CLUSTER

__all__ = [
    "ADS_RETRY_BASE_INTERVAL",
    "ADS_RETRY_MAX_INTERVAL",
    "MAX_RECEIVE_MESSAGE_BYTES",
    "XDS_CLUSTER",
    "bootstrap",
    "render",
    "stats_config",
]

#: Reconnect back-off of the ADS stream (Envoy's default starts at 0.5 s and grows to 30 s,
#: so a restarted control plane could wait that long for its proxies to come back).
ADS_RETRY_BASE_INTERVAL = "0.1s"
ADS_RETRY_MAX_INTERVAL = "0.5s"
#: Cap on one xDS message received by Envoy: a full SotW config for thousands of services is
#: far above gRPC's usual 4 MiB default, so leave plenty of head-room.
MAX_RECEIVE_MESSAGE_BYTES = 256 * 1024 * 1024

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def bootstrap(
    node_id: str,
    node_cluster: str,
    xds_host: str = "127.0.0.1",
    xds_port: int = 18000,
    admin_port: int = 9901,
    delta: bool = False,
    admin_host: str = "127.0.0.1",
    *,
    max_receive_message_bytes: int | None = MAX_RECEIVE_MESSAGE_BYTES,
    zone: str = "",
    token: str | None = None,
    ca_pem: str | None = None,
    xds_addresses: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """Return a complete Envoy v3 bootstrap (a JSON/YAML-serializable dict) for ADS.

    ``node_cluster`` is the Envoy node's ``cluster``, which meshd matches against a
    Listener's ``nodes`` to scope the config. ``delta`` selects the incremental protocol
    (``DELTA_GRPC``) instead of state-of-the-world (``GRPC``). ``admin_port`` 0 lets the
    kernel pick the admin port (read it back with ``--admin-address-path``).
    ``max_receive_message_bytes=None`` leaves Envoy's receive limit unset (unlimited).
    ``zone`` is the proxy's ``node.locality.zone`` (health checks prefer the same zone).
    ``token``: a join token sent on every xDS stream; ``ca_pem``: dial meshd over TLS,
    trusting this bundle (PEM) only. ``xds_addresses``: every meshd replica's xDS address
    (``xds_host``/``xds_port`` are then not used): a proxy whose meshd dies reconnects to
    another, which sends it nothing it already holds (versions are content hashes).

    Raises ``ValueError`` for an empty node id/cluster or a port out of range.
    """
    addresses = list(xds_addresses) or [(xds_host, xds_port)]
    if not node_id:
        raise ValueError("node_id must not be empty")
    if not node_cluster:
        raise ValueError("node_cluster must not be empty")
    for host, port in addresses:
        if not host:
            raise ValueError("an xDS address has no host")
        if not 0 < port < 65536:
            raise ValueError(f"xds_port out of range: {port}")
    if len(set(addresses)) != len(addresses):
        raise ValueError("an xDS address is listed twice")
    if not 0 <= admin_port < 65536:
        raise ValueError(f"admin_port out of range: {admin_port}")
    if max_receive_message_bytes is not None and max_receive_message_bytes <= 0:
        raise ValueError("max_receive_message_bytes must be positive (or None for unlimited)")
    if token is not None and (not token or any(c.isspace() for c in token)):
        raise ValueError("token must be one word (a join token)")
    if ca_pem is not None and "-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise ValueError("ca_pem holds no PEM certificate")
    metadata = [{"key": "authorization", "value": f"Bearer {token}"}] if token else []

    envoy_grpc: dict[str, Any] = {
        "cluster_name": XDS_CLUSTER,
        "retry_policy": {
            "retry_back_off": {
                "base_interval": ADS_RETRY_BASE_INTERVAL,
                "max_interval": ADS_RETRY_MAX_INTERVAL,
            }
        },
    }
    if max_receive_message_bytes is not None:
        envoy_grpc["max_receive_message_length"] = max_receive_message_bytes

    node: dict[str, Any] = {"id": node_id, "cluster": node_cluster}
    if admin_port:
        # meshd lists connected proxies' admin addresses for Prometheus (/sd/envoy); an
        # admin port the kernel picks (0) is not known here, so such a proxy is not listed.
        node["metadata"] = {"admin_port": admin_port, "admin_host": admin_host}
    if zone:
        node["locality"] = {"zone": zone}
    xds_cluster = _xds_cluster(addresses)
    if ca_pem is not None:
        xds_cluster["transport_socket"] = _tls_to_meshd([h for h, _ in addresses], ca_pem)
    ads_service: dict[str, Any] = {"envoy_grpc": envoy_grpc}
    if metadata:
        ads_service["initial_metadata"] = metadata
    return {
        "node": node,
        "admin": {"address": _socket_address(admin_host, admin_port)},
        "stats_config": stats_config(),
        "static_resources": {"clusters": [xds_cluster]},
        # Load reports for the live topology (LRS) and health checks meshd hands out (HDS),
        # both to meshd on the xDS connection's cluster.
        "cluster_manager": {"load_stats_config": _grpc_api(metadata)},
        "hds_config": _grpc_api(metadata),
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                # The node identity is large-ish and constant: send it once per stream.
                "set_node_on_first_message_only": True,
                "grpc_services": [ads_service],
            },
            # initial_fetch_timeout deliberately left at Envoy's default (15 s).
            "cds_config": _ads_source(),
            "lds_config": _ads_source(),
        },
    }


# A mesh cluster is ``<name>.<ns>`` or ``<name>.<ns>|<subset>``, each part a DNS label.
_LABEL = "[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_MESH_CLUSTER = rf"{_LABEL}\.{_LABEL}(?:\|{_LABEL})?"


def stats_config() -> dict[str, Any]:
    """Stats tags that let dashboards slice Envoy's stats by service, subset, route, listener.

    Envoy's default ``envoy.cluster_name`` tag stops at the first dot, which would cut
    ``web.default|v1`` to ``web``; ours takes a whole mesh cluster name (and, for other
    clusters such as ``xds_cluster``, the first segment as Envoy does). ``mesh_service``
    (``web.default``) and ``mesh_subset`` (``v1``, absent for a service's own cluster) are
    extracted from the same name. ``mesh_route`` is the route's ``ns/name`` in per-route
    stats (``vhost.<host>.route.<ns/name>.*``); listeners are the HTTP connection
    manager's ``stat_prefix`` (Envoy's default ``envoy_http_conn_manager_prefix`` tag).
    Tag regexes are ECMAScript (Envoy's std::regex): group 1 is removed from the stat
    name, group 2 is the value. Non-mesh static clusters must not look like mesh ones
    (an underscore, as in ``xds_cluster``, is never in a DNS label).

    Envoy 1.40 applies its default ``envoy.cluster_name`` even when a custom tag has that
    name (checked against the binary), so the defaults are switched off and the ones we
    want listed by name (a name alone selects Envoy's default regex).
    """
    return {
        "use_all_default_tags": False,
        "stats_tags": [
            {
                "tag_name": "envoy.cluster_name",
                "regex": rf"^cluster\.(({_MESH_CLUSTER}|[^.]+)\.)",
            },
            {
                "tag_name": "mesh_service",
                "regex": rf"^cluster\.(({_LABEL}\.{_LABEL})(?:\|{_LABEL})?\.)",
            },
            {
                "tag_name": "mesh_subset",
                "regex": rf"^cluster\.{_LABEL}\.{_LABEL}(\|({_LABEL}))\.",
            },
            {
                "tag_name": "mesh_route",
                "regex": r"^vhost\.[^.]+\.route\.(([^.]+)\.)",
            },
            *({"tag_name": name} for name in _ENVOY_DEFAULT_TAGS),
        ],
    }


#: Envoy's default tags kept (all but ``envoy.cluster_name``, replaced above); each name
#: was checked to have a default regex in Envoy 1.40 (``envoy --mode validate``).
_ENVOY_DEFAULT_TAGS = (
    "envoy.response_code_class",
    "envoy.response_code",
    "envoy.http_conn_manager_prefix",
    "envoy.listener_address",
    "envoy.virtual_host",
    "envoy.virtual_cluster",
    "envoy.http_user_agent",
    "envoy.tcp_prefix",
    "envoy.worker_id",
    "envoy.ratelimit_prefix",
    "envoy.local_http_ratelimit_prefix",
    "envoy.local_network_ratelimit_prefix",
    "envoy.fault_downstream_cluster",
    "envoy.grpc_bridge_method",
    "envoy.grpc_bridge_service",
    "envoy.rds_route_config",
    "envoy.scoped_rds_config",
    "envoy.connection_limit_prefix",
    "envoy.proxy_protocol_prefix",
    "envoy.rbac_prefix",
    "envoy.rbac_http_prefix",
    "envoy.rbac_policy_name",
    "envoy.tls_certificate",
    "envoy.ssl_cipher",
    "envoy.ssl_curve",
    "envoy.ssl_sigalg",
    "envoy.ssl_version",
)


def render(d: dict[str, Any], fmt: Literal["yaml", "json"] = "yaml") -> str:
    """Serialize a bootstrap dict as YAML or JSON text, keys in insertion order."""
    if fmt == "yaml":
        # (imported here: meshd imports this module at start for its constants, and
        # importing PyYAML would slow a cold start that never renders a bootstrap)
        import yaml

        class NoAliasDumper(yaml.SafeDumper):
            """Never writes ``&id001`` anchors for objects used twice."""

            def ignore_aliases(self, data: Any) -> bool:
                return True

        return yaml.dump(d, Dumper=NoAliasDumper, sort_keys=False, default_flow_style=False)
    if fmt == "json":
        return json.dumps(d, indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}: expected 'yaml' or 'json'")


def _grpc_api(metadata: list[dict[str, str]]) -> dict[str, Any]:
    service: dict[str, Any] = {"envoy_grpc": {"cluster_name": XDS_CLUSTER}}
    if metadata:
        service["initial_metadata"] = metadata
    return {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [service]}


_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _is_ip(host: str) -> bool:
    """Whether ``host`` is a literal IP address (else a DNS name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _tls_to_meshd(hosts: Sequence[str], ca_pem: str) -> dict[str, Any]:
    # Any replica's name or IP is accepted from any of them: they share the mesh CA.
    matchers = [
        {"san_type": "IP_ADDRESS" if _is_ip(h) else "DNS", "matcher": {"exact": h}}
        for h in dict.fromkeys(hosts)
    ]
    context: dict[str, Any] = {
        "@type": f"type.googleapis.com/{_TLS}",
        "common_tls_context": {
            # meshd speaks gRPC: HTTP/2 negotiated by ALPN, as gRPC servers require.
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": {"inline_string": ca_pem},
                "match_typed_subject_alt_names": matchers,
            },
        },
    }
    names = [h for h in hosts if not _is_ip(h)]
    if names:
        context["sni"] = names[0]  # (one per cluster; meshd serves one certificate anyway)
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _ads_source() -> dict[str, Any]:
    return {"ads": {}, "resource_api_version": "V3"}


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _xds_cluster(addresses: Sequence[tuple[str, int]]) -> dict[str, Any]:
    # A literal IP needs no resolver; a name (e.g. a Kubernetes service) must be resolved:
    # STRICT_DNS makes a host of each address a name resolves to (a headless Service lists
    # every replica), and takes literal IPs beside names.
    discovery = "STATIC" if all(_is_ip(h) for h, _ in addresses) else "STRICT_DNS"
    return {
        "name": XDS_CLUSTER,
        "type": discovery,
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # HTTP/2 PINGs notice a silently dead control-plane connection
                        # (half-open TCP) so Envoy reconnects instead of waiting forever.
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(host, port)}}
                        for host, port in addresses
                    ]
                }
            ],
        },
    }
