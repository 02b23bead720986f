"""An etcd lease a meshd replica keeps for what it publishes (its replica record, its
health document): granted, kept alive each round, granted anew once it expired, revoked
on close so that the other replicas forget this one at once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["HeldLease"]

log = logging.getLogger("meshd")


class HeldLease:
    """A lease of ``ttl`` seconds on ``registry`` (one without leases: :attr:`supported`
    is False and nothing is done); ``what`` names it in log lines."""

    def __init__(self, registry: Any, ttl: int, what: str) -> None:
        self._grant = getattr(registry, "lease_grant", None)
        self._keepalive = getattr(registry, "lease_keepalive", None)
        self._revoke = getattr(registry, "lease_revoke", None)
        self.ttl = ttl
        self.what = what
        self.id = 0
        """The lease held now (0: none)."""

    @property
    def supported(self) -> bool:
        return self._grant is not None and self._keepalive is not None

    async def keep(self) -> bool:
        """Keep the lease alive, or take a new one when there is none or it expired (etcd
        away longer than the TTL); True when it is new: what was published under the old
        one is gone and must be written again."""
        assert self._grant is not None and self._keepalive is not None
        if self.id:
            try:
                await self._keepalive(self.id)
                return False
            except Exception:
                self.id = 0  # expired: start over
        self.id = int(await self._grant(self.ttl))
        return True

    def lost(self) -> None:
        """etcd failed mid-round: take a new lease next time."""
        self.id = 0

    async def revoke(self, timeout: float = 2.0) -> None:
        """Give the lease back (what is published under it goes at once). Waits at most
        ``timeout`` seconds: a revoke etcd does not answer by then leaves the lease to
        expire after its TTL, as it would had this process been killed, rather than hold
        up a stop (etcd's own request deadline is longer)."""
        if self.id and self._revoke is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._revoke(self.id)
            except Exception as exc:
                log.info(
                    "could not revoke the %s lease: %s",
                    self.what,
                    str(exc) or f"no answer in {timeout:g} s",
                )
        self.id = 0
