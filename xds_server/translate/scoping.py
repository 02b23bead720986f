"""The mesh's scope rule: which resources a node gets when it subscribes by wildcard.

A node whose ``cluster`` matches a listener's ``nodes`` gets that listener, its route
configuration (HTTP) and the clusters (with endpoints) it needs. The cache applies this
rule without knowing what a listener is: translation builds it from the listeners in
force whenever they change (:attr:`~xds_server.translate.translator.Delta.scopes`).

An HTTP listener routes every service's default host, so a node served one gets every
cluster and endpoint, but no other service's sidecar resources (``inbound|...``: private
names, ``resources/scope.py``), which only that service's own sidecars get. A sidecar of
a service that declares its ``upstreams`` (:mod:`~xds_server.translate.upstreams`) gets,
instead, its variant of each HTTP listener's route configuration and the clusters those
variants and its other listeners name: its upstreams' and its listeners' routes'.
"""

from __future__ import annotations

from collections.abc import Mapping

from xds_server.model import Listener
from xds_server.model.names import cluster_name
from xds_server.model.secret import secret_sds_name
from xds_server.resources.scope import ScopeRule, Selection, variant_key
from xds_server.resources.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from xds_server.translate.upstreams import scoped_clusters

_ALL_CLUSTERS = frozenset({CLUSTER, ENDPOINT})
_NONE: frozenset[str] = frozenset()


def mesh_scopes(
    listeners: Mapping[str, Listener],
    sidecars: Mapping[str, str] | None = None,
    scoped: Mapping[str, str] | None = None,
    variant_refs: Mapping[str, frozenset[str]] | None = None,
) -> ScopeRule:
    """The scope rule of the listeners in force (a snapshot: later changes to
    ``listeners`` come with a new rule). ``sidecars``: node cluster ``<name>.<ns>`` -> the
    name of that service's inbound Listener, local Cluster and (HTTP) RouteConfiguration,
    which only its own sidecars get. ``scoped``: node cluster -> the variant id of the
    ``upstreams`` its service declares; ``variant_refs``: variant key -> the clusters that
    route configuration variant names."""
    held = tuple(listeners.values())
    inbound = dict(sidecars or {})
    variants = dict(scoped or {})
    refs = dict(variant_refs or {})

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
        listeners_ = frozenset(lst.name for lst in mine) | local
        variant = variants.get(node_cluster)
        if variant is not None:
            # Scoped to its upstreams: its own variant of each HTTP listener's routes, and
            # the clusters they and its TCP listeners name; nothing taken whole.
            keys = {name: variant_key(name, variant) for name in http}
            clusters = tcp | scoped_clusters(keys.values(), refs)
            return Selection(
                {
                    LISTENER: listeners_,
                    ROUTE: frozenset(keys.values()) | local,
                    CLUSTER: clusters | local,
                    ENDPOINT: clusters,
                    SECRET: secrets,
                },
                aliases={ROUTE: keys} if keys else {},
            )
        return Selection(
            {
                LISTENER: listeners_,
                ROUTE: http | local,
                CLUSTER: tcp | local,
                ENDPOINT: tcp,
                # The registry secrets its listeners use: the only ones it may fetch.
                SECRET: secrets,
            },
            # Every HTTP listener routes every service's default host, so it needs every
            # cluster (but other sidecars' private ones); a TCP listener needs only its
            # service's.
            every=_ALL_CLUSTERS if http else _NONE,
        )

    return select
