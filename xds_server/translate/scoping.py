"""The mesh's scope rule: which resources a node gets when it subscribes by wildcard.

A node whose ``cluster`` matches a listener's ``nodes`` gets that listener, its route
configuration (HTTP) and the clusters (with endpoints) it needs. The cache applies this
rule without knowing what a listener is: translation builds it from the listeners in
force whenever they change (:attr:`~xds_server.translate.translator.Delta.scopes`).
"""

from __future__ import annotations

from collections.abc import Mapping

from xds_server.model import Listener
from xds_server.model.names import cluster_name
from xds_server.model.secret import secret_sds_name
from xds_server.resources.scope import ScopeRule, Selection
from xds_server.resources.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

_ALL_CLUSTERS = frozenset({CLUSTER, ENDPOINT})
_NONE: frozenset[str] = frozenset()


def mesh_scopes(
    listeners: Mapping[str, Listener], sidecars: Mapping[str, str] | None = None
) -> ScopeRule:
    """The scope rule of the listeners in force (a snapshot: later changes to
    ``listeners`` come with a new rule). ``sidecars``: node cluster ``<name>.<ns>`` -> the
    name of that service's inbound Listener, local Cluster and (HTTP) RouteConfiguration,
    which only its own sidecars get."""
    held = tuple(listeners.values())
    inbound = dict(sidecars or {})

    def select(node_cluster: str) -> Selection:
        mine = [lst for lst in held if lst.serves(node_cluster)]
        http = frozenset(lst.name for lst in mine if lst.protocol == "http")
        tcp = frozenset(cluster_name(lst.service) for lst in mine if lst.service is not None)
        secrets = frozenset(
            secret_sds_name(*ref.split("/", 1))
            for lst in mine
            if lst.tls is not None
            for ref in lst.tls.secret_refs()
        )
        own = inbound.get(node_cluster)
        local = frozenset({own}) if own else _NONE
        return Selection(
            {
                LISTENER: frozenset(lst.name for lst in mine) | local,
                ROUTE: http | local,
                CLUSTER: tcp | local,
                ENDPOINT: tcp,
                # The registry secrets its listeners use: the only ones it may fetch.
                SECRET: secrets,
            },
            # Every HTTP listener routes every service's default host, so it needs every
            # cluster; a TCP listener needs only its service's.
            every=_ALL_CLUSTERS if http else _NONE,
        )

    return select
