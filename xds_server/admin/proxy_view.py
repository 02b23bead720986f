"""What one admin caller may see of the connected proxies (GetProxyStatus, GetProxyConfig,
CSDS, the node events of ``Watch``).

A token for namespaces ``["*"]`` sees every proxy as it is. A token limited to some
namespaces sees:

- the sidecars of its namespaces, whole (the proxy runs beside the namespace's own
  workload: what it holds is the namespace's already);
- every gateway's status, but of a gateway's config only what belongs to its namespaces:
  their clusters and endpoints, their routes (a shared route configuration keeps only the
  route entries of those namespaces), a TCP listener of their service, the HTTP listeners
  (registry listeners: every token reads them) and the trust bundle; never the gateway's
  own certificate, another namespace's resource, or one meshd cannot attribute;
- nothing of another namespace's sidecars: they answer as if not connected.

A sidecar is a proxy whose node cluster is ``<name>.<ns>`` of a registered service, as
for its identity (:func:`~xds_server.model.identity.identity_of_cluster`); any other
node cluster is a gateway.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.route.v3 import route_pb2
from google.protobuf.message import DecodeError

from xds_server.admin.auth import Principal
from xds_server.model.identity import identity_of_cluster
from xds_server.model.names import parse_cluster_name
from xds_server.model.view import RegistryView
from xds_server.resources.resource import Resource
from xds_server.resources.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from xds_server.server.ads import Connection

TRUST_BUNDLE_SECRET = "ROOTCA"
"""The SDS secret holding the mesh's trust bundle: public (``GetTrustBundle`` is open)."""

_DEFAULT_ROUTE = "default:"
"""Prefix of a service's default route entry name (``default:<name>.<ns>``)."""


class ProxyView:
    """The proxies and resources ``who`` may see, judged against the registry in force."""

    def __init__(self, who: Principal, state: RegistryView) -> None:
        self.who = who
        self.state = state
        self.everything = who.covers("")
        """A token for namespaces ``["*"]``: nothing is filtered."""

    # -- proxies -----------------------------------------------------------------------------

    def namespace(self, conn: Connection) -> str | None:
        """The namespace of a sidecar; None for a gateway."""
        identity = identity_of_cluster(conn.stream.node_cluster, self.state.registered_services)
        return identity.namespace if identity.kind == "sidecar" else None

    def sees(self, conn: Connection) -> bool:
        """Whether the caller sees this proxy at all (every gateway; its own sidecars)."""
        if self.everything:
            return True
        ns = self.namespace(conn)
        return ns is None or self.who.covers(ns)

    def sees_whole(self, conn: Connection) -> bool:
        """Whether the caller sees everything this proxy holds."""
        if self.everything:
            return True
        ns = self.namespace(conn)
        return ns is not None and self.who.covers(ns)

    def node_visible(self, conns: Sequence[Connection]) -> bool:
        """Whether a node id, held by ``conns``, is visible: every stream under that id must
        be (a node id is the client's choice: another namespace's proxy may share it)."""
        return bool(conns) and all(self.sees(c) for c in conns)

    # -- resources ---------------------------------------------------------------------------

    def held(self, conn: Connection, type_url: str) -> list[Resource]:
        """What ``conn`` was last sent of ``type_url``, as far as the caller may see it."""
        resources = conn.stream.held(type_url)
        if self.sees_whole(conn):
            return list(resources)
        out = []
        for res in resources:
            shown = self.resource(res)
            if shown is not None:
                out.append(shown)
        return out

    def resource(self, res: Resource) -> Resource | None:
        """``res`` as the caller may see it on a gateway: whole, cut down to its
        namespaces' route entries, or None."""
        t, name = res.type_url, res.name
        if t in (CLUSTER, ENDPOINT):
            return res if self._covers_cluster(name) else None
        if t == SECRET:
            return res if name == TRUST_BUNDLE_SECRET else None
        listener = self.state.listeners.get(name)
        if t == LISTENER:
            if listener is not None:
                svc = listener.service  # a TCP listener forwards to one service
                return res if svc is None or self.who.covers(svc.namespace) else None
            return res if self._covers_cluster(name) else None  # proxyless gRPC's
        if t == ROUTE:
            if listener is not None and listener.protocol == "http":
                return self._routes(res)
            return res if self._covers_cluster(name) else None  # proxyless gRPC's
        return None  # a type meshd does not attribute to a namespace

    def _covers_cluster(self, name: str) -> bool:
        """``name`` is ``<name>.<ns>[|subset]`` of a namespace the caller covers."""
        parsed = parse_cluster_name(name)
        return parsed is not None and self.who.covers(parsed.service.namespace)

    def route_namespace(self, route_name: str) -> str | None:
        """The namespace of an Envoy route entry: ``<ns>/<name>`` (a registry route) or
        ``default:<name>.<ns>`` (a service's default route); None: unknown."""
        if route_name.startswith(_DEFAULT_ROUTE):
            parsed = parse_cluster_name(route_name[len(_DEFAULT_ROUTE) :])
            return parsed.service.namespace if parsed is not None else None
        ns, slash, rest = route_name.partition("/")
        return ns if slash and ns and rest else None

    def _routes(self, res: Resource) -> Resource | None:
        """A shared RouteConfiguration with only the route entries of the caller's
        namespaces (virtual hosts left empty go); the version stays the one the proxy
        holds, so it still compares with the proxy's status."""
        try:
            config = route_pb2.RouteConfiguration.FromString(res.body)
        except DecodeError:
            return None
        kept = []
        for vhost in config.virtual_hosts:
            routes = [r for r in vhost.routes if self._covers_route(r.name)]
            if routes:
                del vhost.routes[:]
                vhost.routes.extend(routes)
                kept.append(vhost)
        del config.virtual_hosts[:]
        config.virtual_hosts.extend(kept)
        return res._replace(body=config.SerializeToString(deterministic=True))

    def _covers_route(self, route_name: str) -> bool:
        ns = self.route_namespace(route_name)
        return ns is not None and self.who.covers(ns)
