"""Health shared between meshd replicas through etcd, and published for people and tools.

Each replica keeps one key under its own etcd lease::

    <prefix>status/health/replicas/<replica id>
      {"checkers": [[node id, zone], ...],
       "reports": {node id: {"<ns>/<svc>/<endpoint id>": [healthy, at], ...}, ...}}

so every replica knows every proxy able to probe (the assignment is computed
over all of them, identically everywhere) and every report (the verdicts agree).
When a replica dies its lease expires and its proxies and reports go with it.

Verdicts are written (without a lease: they describe endpoints, not replicas) to::

    <prefix>status/health/endpoints/<ns>/<svc>/<endpoint id>
      {"status": "UNHEALTHY", "healthy_reports": 0, "unhealthy_reports": 2, "checkers": [...]}

and deleted when the endpoint goes away or its health becomes UNKNOWN.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from xds_server.health.aggregate import Status
from xds_server.health.assign import Checker
from xds_server.health.hds import HealthService
from xds_server.health.monitor import lease_ttl
from xds_server.ingest.lease import HeldLease
from xds_server.ingest.registry import Registry

log = logging.getLogger("meshd.health")


class HealthSync:
    """The replica's side of the exchange; :meth:`run` until cancelled."""

    def __init__(self, registry: Registry, health: HealthService, replica_id: str) -> None:
        self.registry = registry
        self.health = health
        self.replica_id = replica_id
        base = f"{registry.prefix}status/health/"
        self.replicas_prefix = base + "replicas/"
        self.endpoints_prefix = base + "endpoints/"
        interval = health.monitor.report_interval
        self.period = min(max(interval / 2, 0.25), 5.0)
        self.ttl = lease_ttl(interval)
        self._lease = HeldLease(registry, self.ttl, "health")
        self._written: dict[str, bytes] = {}
        self._own: bytes = b""
        self.rounds = 0

    async def run(self) -> None:
        backoff = self.period
        while True:
            try:
                await self.sync_once()
                backoff = self.period
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd unreachable: local health keeps working
                log.warning("health sync with etcd failed: %s", exc)
                self._lease.lost()
                backoff = min(backoff * 2, 5.0)
            await asyncio.sleep(backoff)

    async def close(self) -> None:
        """Give the lease back so the other replicas forget this one at once."""
        await self._lease.revoke()

    async def sync_once(self) -> None:
        """Publish this replica's proxies and reports, read the others', write verdicts."""
        await self._keep_lease()
        own = self._document()
        if own != self._own or self.rounds % 4 == 0:
            await self.registry.put(
                self.replicas_prefix + self.replica_id, own, lease=self._lease.id
            )
            self._own = own
        await self._read_others()
        self.health.evaluate_now()
        await self._write_verdicts()
        self.rounds += 1

    async def _keep_lease(self) -> None:
        if self._lease.supported and await self._lease.keep():
            self._own = b""  # (a new lease: what the old one held is gone, write it again)

    def _document(self) -> bytes:
        monitor = self.health.monitor
        checkers = sorted([c.node_id, c.zone] for c in self.health.local.values())
        reports = {
            node: {k: [h, round(at, 3)] for k, (h, at) in sorted(monitor.reports_of(node).items())}
            for node in sorted(self.health.local)
        }
        return json.dumps({"checkers": checkers, "reports": reports}, sort_keys=True).encode()

    async def _read_others(self) -> None:
        list_prefix = getattr(self.registry, "list_prefix", None)
        if list_prefix is None:
            return  # a registry without ranges: this replica works alone
        listing: Any = await list_prefix(self.replicas_prefix)
        seen: set[str] = set()
        for entry in listing.entries:
            replica = entry.key[len(self.replicas_prefix) :]
            if replica == self.replica_id:
                continue
            try:
                doc = json.loads(entry.value)
                checkers = [Checker(str(n), str(z)) for n, z in doc["checkers"]]
                reports = {
                    str(node): {str(k): (bool(v[0]), float(v[1])) for k, v in rows.items()}
                    for node, rows in doc["reports"].items()
                }
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                log.warning("ignoring malformed health document %s: %s", entry.key, exc)
                continue
            seen.add(replica)
            self.health.set_remote(replica, checkers)
            for node, rows in reports.items():
                self.health.monitor.ingest_keys(node, rows)
        for replica in list(self.health.remote):
            if replica not in seen:
                log.info("replica %s left (lease expired or revoked)", replica)
                self.health.set_remote(replica, None)

    async def _write_verdicts(self) -> None:
        desired: dict[str, bytes] = {}
        monitor = self.health.monitor
        # Only HDS-checked services have verdicts: walking every service of a large registry
        # on each sync would cost time in proportion to the registry for nothing.
        for sh in (h for ref in monitor.probed() for h in monitor.services(ref)):
            for ep in sh.endpoints:
                if ep.status in (Status.UNKNOWN,) or sh.mode != "hds":
                    continue
                key = f"{self.endpoints_prefix}{sh.service}/{ep.endpoint_id}"
                desired[key] = json.dumps(
                    {
                        "status": ep.status.value,
                        "healthy_reports": ep.healthy_reports,
                        "unhealthy_reports": ep.unhealthy_reports,
                        "checkers": list(ep.checkers),
                    },
                    sort_keys=True,
                ).encode()
        for key in sorted(set(self._written) - set(desired)):
            await self.registry.delete(key)
            del self._written[key]
        for key, value in sorted(desired.items()):
            if self._written.get(key) != value:
                await self.registry.put(key, value)
                self._written[key] = value
