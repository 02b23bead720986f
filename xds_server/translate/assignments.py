"""A big service's ClusterLoadAssignments, kept up to date endpoint by endpoint. Pure.

:func:`~xds_server.translate.endpoint.service_assignments` plans and encodes a service's
assignments from all of its endpoints; for a service of 10,000 endpoints that is ~10 ms
per change, paid again for every single endpoint update of a rolling deploy.
:class:`ServiceAssignments` keeps, per endpoint, its encoded ``lb_endpoints`` (a piece)
and, per cluster (the service's own and one per subset) and locality, the pieces in the
order the assignment lists them, with their total weight and size. An endpoint update
re-encodes that endpoint and moves its piece; the assignment's bytes are then one join of
pieces already encoded. The bytes, and so the versions (a hash of the bytes), are exactly
those :func:`service_assignments` builds from scratch (``tests/unit/test_assignments_props.py``
checks it over random histories).
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

from envoy.config.core.v3 import health_check_pb2

from xds_server.model import Endpoint, Service
from xds_server.model.endpoint import is_ip
from xds_server.model.names import cluster_name
from xds_server.resources.resource import Resource, resource_from_bytes
from xds_server.resources.types import ENDPOINT
from xds_server.translate import eds_wire
from xds_server.translate.endpoint import Resolver

__all__ = ["INCREMENTAL_MIN", "ServiceAssignments"]

INCREMENTAL_MIN = 64
"""Endpoints from which a service's assignments are kept piece by piece. Below, encoding
them all is as cheap as the bookkeeping, and the pieces' memory is not worth keeping."""

_MAX_WEIGHT = 2**32 - 1
_UNKNOWN, _DRAINING = health_check_pb2.UNKNOWN, health_check_pb2.DRAINING


class _Piece(NamedTuple):
    """One endpoint as its assignments list it."""

    zone: str
    blob: bytes  # its lb_endpoints fields: one per address (none while a name is unresolved)
    weight: int  # the weight of those fields together
    endpoint: Endpoint


class _Locality:
    """One locality of one assignment: its endpoints' ids in order, their pieces' bytes in
    the same order, and the sums the LocalityLbEndpoints header needs."""

    __slots__ = ("blobs", "ids", "size", "weight")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.blobs: list[bytes] = []
        self.weight = 0
        self.size = 0

    def add(self, endpoint_id: str, piece: _Piece) -> None:
        at = bisect.bisect_left(self.ids, endpoint_id)
        self.ids.insert(at, endpoint_id)
        self.blobs.insert(at, piece.blob)
        self.weight += piece.weight
        self.size += len(piece.blob)

    def remove(self, endpoint_id: str, piece: _Piece) -> None:
        at = bisect.bisect_left(self.ids, endpoint_id)
        del self.ids[at], self.blobs[at]
        self.weight -= piece.weight
        self.size -= len(piece.blob)


class _Assignment:
    """One cluster's assignment: its localities and, while none changed, its resource."""

    __slots__ = ("localities", "name", "resource", "selector")

    def __init__(self, name: str, selector: tuple[tuple[str, str], ...] | None) -> None:
        self.name = name
        self.selector = selector  # None: the service's own cluster (every endpoint)
        self.localities: dict[str, _Locality] = {}
        self.resource: Resource | None = None

    def holds(self, endpoint: Endpoint) -> bool:
        return self.selector is None or endpoint.matches(self.selector)

    def add(self, endpoint_id: str, piece: _Piece) -> None:
        locality = self.localities.get(piece.zone)
        if locality is None:
            locality = self.localities[piece.zone] = _Locality()
        locality.add(endpoint_id, piece)
        self.resource = None

    def remove(self, endpoint_id: str, piece: _Piece) -> None:
        locality = self.localities[piece.zone]
        locality.remove(endpoint_id, piece)
        if not locality.ids:
            del self.localities[piece.zone]
        self.resource = None

    def encode(self) -> Resource:
        """The assignment's resource (re-encoded only after a change)."""
        if self.resource is None:
            groups = [
                (zone, loc.blobs, min(loc.weight, _MAX_WEIGHT), loc.size)
                for zone, loc in sorted(self.localities.items())
                if loc.weight  # (no address yet: left out, as plan() does)
            ]
            body = eds_wire.assignment_of_pieces(self.name, groups)
            self.resource = resource_from_bytes(ENDPOINT, self.name, body)
        return self.resource


class ServiceAssignments:
    """The ClusterLoadAssignments of one service (its own cluster's, then one per subset),
    updated endpoint by endpoint.

    Built for one service value, health mapping and resolver: when any of them changes,
    build a new one (:meth:`fits` says whether this one still does).
    """

    __slots__ = ("_assignments", "_pieces", "dns_names", "health", "resolve", "service")

    def __init__(
        self,
        service: Service,
        endpoints: Mapping[str, Endpoint],
        resolve: Resolver,
        health: Mapping[str, int] | None,
    ) -> None:
        self.service = service
        self.resolve = resolve
        self.health = health
        self.dns_names: dict[str, set[str]] = {}
        """DNS name -> ids of the endpoints that use it (what resolution must watch)."""
        self._pieces: dict[str, _Piece] = {}
        self._assignments = [_Assignment(cluster_name(service.ref), None)]
        self._assignments += [
            _Assignment(cluster_name(service.ref, subset), selector)
            for subset, selector in service.subsets
        ]
        # Built in id order: each locality's lists are appended to, not inserted into.
        for endpoint_id in sorted(endpoints):
            piece = self._piece(endpoints[endpoint_id])
            self._pieces[endpoint_id] = piece
            for a in self._assignments:
                if a.holds(piece.endpoint):
                    loc = a.localities.get(piece.zone)
                    if loc is None:
                        loc = a.localities[piece.zone] = _Locality()
                    loc.ids.append(endpoint_id)
                    loc.blobs.append(piece.blob)
                    loc.weight += piece.weight
                    loc.size += len(piece.blob)

    def fits(self, service: Service, resolve: Resolver, health: Mapping[str, int] | None) -> bool:
        """Whether this was built for ``service``, ``resolve`` and ``health`` (equal ones:
        health verdicts come as a new mapping per service each time any service's moved)."""
        if service is not self.service and service != self.service:
            return False
        if resolve is not self.resolve and resolve != self.resolve:
            return False
        if health is not self.health:
            if health != self.health and (health or self.health):
                return False
            self.health = health
        return True

    def __len__(self) -> int:
        return len(self._pieces)

    def update(self, endpoints: Mapping[str, Endpoint], changed: Iterable[str]) -> None:
        """Bring the endpoints ``changed`` (ids: added, modified or removed) up to
        ``endpoints``, the service's endpoints in force."""
        pieces = self._pieces
        for endpoint_id in changed:
            old = pieces.get(endpoint_id)
            new = endpoints.get(endpoint_id)
            if old is not None and new is not None and old.endpoint is new:
                continue
            if old is not None:
                del pieces[endpoint_id]
                for a in self._assignments:
                    if a.holds(old.endpoint):
                        a.remove(endpoint_id, old)
                self._forget_name(endpoint_id, old.endpoint)
            if new is not None:
                piece = pieces[endpoint_id] = self._piece(new)
                for a in self._assignments:
                    if a.holds(new):
                        a.add(endpoint_id, piece)

    def resources(self, changed_only: bool = False) -> list[Resource]:
        """Every assignment's resource (``changed_only``: those changed since the last
        call)."""
        return [a.encode() for a in self._assignments if not changed_only or a.resource is None]

    def _piece(self, ep: Endpoint) -> _Piece:
        """An endpoint's lb_endpoints fields, as :func:`endpoint.plan` and
        :func:`endpoint.encode_cla` write them."""
        port = ep.port if ep.port is not None else self.service.port
        assert port is not None  # state rejects endpoints with no port to use
        status: int = _UNKNOWN
        if ep.draining:
            status = _DRAINING
        elif self.health and ep.id in self.health:
            status = self.health[ep.id]
        encode = eds_wire.encode_lb_endpoint
        if is_ip(ep.address):
            return _Piece(ep.zone, encode(ep.address, port, status, ep.weight), ep.weight, ep)
        self.dns_names.setdefault(ep.address, set()).add(ep.id)
        addresses = self.resolve(ep.address)
        blob = b"".join(encode(addr, port, status, ep.weight) for addr in addresses)
        return _Piece(ep.zone, blob, ep.weight * len(addresses), ep)

    def _forget_name(self, endpoint_id: str, ep: Endpoint) -> None:
        if is_ip(ep.address):
            return
        ids = self.dns_names.get(ep.address)
        if ids is not None:
            ids.discard(endpoint_id)
            if not ids:
                del self.dns_names[ep.address]


def incremental(changed: Collection[str] | None, held: int) -> bool:
    """Whether ``changed`` endpoint ids (None: any) of a service whose assignments hold
    ``held`` endpoints are cheaper moved one by one than built again."""
    return changed is not None and len(changed) * 4 <= held
