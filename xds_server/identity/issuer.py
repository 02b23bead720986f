"""The task that issues and rotates workload certificates for the proxies connected.

It keeps a :class:`~xds_server.identity.rotation.CertificateBook` up to date with the
node clusters connected (told by a stream observer), issues what the book says is due
with the mesh CA, and publishes every connected cluster's certificate whenever that set
changes: the composition root turns it into a pipeline input, and translation into SDS
Secrets. It wakes when a proxy connects or leaves, when the registry may have changed an
identity (:meth:`CertificateIssuer.poke`), at the next half-life, and at the latest every
``recheck_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable, Container, Mapping

from xds_server.identity.ca import IssuedCertificate, MeshCA
from xds_server.identity.rotation import CertificateBook
from xds_server.model.names import ServiceRef

__all__ = ["CertificateIssuer", "Publish"]

log = logging.getLogger("meshd.ca")

Publish = Callable[[Mapping[str, IssuedCertificate], bytes], None]
"""Receives node cluster -> certificate (every connected cluster's) and the trust bundle."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CertificateIssuer:
    """Issues certificates for connected identities and re-issues them at half-life."""

    def __init__(
        self,
        ttl: datetime.timedelta,
        services: Callable[[], Container[ServiceRef]],
        publish: Publish,
        *,
        clock: Callable[[], datetime.datetime] = _utcnow,
        recheck_s: float = 2.0,
    ) -> None:
        self.book = CertificateBook(ttl)
        self.ca: MeshCA | None = None
        """Set once the CA is loaded; nothing is issued before."""
        self.services = services
        self.publish = publish
        self.clock = clock
        self.recheck_s = recheck_s
        self._wake = asyncio.Event()
        self._published: dict[str, IssuedCertificate] | None = None
        self.rotations = 0
        """Certificates issued again at half-life (for tests and diagnostics)."""

    def connected(self, node_cluster: str) -> None:
        """A proxy of ``node_cluster`` connected."""
        self.book.connected(node_cluster)
        self._wake.set()

    def disconnected(self, node_cluster: str) -> None:
        """A proxy of ``node_cluster`` went away."""
        self.book.disconnected(node_cluster)
        self._wake.set()

    def poke(self) -> None:
        """Something may have changed an identity (a service registered or removed)."""
        self._wake.set()

    def step(self) -> bool:
        """Issue what is due and publish when the served set changed; True if published."""
        ca = self.ca
        if ca is None:
            return False
        now = self.clock()
        services = self.services()
        for identity in self.book.due(now, services):
            renewal = identity in self.book.held()
            cert = ca.issue_workload(identity.spiffe_id(ca.trust_domain), now, self.book.ttl)
            self.book.issued(identity, cert, now)
            if renewal:
                self.rotations += 1
            log.info(
                "%s certificate for %s: serial %x, valid until %s",
                "rotated" if renewal else "issued",
                identity.short(),
                cert.serial,
                cert.not_after.isoformat(),
            )
        certs = self.book.certificates(services)
        if self._published is not None and certs == self._published:
            return False
        self._published = certs
        self.publish(certs, ca.bundle_pem)
        return True

    def _timeout(self) -> float:
        due = self.book.next_due(self.services())
        if due is None:
            return self.recheck_s
        left = (due - self.clock()).total_seconds()
        return max(0.0, min(self.recheck_s, left))

    async def run(self) -> None:
        """Issue and rotate until cancelled."""
        while True:
            self._wake.clear()
            try:
                self.step()
            except Exception:  # a failed issue must not end rotation for everyone
                log.exception("issuing workload certificates failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._timeout())
