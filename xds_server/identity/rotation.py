"""Which workload certificates meshd holds, and when each is issued again. Pure.

Certificates are issued lazily: an identity gets one when the first proxy of a node cluster
that is that identity connects, not before. Each is re-issued at half its lifetime, so a
proxy always holds one with half a lifetime to spare (a push that is late, or a meshd
restart, costs nothing). An identity no connected proxy holds is no longer served, and
its certificate is kept only among the last :attr:`CertificateBook.keep_idle` so that a
reconnect does not mint a new key; beyond that it is forgotten (the book stays bounded by
what is connected).

Identities follow from node clusters and the registered services
(:func:`~xds_server.model.identity.identity_of_cluster`): registering ``shop/web`` turns
the cluster ``web.shop`` from a gateway into a sidecar, and the next :meth:`due` asks for
its sidecar certificate. The clock comes in as an argument; issuing (key generation,
signing) is the caller's.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from collections.abc import Container, Mapping

from xds_server.identity.ca import IssuedCertificate
from xds_server.model.identity import Identity, identity_of_cluster
from xds_server.model.names import ServiceRef

__all__ = ["CertificateBook"]


class CertificateBook:
    """Connected node clusters, their identities and the certificates issued for them."""

    def __init__(self, ttl: datetime.timedelta, *, keep_idle: int = 256) -> None:
        self.ttl = ttl
        """Lifetime of the certificates issued (``--cert-ttl``)."""
        self.keep_idle = keep_idle
        """How many certificates of identities no proxy holds are kept for a reconnect."""
        self._clusters: dict[str, int] = {}  # node cluster -> proxies connected
        self._certs: OrderedDict[Identity, tuple[IssuedCertificate, datetime.datetime]] = (
            OrderedDict()
        )  # identity -> (certificate, when to issue again); idle ones oldest first

    # -- who is connected ---------------------------------------------------------------

    def connected(self, node_cluster: str) -> None:
        """A proxy of ``node_cluster`` connected (its first request named its node)."""
        self._clusters[node_cluster] = self._clusters.get(node_cluster, 0) + 1

    def disconnected(self, node_cluster: str) -> None:
        """A proxy of ``node_cluster`` went away."""
        left = self._clusters.get(node_cluster, 0) - 1
        if left > 0:
            self._clusters[node_cluster] = left
        else:
            self._clusters.pop(node_cluster, None)

    @property
    def clusters(self) -> frozenset[str]:
        """Node clusters with a proxy connected."""
        return frozenset(self._clusters)

    # -- certificates -------------------------------------------------------------------

    def identities(self, services: Container[ServiceRef]) -> dict[str, Identity]:
        """Node cluster -> identity, of every connected cluster."""
        return {c: identity_of_cluster(c, services) for c in self._clusters}

    def due(self, now: datetime.datetime, services: Container[ServiceRef]) -> list[Identity]:
        """Identities in use with no certificate, or past half its lifetime: to issue now."""
        out: list[Identity] = []
        for identity in sorted(set(self.identities(services).values())):
            held = self._certs.get(identity)
            if held is None or now >= held[1]:
                out.append(identity)
        return out

    def issued(self, identity: Identity, cert: IssuedCertificate, now: datetime.datetime) -> None:
        """Record a certificate issued for ``identity`` at ``now``; it is issued again at
        half its lifetime (counted from ``now``: ``not_before`` is backdated)."""
        lifetime = min(self.ttl, cert.not_after - now)
        self._certs[identity] = (cert, now + lifetime / 2)
        self._certs.move_to_end(identity)

    def certificates(self, services: Container[ServiceRef]) -> dict[str, IssuedCertificate]:
        """Node cluster -> its identity's certificate, for every connected cluster that has
        one; certificates of identities no longer in use beyond :attr:`keep_idle` are
        forgotten."""
        identities = self.identities(services)
        out = {c: self._certs[i][0] for c, i in identities.items() if i in self._certs}
        in_use = set(identities.values())
        idle = [i for i in self._certs if i not in in_use]
        for identity in idle[: max(0, len(idle) - self.keep_idle)]:
            del self._certs[identity]
        return out

    def next_due(self, services: Container[ServiceRef]) -> datetime.datetime | None:
        """When the earliest certificate in use is to be issued again (None: none is)."""
        in_use = set(self.identities(services).values())
        return min((at for i, (_, at) in self._certs.items() if i in in_use), default=None)

    def held(self) -> Mapping[Identity, IssuedCertificate]:
        """Every certificate held now, by identity (in use or kept idle)."""
        return {i: c for i, (c, _) in self._certs.items()}
