"""meshd replicas on one etcd: who they are, and how one asks the others.

Each replica keeps one small key under its own etcd lease::

    <prefix>status/replicas/<replica id>
      {"id": "...", "admin": "10.0.0.5:18001", "tls": true, "tls_name": "meshd",
       "xds": "10.0.0.5:18000", "instance": "<random>", "started": <unix time>}

written when the replica starts (and again whenever its lease was lost), then only kept
alive: no write follows what its proxies do. The key goes with the lease: revoked on a
clean stop, expired :data:`PRESENCE_TTL` seconds after a crash.

A whole-mesh answer (proxy status, topology, load) is gathered when asked: the replica
asked answers for its own proxies and asks every other replica listed there for theirs
(:meth:`Replicas.ask`), with the caller's own token, so each replica applies the caller's
namespaces to what it holds and the merged answer shows no more than any part. A peer's
call carries :data:`LOCAL_METADATA`: it is answered by that replica alone, never passed on.
A replica that does not answer within :data:`PEER_TIMEOUT` is named in the answer
(``ReplicaStatus``), not waited for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.api import admin_pb2_grpc
from xds_server.ingest.lease import HeldLease
from xds_server.ingest.registry import Registry

log = logging.getLogger("meshd.replicas")

PRESENCE_TTL = 5
"""Seconds (etcd lease TTL) a crashed replica stays listed: its peers get a fast
"connection refused" meanwhile and name it as not answering."""
PRESENCE_PERIOD = 1.5
"""Seconds between two keep-alives of the lease, and two readings of the other replicas."""
PEER_TIMEOUT = 1.5
"""Seconds one replica waits for another's part of an answer (below the admin API's
2 s patience with etcd, so a whole-mesh answer never waits longer than one call)."""
LOCAL_METADATA = "x-mesh-replica-local"
"""Call metadata (value ``1``) asking a replica for its own part only."""
MAX_ID_LENGTH = 128
REPLICAS_DIR = "status/replicas/"


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """What a replica publishes about itself."""

    id: str
    admin: str
    """Where the others reach its admin API (``host:port``; "" without an admin API)."""
    tls: bool = False
    tls_name: str = ""
    """A DNS name of its serving certificate, checked when dialled over TLS."""
    xds: str = ""
    instance: str = ""
    """Random per process: tells a restarted replica (same id) from the one before."""
    started: float = 0.0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @staticmethod
    def decode(value: bytes) -> ReplicaRecord:
        """ValueError when the value is not a record."""
        try:
            doc = json.loads(value)
            return ReplicaRecord(
                id=str(doc["id"]),
                admin=str(doc.get("admin", "")),
                tls=bool(doc.get("tls", False)),
                tls_name=str(doc.get("tls_name", "")),
                xds=str(doc.get("xds", "")),
                instance=str(doc.get("instance", "")),
                started=float(doc.get("started", 0.0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a replica record: {exc}") from None


def check_replica_id(value: str) -> str:
    """``value`` when it is a usable replica id (it names an etcd key and a table cell);
    ValueError saying why otherwise."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "._:-"))})
    if bad:
        raise ValueError(f"may hold letters, digits and . _ : - only, not {''.join(bad)!r}")
    return value


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """One other replica's part: its response, or why there is none."""

    replica: ReplicaRecord
    response: Any | None
    code: grpc.StatusCode | None = None
    error: str = ""

    def status(self) -> pb.ReplicaStatus:
        """Whether its part is in the answer (a NOT_FOUND is an answer: "none here")."""
        answered = self.response is not None or self.code == grpc.StatusCode.NOT_FOUND
        return pb.ReplicaStatus(
            id=self.replica.id, address=self.replica.admin, answered=answered, error=self.error
        )


class Replicas:
    """This replica's record in etcd, the other replicas' records, and calls to them.

    :meth:`run` until cancelled, :meth:`close` at the end. With a registry that has no
    leases (tests' in-memory registry) nothing is published and no other replica is known:
    every answer is this replica's own.
    """

    def __init__(self, registry: Registry, replica_id: str) -> None:
        self.registry = registry
        self.replica_id = replica_id
        self.prefix = registry.prefix + REPLICAS_DIR
        self.record: ReplicaRecord | None = None
        """What this replica publishes (set by :meth:`publish`)."""
        self.peers: dict[str, ReplicaRecord] = {}
        """The other replicas alive in etcd, by id."""
        self._roots: bytes | None = None
        self._lease = HeldLease(registry, PRESENCE_TTL, "replica")
        self._written: ReplicaRecord | None = None
        self._channels: dict[str, tuple[ReplicaRecord, grpc.aio.Channel]] = {}
        self._duplicate_logged = 0.0
        self.instance = secrets.token_hex(8)

    # -- this replica ----------------------------------------------------------------------

    def publish(
        self,
        admin: str,
        *,
        xds: str = "",
        tls_name: str = "",
        roots: bytes | None = None,
    ) -> None:
        """Say where this replica's admin API is (``roots``: the mesh CA bundle, with TLS:
        the others' admin APIs are dialled over TLS trusting it)."""
        self._roots = roots
        self.record = ReplicaRecord(
            self.replica_id,
            admin,
            tls=roots is not None,
            tls_name=tls_name,
            xds=xds,
            instance=self.instance,
            started=round(time.time(), 3),
        )

    async def run(self) -> None:
        """Keep the record published and the other replicas' records read."""
        backoff = PRESENCE_PERIOD
        while True:
            try:
                await self.sync_once()
                backoff = PRESENCE_PERIOD
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd away: the last known replicas stay asked
                log.warning("replica presence in etcd failed: %s", exc)
                self._lease.lost()
                backoff = min(backoff * 2, 5.0)
            await asyncio.sleep(backoff)

    async def sync_once(self) -> None:
        """Keep the lease, (re)write the record if needed, read the others'."""
        list_prefix = getattr(self.registry, "list_prefix", None)
        if not self._lease.supported or list_prefix is None or self.record is None:
            return
        if await self._lease.keep():
            self._written = None
        if self._written != self.record:
            key = self.prefix + self.replica_id
            await self.registry.put(key, self.record.encode(), lease=self._lease.id)
            self._written = self.record
        listing: Any = await list_prefix(self.prefix)
        for channel in self._read(listing.entries):
            await channel.close()

    def _read(self, entries: Iterable[Any]) -> list[grpc.aio.Channel]:
        """Take the records listed as the replicas alive; the channels of those gone (or
        moved) are returned, to be closed."""
        seen: dict[str, ReplicaRecord] = {}
        for entry in entries:
            try:
                record = ReplicaRecord.decode(entry.value)
            except ValueError as exc:
                log.warning("ignoring %s: %s", entry.key, exc)
                continue
            if record.id == self.replica_id:
                if record.instance != self.instance:
                    self._duplicate(record)
                continue
            seen[record.id] = record
        for rid, record in seen.items():
            if rid not in self.peers:
                log.info("replica %s joined (admin API %s)", rid, record.admin or "off")
            elif self.peers[rid].instance != record.instance:
                log.info("replica %s restarted (admin API %s)", rid, record.admin or "off")
        for rid in self.peers.keys() - seen.keys():
            log.info("replica %s left (lease expired or revoked)", rid)
        self.peers = seen
        stale = [rid for rid, (r, _) in self._channels.items() if seen.get(rid) != r]
        return [self._channels.pop(rid)[1] for rid in stale]

    def _duplicate(self, other: ReplicaRecord) -> None:
        """Another process published this id: two replicas must not share one (each
        would hide the other's proxies). Said once a minute, and ours written back."""
        self._written = None
        now = time.monotonic()
        if now - self._duplicate_logged >= 60.0:
            self._duplicate_logged = now
            log.error(
                "replica id %r is also used by the meshd with admin API %s (started %s): "
                "give each replica its own --replica-id",
                self.replica_id,
                other.admin or "off",
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(other.started)),
            )

    async def close(self) -> None:
        """Give the lease back (the others forget this replica at once), close channels."""
        await self._lease.revoke()
        channels, self._channels = self._channels, {}
        for _, channel in channels.values():
            await channel.close()

    # -- the others ------------------------------------------------------------------------

    def me(self) -> pb.ReplicaStatus:
        """This replica as a ReplicaStatus (it always answers its own part)."""
        admin = self.record.admin if self.record is not None else ""
        return pb.ReplicaStatus(id=self.replica_id, address=admin, answered=True)

    async def ask(
        self, method: str, request: Message, metadata: Sequence[tuple[str, str]]
    ) -> list[PeerAnswer]:
        """``method`` of every other replica at once, each given :data:`PEER_TIMEOUT`;
        answers by replica id."""
        peers = sorted(self.peers.values(), key=lambda r: r.id)
        return list(
            await asyncio.gather(*(self._ask_one(r, method, request, metadata) for r in peers))
        )

    async def _ask_one(
        self,
        record: ReplicaRecord,
        method: str,
        request: Message,
        metadata: Sequence[tuple[str, str]],
    ) -> PeerAnswer:
        if not record.admin:
            return PeerAnswer(record, None, error="runs without an admin API (--admin '')")
        if record.tls and self._roots is None:
            return PeerAnswer(record, None, error="serves its admin API over TLS, this one not")
        stub = admin_pb2_grpc.MeshAdminServiceStub(self._channel(record))  # type: ignore[no-untyped-call]
        try:
            response = await getattr(stub, method)(
                request, metadata=tuple(metadata), timeout=PEER_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            why = "did not answer in time" if code == grpc.StatusCode.DEADLINE_EXCEEDED else ""
            detail = why or f"{code.name}: {exc.details()}"
            return PeerAnswer(record, None, code, detail)
        return PeerAnswer(record, response)

    def _channel(self, record: ReplicaRecord) -> grpc.aio.Channel:
        held = self._channels.get(record.id)
        if held is not None and held[0] == record:
            return held[1]
        if record.tls and self._roots is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._roots)
            # Every replica's certificate comes from the mesh CA and names what
            # --server-names says; the address dialled (an IP, often) need not be one.
            options = (
                [("grpc.ssl_target_name_override", record.tls_name)] if record.tls_name else []
            )
            channel = grpc.aio.secure_channel(record.admin, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(record.admin)
        self._channels[record.id] = (record, channel)
        return channel


def forwarded(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> tuple[tuple[str, str], ...] | None:
    """The metadata to ask the other replicas with: the caller's token and
    :data:`LOCAL_METADATA`; None when the caller is itself a replica asking for this
    replica's part (answered alone)."""
    out: list[tuple[str, str]] = []
    for key, value in metadata or ():
        name = key.lower()
        if name == LOCAL_METADATA:
            return None
        if name == "authorization":
            out.append((name, value.decode() if isinstance(value, bytes) else value))
    out.append((LOCAL_METADATA, "1"))
    return tuple(out)


class ReplicasCollector(Collector):
    """``meshd_replicas``: the replicas alive in etcd, this one included."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas

    def describe(self) -> Any:
        yield self._family()

    def collect(self) -> Any:
        family = self._family()
        family.add_metric([], 1 + len(self.replicas.peers))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "meshd_replicas", "meshd replicas alive in etcd (this one included)"
        )
