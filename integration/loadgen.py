"""Simulated Envoy ADS clients (SotW and Delta) in a process of their own.

Each client behaves like an Envoy sidecar on the wire:

* its own gRPC connection (``grpc.use_local_subchannel_pool``), like a real proxy;
* SotW: CDS wildcard with ``node`` {id, cluster}, ACK every response (``version_info`` +
  ``response_nonce``), EDS for every cluster received, LDS wildcard once the clusters are
  warm, RDS for the route configurations the listeners' HTTP connection managers name;
* Delta: wildcard CDS/LDS, explicit EDS/RDS subscriptions, ACK every response by nonce;
* reconnect with a short jittered back-off (Envoy's bootstrap here: 0.1-0.5 s), because in a
  connection storm on loopback a few streams end CANCELLED; the first request of each type on
  a new stream carries what the client holds (SotW ``version_info``, Delta
  ``initial_resource_versions``), so a server can tell it is already in sync.

Arrival of a change is detected by a marker: the benchmark sets the port of one endpoint of the
ClusterLoadAssignment every client subscribes to (``s0.default``) to ``base + change id``; the
client notes ``time.monotonic()`` (a system-wide clock on Linux, so comparable across processes)
when the response carrying it is read.

A route change is detected the same way when ``route`` names a route configuration: the
benchmark writes ``route_mark`` followed by the change id in one of its routes (a path
prefix), and the client notes when a response carrying that configuration with that id is
read.

Requests are written as pre-encoded bytes and resource names are read straight from the
serialized resources (``name`` is field 1 of Cluster, ClusterLoadAssignment, Listener and
RouteConfiguration), so a SotW EDS ACK naming 10,000 clusters costs the client a memcpy, not a
protobuf build: the client stays cheap and the same for meshd and for the floor server.

Run as ``python -m integration.loadgen``: it reads one JSON command per line on stdin and
answers each with one JSON line on stdout (see :meth:`Pool.handle`). :class:`LoadGen` drives
such a process from asyncio code; :class:`LoadGenGroup` spreads clients over several.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2

from xds_server.resources.resource import encode_varint

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
TYPES = (CDS, EDS, LDS, RDS)
SHORT = {CDS: "CDS", EDS: "EDS", LDS: "LDS", RDS: "RDS"}

_SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
SOTW_METHOD = _SERVICE + "StreamAggregatedResources"
DELTA_METHOD = _SERVICE + "DeltaAggregatedResources"

MARKER_BASE = 30_000
"""Default marker port base: the benchmark sets the marker endpoint's port to base + change id."""

MARKER_SPAN = 1_000_000
"""Ports in ``[base, base + MARKER_SPAN)`` of the marker resource carry a change id."""


def raise_nofile_limit() -> None:
    """Raise the soft open-files limit to the hard one (one descriptor per connection)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def channel_options(backoff: tuple[float, float]) -> list[tuple[str, Any]]:
    """Options of each client's channel: its own connection, big messages, short back-off."""
    base_ms, max_ms = int(backoff[0] * 1000), int(backoff[1] * 1000)
    return [
        # Without this, every channel to the same target shares one TCP connection.
        ("grpc.use_local_subchannel_pool", 1),
        # A full config for thousands of services is far above gRPC's default 4 MiB.
        ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ("grpc.max_send_message_length", 256 * 1024 * 1024),
        # gRPC's own reconnect back-off starts at 1 s; Envoy's ADS cluster here uses 0.1-0.5 s.
        ("grpc.initial_reconnect_backoff_ms", base_ms),
        ("grpc.min_reconnect_backoff_ms", base_ms),
        ("grpc.max_reconnect_backoff_ms", max_ms),
    ]


# --------------------------------------------------------------------------- protobuf wire


def field_bytes(number: int, data: bytes | str) -> bytes:
    """One length-delimited protobuf field (string, bytes or embedded message)."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) < 0x80 and number < 16:  # the common case: a one-byte tag and length
        return bytes((number << 3 | 2, len(raw))) + raw
    return encode_varint(number << 3 | 2) + encode_varint(len(raw)) + raw


def first_string(body: bytes) -> str:
    """Field 1 of a serialized message when it is a string written first, else ``""``.

    Cluster, ClusterLoadAssignment, Listener and RouteConfiguration all have their name as
    field 1, and protobuf writes fields in number order: this reads the name without parsing
    the resource. Names are interned: thousands of clients hold the same few thousand names.
    """
    if not body or body[0] != 0x0A:
        return ""
    length, shift, pos = 0, 0, 1
    while True:
        b = body[pos]
        pos += 1
        length |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    return sys.intern(body[pos : pos + length].decode())


_NAMES: dict[tuple[int, frozenset[str]], bytes] = {}
_ENTRIES: dict[tuple[str, str], bytes] = {}


def encoded_names(number: int, names: frozenset[str]) -> bytes:
    """Repeated string field ``number`` holding ``names`` (sorted), memoized.

    Thousands of clients subscribe to the same set of names; encoding it once per set keeps
    a reconnect storm from being a storm of Python string encoding in the load generator.
    """
    key = (number, names)
    blob = _NAMES.get(key)
    if blob is None:
        if len(_NAMES) > 64:
            _NAMES.clear()
        blob = _NAMES[key] = b"".join(field_bytes(number, n) for n in sorted(names))
    return blob


def version_entry(name: str, version: str) -> bytes:
    """One ``initial_resource_versions`` map entry (field 5), memoized: clients share them."""
    entry = _ENTRIES.get((name, version))
    if entry is None:
        if len(_ENTRIES) > 1_000_000:
            _ENTRIES.clear()
        entry = _ENTRIES[(name, version)] = field_bytes(
            5, field_bytes(1, name) + field_bytes(2, version)
        )
    return entry


def node_bytes(node_id: str, cluster: str) -> bytes:
    """``envoy.config.core.v3.Node`` with ``id`` (1) and ``cluster`` (2)."""
    return field_bytes(1, node_id) + field_bytes(2, cluster)


def route_names(listener_body: bytes) -> tuple[str, ...]:
    """Route configurations a Listener's HTTP connection managers fetch over RDS (Envoy's
    listener -> route dependency; a TCP proxy listener names none)."""
    listener = listener_pb2.Listener.FromString(listener_body)
    names = []
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.typed_config.type_url.endswith(".HttpConnectionManager"):
                hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                if hcm.HasField("rds"):
                    names.append(sys.intern(hcm.rds.route_config_name))
    return tuple(names)


def covers(held: Container[str], names: Iterable[str]) -> bool:
    """Every one of ``names`` is in ``held`` (a set or a dict; no conversion to a set)."""
    return all(n in held for n in names)


def address_pattern(address: str) -> bytes:
    """The bytes that open a SocketAddress of ``address`` followed by its ``port_value``.

    SocketAddress is ``address`` (2) then ``port_value`` (3); both meshd's deterministic
    serialization and the floor's write them adjacent, so the port follows this pattern.
    """
    return b"\x12" + encode_varint(len(address)) + address.encode() + b"\x18"


def marker_ids(cla_body: bytes, pattern: bytes, base: int) -> list[int]:
    """Change ids in a ClusterLoadAssignment: ``port - base`` of the marker address's ports.

    A byte search instead of a protobuf parse: every client runs this on every response
    carrying the marker resource, and walking the parsed message costs ~50 us in Python.
    """
    found = []
    pos = cla_body.find(pattern)
    while pos >= 0:
        i = pos + len(pattern)
        port, shift = 0, 0
        while i < len(cla_body):
            b = cla_body[i]
            i += 1
            port |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        if base <= port < base + MARKER_SPAN:
            found.append(port - base)
        pos = cla_body.find(pattern, i)
    return found


def route_marker_ids(body: bytes, mark: bytes) -> list[int]:
    """Change ids in a RouteConfiguration: the decimal digits after each ``mark``."""
    found = []
    pos = body.find(mark)
    while pos >= 0:
        i = end = pos + len(mark)
        while end < len(body) and 0x30 <= body[end] <= 0x39:
            end += 1
        if end > i:
            found.append(int(body[i:end]))
        pos = body.find(mark, end)
    return found


# --------------------------------------------------------------------------- clients


@dataclass
class ClientConfig:
    """What every client of one ``add`` command shares."""

    target: str
    node_cluster: str = "sidecar"
    marker: str = "s0.default"
    marker_address: str = "10.0.0.0"
    base: int = MARKER_BASE
    backoff: tuple[float, float] = (0.1, 0.5)
    node_prefix: str = "lg"
    root_certs: str = ""  # PEM bundle: dial over TLS trusting only it (else plaintext)
    token: str = ""  # join token, sent as ``authorization: Bearer`` on every stream
    route: str = ""  # route configuration whose routes carry route change ids (see above)
    route_mark: str = ""  # the bytes before a route change id in it
    targets: tuple[str, ...] = ()  # every meshd replica: a failed stream tries the next one


@dataclass
class StormWatch:
    """Responses a client got after it reconnected, judged against what it held before.

    ``same``: a type (SotW) or resource (Delta) sent again at the version the client already
    held. ``different``: a version other than the one it held, or a removal. Neither should
    happen when nothing changed in the registry.
    """

    same: Counter[str] = field(default_factory=Counter)
    different: Counter[str] = field(default_factory=Counter)
    responses: int = 0
    last_at: float = 0.0
    samples: list[str] = field(default_factory=list)  # the first few, for the report

    def note(self, what: str) -> None:
        if len(self.samples) < 3:
            self.samples.append(what)


class Client:
    """One simulated proxy: a task that keeps one ADS stream open and follows the protocol."""

    protocol = ""
    method = ""

    def __init__(self, pool: Pool, cid: int, cfg: ClientConfig) -> None:
        self.pool = pool
        self.id = cid
        self.cfg = cfg
        self.target = cfg.target
        self.pattern = address_pattern(cfg.marker_address)
        self.route_mark = cfg.route_mark.encode()
        self.node = node_bytes(f"{cfg.node_prefix}-{self.protocol}-{cid}", cfg.node_cluster)
        self.task: asyncio.Task[None] | None = None
        self.streams = 0  # streams opened (first requests written)
        self.opened_at = 0.0  # when the current stream's first requests were written
        self.errors: Counter[str] = Counter()
        self.responses = 0
        self.complete_at: float | None = None
        self.watch: StormWatch | None = None
        self.clusters: frozenset[str] = frozenset()
        self.routes: frozenset[str] = frozenset()  # route configurations the listeners name
        self.lds_started = False  # listeners are asked for once the clusters are warm
        self.got_lds = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"client-{self.id}")

    def reconnect(self, target: str) -> None:
        """Drop the stream now and open a new one to ``target`` (no back-off), keeping state."""
        old = self.task
        self.target = target
        self.watch = StormWatch()
        self.opened_at = 0.0
        self.task = asyncio.create_task(self._restart(old), name=f"client-{self.id}")

    async def _restart(self, old: asyncio.Task[None] | None) -> None:
        if old is not None:
            old.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await old
        await self._run()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        attempt = 0
        while True:
            channel = self.pool.channel(self.target, self.cfg)
            try:
                call = channel.stream_stream(
                    self.method,
                    request_serializer=None,  # requests are pre-encoded bytes
                    response_deserializer=self.decode,
                )(metadata=self.pool.metadata(self.cfg), wait_for_ready=True)
                for req in self.first_requests():
                    await call.write(req)
                self.streams += 1
                self.opened_at = time.monotonic()
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        self.errors["EOF"] += 1
                        break
                    now = time.monotonic()
                    attempt = 0
                    self.responses += 1
                    for req in self.on_response(resp, now):
                        await call.write(req)
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                self.errors[code] += 1
                self.pool.error_details.setdefault(code, str(exc.details())[:300])
            except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                self.errors[type(exc).__name__] += 1
            finally:
                await channel.close()
            if self.cfg.targets:
                # As Envoy's ADS cluster over several replicas: the next stream goes to
                # another host (round robin), so a dead replica is left at once.
                at = self.cfg.targets.index(self.target) if self.target in self.cfg.targets else -1
                self.target = self.cfg.targets[(at + 1) % len(self.cfg.targets)]
            # Envoy's jittered exponential back-off between base and max.
            base, cap = self.cfg.backoff
            await asyncio.sleep(min(cap, base * 2**attempt) * random.uniform(0.5, 1.0))
            attempt = min(attempt + 1, 10)

    # -- protocol -------------------------------------------------------------------------

    def decode(self, data: bytes) -> Any:
        raise NotImplementedError

    def first_requests(self) -> list[bytes]:
        raise NotImplementedError

    def on_response(self, resp: Any, now: float) -> list[bytes]:
        raise NotImplementedError

    def _marker(self, body: bytes, now: float) -> None:
        for change in marker_ids(body, self.pattern, self.cfg.base):
            self.pool.arrive(change, self.id, now)

    def _route_marker(self, body: bytes, now: float) -> None:
        if not self.route_mark:
            return
        for change in route_marker_ids(body, self.route_mark):
            self.pool.arrive(change, self.id, now)

    def _check_complete(self, now: float, eds: Container[str], rds: Container[str]) -> None:
        """Complete: clusters, the endpoints of every one, listeners and their routes held."""
        if self.complete_at is not None or not self.got_lds:
            return
        if not covers(eds, self.clusters) or not covers(rds, self.routes):
            return
        self.complete_at = now
        self.pool.completed(self)


class SotwClient(Client):
    """State of the world: one request per type, ACKed by version_info and nonce."""

    protocol = "sotw"
    method = SOTW_METHOD

    def __init__(self, pool: Pool, cid: int, cfg: ClientConfig) -> None:
        super().__init__(pool, cid, cfg)
        self.version: dict[str, str] = {}  # last ACKed version_info per type
        self.nonce: dict[str, str] = {}  # last nonce received per type
        self.started: set[str] = set()  # types requested at least once
        self.names: dict[str, bytes] = {EDS: b"", RDS: b""}  # encoded resource_names
        self.eds_held: set[str] = set()
        self.rds_held: set[str] = set()

    decode = staticmethod(discovery_pb2.DiscoveryResponse.FromString)

    def _request(self, t: str, *, node: bool = False, nonce: bool = True) -> bytes:
        parts = [field_bytes(1, self.version[t])] if self.version.get(t) else []
        if node:
            parts.append(field_bytes(2, self.node))
        parts.append(self.names.get(t, b""))
        parts.append(field_bytes(4, t))
        if nonce and self.nonce.get(t):
            parts.append(field_bytes(5, self.nonce[t]))
        self.started.add(t)
        return b"".join(parts)

    def first_requests(self) -> list[bytes]:
        # A new stream: every type held so far is asked for again with the version held
        # (Envoy's behaviour); on the very first stream, CDS only. Nonces are per stream.
        self.nonce.clear()
        types = [t for t in TYPES if t in self.started] or [CDS]
        return [self._request(t, node=i == 0, nonce=False) for i, t in enumerate(types)]

    def _set_names(self, t: str, names: frozenset[str]) -> None:
        self.names[t] = encoded_names(3, names)

    def on_response(self, resp: discovery_pb2.DiscoveryResponse, now: float) -> list[bytes]:
        t = resp.type_url
        if self.watch is not None:
            w = self.watch
            w.responses += 1
            w.last_at = now
            held = self.version.get(t)
            (w.same if resp.version_info == held else w.different)[SHORT.get(t, t)] += 1
            w.note(
                f"{self.protocol} {self.id} {SHORT.get(t, t)} held {held} got "
                f"{resp.version_info} ({len(resp.resources)} resources) "
                f"{now - self.opened_at:.3f}s after the stream opened"
            )
        self.nonce[t] = resp.nonce
        self.version[t] = resp.version_info
        out = [self._request(t)]  # the ACK
        if t == CDS:
            clusters = frozenset(first_string(a.value) for a in resp.resources)
            if clusters != self.clusters:
                self.clusters = clusters
                self.eds_held &= clusters
                self._set_names(EDS, clusters)
                out.append(self._request(EDS))
        elif t == EDS:
            marker = self.cfg.marker
            for a in resp.resources:
                body = a.value
                name = first_string(body)
                self.eds_held.add(name)
                if name == marker:
                    self._marker(body, now)
            if not self.lds_started and self.clusters.issubset(self.eds_held):
                # Envoy asks for listeners once its clusters are warm.
                self.lds_started = True
                out.append(self._request(LDS))
        elif t == LDS:
            self.got_lds = True
            routes = frozenset(n for a in resp.resources for n in route_names(a.value))
            if routes != self.routes:
                self.routes = routes
                self.rds_held &= routes
                self._set_names(RDS, routes)
                out.append(self._request(RDS))
        elif t == RDS:
            for a in resp.resources:
                name = first_string(a.value)
                self.rds_held.add(name)
                if name == self.cfg.route:
                    self._route_marker(a.value, now)
        self._check_complete(now, self.eds_held, self.rds_held)
        return out


class DeltaClient(Client):
    """Incremental: subscriptions as deltas, ACK by nonce, versions per resource."""

    protocol = "delta"
    method = DELTA_METHOD

    def __init__(self, pool: Pool, cid: int, cfg: ClientConfig) -> None:
        super().__init__(pool, cid, cfg)
        self.held: dict[str, dict[str, str]] = {t: {} for t in TYPES}
        self.subscribed: dict[str, set[str]] = {EDS: set(), RDS: set()}
        self.listener_routes: dict[str, tuple[str, ...]] = {}  # Delta LDS sends only changes
        self.started: set[str] = set()

    decode = staticmethod(discovery_pb2.DeltaDiscoveryResponse.FromString)

    def _subscribe(
        self, t: str, add: frozenset[str], remove: frozenset[str] = frozenset()
    ) -> bytes:
        parts = [field_bytes(2, t), encoded_names(3, add), encoded_names(4, remove)]
        self.started.add(t)
        return b"".join(parts)

    def first_requests(self) -> list[bytes]:
        types = [t for t in TYPES if t in self.started] or [CDS]
        out = []
        for i, t in enumerate(types):
            parts = [field_bytes(1, self.node)] if i == 0 else []
            parts.append(field_bytes(2, t))
            # Wildcard types subscribe to nothing by name (legacy wildcard), like Envoy.
            parts.append(encoded_names(3, frozenset(self.subscribed.get(t, ()))))
            parts += [version_entry(n, v) for n, v in self.held[t].items()]
            out.append(b"".join(parts))
            self.started.add(t)
        return out

    def on_response(self, resp: discovery_pb2.DeltaDiscoveryResponse, now: float) -> list[bytes]:
        t = resp.type_url
        held = self.held.setdefault(t, {})
        w = self.watch
        if w is not None:
            w.responses += 1
            w.last_at = now
        marker = self.cfg.marker if t == EDS else None
        intern = sys.intern
        for r in resp.resources:
            name = intern(r.name)
            version = intern(r.version)
            if w is not None:
                counter = w.same if held.get(name) == version else w.different
                counter[SHORT.get(t, t)] += 1
                w.note(
                    f"{self.protocol} {self.id} {SHORT.get(t, t)} {name} held "
                    f"{held.get(name)} got {version} {now - self.opened_at:.3f}s after the "
                    "stream opened"
                )
            held[name] = version
            if name == marker:
                self._marker(r.resource.value, now)
            elif t == LDS:
                self.listener_routes[name] = route_names(r.resource.value)
            elif t == RDS and name == self.cfg.route:
                self._route_marker(r.resource.value, now)
        for name in resp.removed_resources:
            if w is not None:
                w.different[SHORT.get(t, t)] += 1
            held.pop(name, None)
            if t == LDS:
                self.listener_routes.pop(name, None)
        out = [field_bytes(2, t) + field_bytes(6, resp.nonce)]  # the ACK
        if t == CDS:
            self.clusters = frozenset(held)
            out += self._follow(EDS, self.clusters)
        elif t == EDS:
            if not self.lds_started and covers(held, self.clusters):
                self.lds_started = True
                out.append(self._subscribe(LDS, frozenset()))
        elif t == LDS:
            self.got_lds = True
            self.routes = frozenset(n for names in self.listener_routes.values() for n in names)
            out += self._follow(RDS, self.routes)
        self._check_complete(now, self.held[EDS], self.held[RDS])
        return out

    def _follow(self, t: str, want: frozenset[str]) -> list[bytes]:
        """Subscribe ``t`` (EDS/RDS) to exactly ``want``; forget what was unsubscribed."""
        subscribed = self.subscribed[t]
        add, remove = want - subscribed, frozenset(subscribed - want)
        if not add and not remove:
            return []
        subscribed |= add
        subscribed -= remove
        for name in remove:
            self.held[t].pop(name, None)
        return [self._subscribe(t, add, remove)]


# --------------------------------------------------------------------------- the process


class Pool:
    """Every client of this process, the arrivals they recorded, and the command handler."""

    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.arrivals: dict[int, dict[int, float]] = {}
        self._change_waiters: dict[int, asyncio.Event] = {}
        self._complete = asyncio.Event()
        self._completed = 0
        self._options: dict[tuple[float, float], list[tuple[str, Any]]] = {}
        self._credentials: dict[str, grpc.ChannelCredentials] = {}
        self._pending: list[asyncio.TimerHandle] = []  # clients an ``add`` spread out
        self.storm_started = 0.0
        self.error_details: dict[str, str] = {}  # the first message seen per status code

    def options(self, cfg: ClientConfig) -> list[tuple[str, Any]]:
        opts = self._options.get(cfg.backoff)
        if opts is None:
            opts = self._options[cfg.backoff] = channel_options(cfg.backoff)
        return opts

    def channel(self, target: str, cfg: ClientConfig) -> grpc.aio.Channel:
        """A new channel (its own connection) to ``target``: over TLS trusting
        ``cfg.root_certs`` when set (each connection makes its own handshake, as each Envoy
        does), else plaintext."""
        if not cfg.root_certs:
            return grpc.aio.insecure_channel(target, options=self.options(cfg))
        creds = self._credentials.get(cfg.root_certs)
        if creds is None:
            # One credentials object per bundle: parsing the PEM is not what is measured.
            creds = grpc.ssl_channel_credentials(root_certificates=cfg.root_certs.encode())
            self._credentials[cfg.root_certs] = creds
        return grpc.aio.secure_channel(target, creds, options=self.options(cfg))

    @staticmethod
    def metadata(cfg: ClientConfig) -> tuple[tuple[str, str], ...] | None:
        """The join token as Envoy's bootstrap sends it (``initial_metadata``), if any."""
        return (("authorization", f"Bearer {cfg.token}"),) if cfg.token else None

    # -- callbacks from clients ------------------------------------------------------------

    def arrive(self, change: int, cid: int, now: float) -> None:
        got = self.arrivals.setdefault(change, {})
        if cid in got:
            return  # only the first arrival of a change counts
        got[cid] = now
        if len(got) >= len(self.clients):
            waiter = self._change_waiters.get(change)
            if waiter is not None:
                waiter.set()

    def completed(self, client: Client) -> None:
        self._completed += 1
        if self._completed >= len(self.clients):
            self._complete.set()

    # -- commands ---------------------------------------------------------------------------

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Run one command; return its JSON-able answer. Times are ``time.monotonic()``.

        - ``add``: ``target``, ``sotw``, ``delta`` (counts), optional ``node_cluster``,
          ``marker``, ``base``, ``backoff`` [base, max] s, ``first_id``, ``node_prefix``,
          ``root_certs`` (PEM: dial over TLS trusting it), ``token`` (join token), ``route``
          and ``route_mark`` (route change ids: see the module's docstring), ``targets``
          (every meshd replica: after a failed stream a client dials the next), ``spread``
          (s: client i starts at ``spread * i / n``, else all at once): start that many
          clients -> ``{"clients": total}``.
        - ``wait_complete`` (``timeout``) -> ``complete``, ``total``, ``first``, ``last``.
        - ``wait_change`` (``id``, ``timeout``) -> ``times``: one arrival per client that got it
          (``by_client``: also ``by_client``, client id -> arrival).
        - ``status`` -> counts of streams, errors, responses, complete clients.
        - ``lag`` (``written``: change id -> when it was written, ``over`` s): per change,
          the worst delay over the clients until each held it or a later change (a client
          that reconnects after missing some gets only the newest), how many clients took
          longer than ``over`` and how many do not hold it yet; arrivals of changes up to
          the newest one asked are then forgotten (a long run keeps its memory flat) ->
          ``lags``, ``late``, ``behind`` (by change id).
        - ``storm`` (``targets``, ``spread`` s): client i drops its stream at
          ``spread * i / n`` and reconnects to ``targets[i % len(targets)]`` -> ``started``.
        - ``wait_reopened`` (``timeout``) -> ``reopened``, ``last``: streams open again.
        - ``watch``: from now on, judge every response against what the client held.
        - ``storm_report`` -> what reconnected (or watched) clients were sent since; see
          :class:`StormWatch`.
        - ``stop``: close every client; ``quit``: stop and exit.
        """
        op = cmd["op"]
        if op == "add":
            return self._add(cmd)
        if op == "wait_complete":
            return await self._wait_complete(float(cmd.get("timeout", 60)))
        if op == "wait_change":
            answer = await self._wait_change(int(cmd["id"]), float(cmd.get("timeout", 10)))
            if cmd.get("by_client"):
                answer["by_client"] = self.arrivals.get(int(cmd["id"]), {})
            return answer
        if op == "status":
            return self._status()
        if op == "lag":
            written = {int(k): float(v) for k, v in cmd["written"].items()}
            return self._lag(written, float(cmd.get("over", 2.0)))
        if op == "storm":
            return self._storm(list(cmd["targets"]), float(cmd.get("spread", 1.0)))
        if op == "wait_reopened":
            return await self._wait_reopened(float(cmd.get("timeout", 10)))
        if op == "watch":
            for c in self.clients:
                c.watch = StormWatch()
            return {"watching": len(self.clients)}
        if op == "storm_report":
            return self._storm_report()
        if op in ("stop", "quit"):
            for timer in self._pending:
                timer.cancel()  # clients not started yet never start
            await asyncio.gather(*(c.stop() for c in self.clients))
            return {"stopped": len(self.clients)}
        raise ValueError(f"unknown op {op!r}")

    def _add(self, cmd: dict[str, Any]) -> dict[str, Any]:
        cfg = ClientConfig(
            target=cmd["target"],
            node_cluster=cmd.get("node_cluster", "sidecar"),
            marker=cmd.get("marker", "s0.default"),
            marker_address=cmd.get("marker_address", "10.0.0.0"),
            base=int(cmd.get("base", MARKER_BASE)),
            backoff=tuple(cmd.get("backoff", (0.1, 0.5))),  # type: ignore[arg-type]
            node_prefix=cmd.get("node_prefix", f"lg{os.getpid()}"),
            root_certs=cmd.get("root_certs", ""),
            token=cmd.get("token", ""),
            route=cmd.get("route", ""),
            route_mark=cmd.get("route_mark", ""),
            targets=tuple(cmd.get("targets", ())),
        )
        next_id = int(cmd.get("first_id", len(self.clients)))
        new: list[Client] = []
        for kind, n in (
            (SotwClient, int(cmd.get("sotw", 0))),
            (DeltaClient, int(cmd.get("delta", 0))),
        ):
            for _ in range(n):
                new.append(kind(self, next_id, cfg))
                next_id += 1
        self.clients += new
        self._complete.clear()
        spread = float(cmd.get("spread", 0))
        if spread > 0:
            loop = asyncio.get_running_loop()
            for i, c in enumerate(new):
                self._pending.append(loop.call_later(spread * i / len(new), c.start))
        else:
            for c in new:
                c.start()
        return {"clients": len(self.clients)}

    async def _wait_complete(self, timeout: float) -> dict[str, Any]:
        if self._completed < len(self.clients):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._complete.wait(), timeout)
        done = [c.complete_at for c in self.clients if c.complete_at is not None]
        return {
            "complete": len(done),
            "total": len(self.clients),
            "first": min(done, default=None),
            "last": max(done, default=None),
            **self._status(),
        }

    async def _wait_change(self, change: int, timeout: float) -> dict[str, Any]:
        got = self.arrivals.setdefault(change, {})
        if len(got) < len(self.clients):
            waiter = self._change_waiters.setdefault(change, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), timeout)
            self._change_waiters.pop(change, None)
        missing = [c.id for c in self.clients if c.id not in got]
        return {"times": list(got.values()), "missing": missing[:20], "n_missing": len(missing)}

    def _status(self) -> dict[str, Any]:
        errors: Counter[str] = Counter()
        for c in self.clients:
            errors.update(c.errors)
        return {
            "clients": len(self.clients),
            "complete_clients": sum(c.complete_at is not None for c in self.clients),
            "streams": sum(c.streams for c in self.clients),
            "responses": sum(c.responses for c in self.clients),
            "errors": dict(errors),
            "error_details": self.error_details,
            "rss_kb": rss_kb(os.getpid()),
        }

    def _lag(self, written: dict[int, float], over: float) -> dict[str, Any]:
        if not written:
            return {"lags": {}, "late": {}, "behind": {}}
        lowest, newest = min(written), max(written)
        held: dict[int, float] = {}  # client -> first arrival of any change >= the one at hand
        lags: dict[str, float] = {}
        late: dict[str, int] = {}
        behind: dict[str, int] = {}
        # (a change no client got on its own, coalesced into a later one, is held with it)
        changes = {c for c in self.arrivals if c >= lowest} | set(written)
        for change in sorted(changes, reverse=True):
            for cid, at in self.arrivals.get(change, {}).items():
                held[cid] = min(at, held.get(cid, at))
            if change in written:
                got = [held[c.id] for c in self.clients if c.id in held]
                lags[str(change)] = max(got, default=written[change]) - written[change]
                late[str(change)] = sum(1 for at in got if at - written[change] > over)
                behind[str(change)] = len(self.clients) - len(got)
        for change in [c for c in self.arrivals if c <= newest]:
            del self.arrivals[change]
        return {"lags": lags, "late": late, "behind": behind}

    def _storm(self, targets: Sequence[str], spread: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self.storm_started = time.monotonic()
        n = len(self.clients)
        per_target: Counter[str] = Counter()
        for i, c in enumerate(self.clients):
            target = targets[i % len(targets)]
            per_target[target] += 1
            loop.call_later(spread * i / max(n, 1), c.reconnect, target)
        return {"started": self.storm_started, "per_target": dict(per_target)}

    async def _wait_reopened(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.watch is not None and c.opened_at for c in self.clients):
                break
            await asyncio.sleep(0.01)
        opened = [c.opened_at for c in self.clients if c.watch is not None and c.opened_at]
        return {
            "reopened": len(opened),
            "total": len(self.clients),
            "last": max(opened, default=None),
        }

    def _storm_report(self) -> dict[str, Any]:
        same: Counter[str] = Counter()
        different: Counter[str] = Counter()
        clients_sent = 0
        samples: list[str] = []
        last = 0.0
        by_protocol: Counter[str] = Counter()
        for c in self.clients:
            w, c.watch = c.watch, None
            if w is None:
                continue
            same.update(w.same)
            different.update(w.different)
            if w.responses:
                clients_sent += 1
                samples += w.samples[: max(0, 10 - len(samples))]
                by_protocol[c.protocol] += 1
                last = max(last, w.last_at)
        return {
            "same": dict(same),
            "different": dict(different),
            "clients_sent_anything": clients_sent,
            "by_protocol": dict(by_protocol),
            "samples": samples,
            "last_response": last or None,
        }


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` as the OS sees it (``VmRSS``), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def serve_stdio() -> None:
    """The command loop: one JSON command per stdin line, one JSON answer per stdout line."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pool = Pool()
    out = sys.stdout
    out.write(json.dumps({"ready": os.getpid()}) + "\n")
    out.flush()
    while line := await reader.readline():
        cmd = json.loads(line)
        try:
            answer = await pool.handle(cmd)
        except Exception as exc:  # report to the driver instead of dying silently
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
        if cmd.get("op") == "quit":
            break
    await pool.handle({"op": "stop"})


def main() -> None:
    raise_nofile_limit()
    profile = os.environ.get("LOADGEN_PROFILE")
    if profile:  # where does the client's own time go? (cProfile output file)
        import cProfile

        cProfile.run("asyncio.run(serve_stdio())", f"{profile}.{os.getpid()}")
    else:
        asyncio.run(serve_stdio())
    # grpc's threads can hold the interpreter at exit for seconds; nothing is left to flush.
    os._exit(0)


# --------------------------------------------------------------------------- the driver side


class LoadGen:
    """A ``python -m integration.loadgen`` process, driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, log: IO[bytes]) -> None:
        self.proc = proc
        self._log = log
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, log_path: Path) -> LoadGen:
        """Start a load generator process; its stderr (gRPC's chatter) goes to ``log_path``."""
        log = log_path.open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "integration.loadgen",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            limit=1 << 24,
            start_new_session=True,
        )
        self = cls(proc, log)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError(f"loadgen exited at start; see {log_path}")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one command and return its answer (RuntimeError if it failed)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"loadgen {self.pid} died during {op}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"loadgen {op}: {answer['error']}")
        return answer

    async def close(self) -> None:
        """Ask the process to quit; kill it if it does not."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call("quit"), 10)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._log.close()


class LoadGenGroup:
    """Clients spread over one or more load generator processes, used as one."""

    def __init__(self, gens: list[LoadGen]) -> None:
        self.gens = gens
        self.total = 0

    @classmethod
    async def start(cls, procs: int, log_dir: Path, tag: str = "loadgen") -> LoadGenGroup:
        gens = [await LoadGen.start(log_dir / f"{tag}-{i}.log") for i in range(procs)]
        return cls(gens)

    @property
    def pids(self) -> list[int]:
        return [g.pid for g in self.gens]

    async def add(self, target: str, sotw: int = 0, delta: int = 0, **kw: Any) -> None:
        """Start ``sotw`` + ``delta`` clients, split evenly over the processes."""
        k = len(self.gens)
        calls = []
        for i, g in enumerate(self.gens):
            s, d = sotw // k + (i < sotw % k), delta // k + (i < delta % k)
            if s or d:
                calls.append(g.call("add", target=target, sotw=s, delta=d, **kw))
        await asyncio.gather(*calls)
        self.total += sotw + delta

    async def wait_complete(self, timeout: float) -> dict[str, Any]:
        parts = await asyncio.gather(*(g.call("wait_complete", timeout=timeout) for g in self.gens))
        return _merge(parts)

    async def wait_change(self, change: int, timeout: float) -> tuple[list[float], int]:
        """Arrival times of change ``change`` at every client, and how many never got it."""
        parts = await asyncio.gather(
            *(g.call("wait_change", id=change, timeout=timeout) for g in self.gens)
        )
        times = [t for p in parts for t in p["times"]]
        return times, sum(p["n_missing"] for p in parts)

    async def arrivals(self, change: int, timeout: float) -> dict[str, float]:
        """When each client got change ``change`` (by process and client id), waiting up to
        ``timeout`` for every client to get it."""
        parts = await asyncio.gather(
            *(g.call("wait_change", id=change, timeout=timeout, by_client=True) for g in self.gens)
        )
        return {f"{i}/{cid}": t for i, p in enumerate(parts) for cid, t in p["by_client"].items()}

    async def status(self) -> dict[str, Any]:
        return _merge(await asyncio.gather(*(g.call("status") for g in self.gens)))

    async def lag(
        self, written: dict[int, float], over: float
    ) -> tuple[dict[int, float], dict[int, int], dict[int, int]]:
        """Per change id: the worst delay over every client until it held that change or a
        later one, how many clients took longer than ``over`` seconds, and how many do not
        hold it yet (see ``lag`` in :meth:`Pool.handle`)."""
        asked = {str(k): v for k, v in written.items()}
        parts = await asyncio.gather(*(g.call("lag", written=asked, over=over) for g in self.gens))
        lags: dict[int, float] = {}
        late: dict[int, int] = {}
        behind: dict[int, int] = {}
        for p in parts:
            for k, v in p["lags"].items():
                lags[int(k)] = max(v, lags.get(int(k), 0.0))
            for key, counts in (("late", late), ("behind", behind)):
                for k, n in p[key].items():
                    counts[int(k)] = counts.get(int(k), 0) + n
        return lags, late, behind

    async def storm(self, targets: list[str], spread: float) -> dict[str, int]:
        """Start the storm in every process; how many clients go to each target."""
        parts = await asyncio.gather(
            *(g.call("storm", targets=targets, spread=spread) for g in self.gens)
        )
        per_target: dict[str, int] = _merge(parts)["per_target"]
        return per_target

    async def wait_reopened(self, timeout: float) -> dict[str, Any]:
        return _merge(
            await asyncio.gather(*(g.call("wait_reopened", timeout=timeout) for g in self.gens))
        )

    async def watch(self) -> None:
        await asyncio.gather(*(g.call("watch") for g in self.gens))

    async def storm_report(self) -> dict[str, Any]:
        return _merge(await asyncio.gather(*(g.call("storm_report") for g in self.gens)))

    async def close(self) -> None:
        await asyncio.gather(*(g.close() for g in self.gens))


def _merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Combine per-process answers: sum counts, min ``first``, max ``last``, merge counters."""
    out: dict[str, Any] = {}
    for p in parts:
        for k, v in p.items():
            if v is None:
                out.setdefault(k, None)
            elif k == "first":
                out[k] = v if out.get(k) is None else min(out[k], v)
            elif k in ("last", "last_response", "started"):
                out[k] = v if out.get(k) is None else max(out[k], v)
            elif isinstance(v, list):
                out[k] = [*(out.get(k) or []), *v]
            elif k == "error_details":
                out[k] = {**v, **(out.get(k) or {})}
            elif isinstance(v, dict):
                merged: Counter[str] = Counter(out.get(k) or {})
                merged.update(v)
                out[k] = dict(merged)
            elif isinstance(v, int | float):
                out[k] = out.get(k, 0) + v
            else:
                out[k] = v
    return out


if __name__ == "__main__":
    main()
