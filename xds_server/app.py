"""Composition root: registry -> controller -> cache -> xDS gRPC server, plus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import ipaddress
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from adapters.dns import DnsCache
from xds_server.admin.auth import Authenticator
from xds_server.admin.replicas import Replicas, ReplicasCollector
from xds_server.admin.server import start_admin_server
from xds_server.admin.service import AdminServicer
from xds_server.cache import ConfigCache
from xds_server.events import EventBus
from xds_server.health.hds import HdsServicer, HealthCollector, HealthService
from xds_server.health.sync import HealthSync
from xds_server.health.transitions import HealthTransitions
from xds_server.identity.ca import SERVER_LIFETIME, IssuedCertificate, MeshCA, generate_root
from xds_server.identity.issuer import CertificateIssuer
from xds_server.identity.serving import ServingCertificate
from xds_server.identity.store import load_mesh_ca
from xds_server.ingest.controller import COALESCE_S, Controller
from xds_server.ingest.inputs import Certificates, DnsAnswers, HealthVerdicts
from xds_server.ingest.registry import Registry, WritableRegistry
from xds_server.listen import ListenError, bind_grpc, check_free, listen_reason, parse_listen
from xds_server.metrics import Metrics, RegistryCounters, SecretExpiry
from xds_server.metrics_http import HEADER_TIMEOUT_S, MAX_CONNECTIONS, MetricsServer
from xds_server.metrics_sd import DISCONNECTED_KEEP_S, ProxyTarget, RecentTargets, sd_listable
from xds_server.model import ServiceRef
from xds_server.model.identity import DEFAULT_TRUST_DOMAIN
from xds_server.model.join_token import TOKENS_DIR
from xds_server.model.view import ChangeSet, RegistryView
from xds_server.server.ads import AdsServicer, StreamRegistry
from xds_server.server.heap_trim import HeapTrimmer
from xds_server.server.observers import (
    StreamActivity,
    StreamConvergence,
    StreamEvents,
    StreamMetrics,
    StreamPresence,
)
from xds_server.stream_limits import DEFAULT_SHARED_WIRE_MB, StreamGuard, StreamLimits
from xds_server.token_authority import TokenAuthority
from xds_server.topology.lrs import LrsServicer, TopologyCollector, TopologyService

if TYPE_CHECKING:
    from collections.abc import Mapping

    from xds_server.console import Console

log = logging.getLogger("meshd")

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""A full config for thousands of services exceeds gRPC's 4 MiB default receive limit
(``docs/xds.md``, point 8)."""

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    # Proxies keep their stream for hours: detect dead peers without relying on TCP timeouts.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # A port in use must fail to bind, not be shared with whatever listens there.
    ("grpc.so_reuseport", 0),
]


@dataclass
class MeshConfig:
    """What meshd listens on (see ``meshd --help``)."""

    xds: str = "127.0.0.1:18000"
    metrics: str | None = "127.0.0.1:9102"
    report_interval_ms: int = 10_000
    """LRS report period asked of every proxy; HDS reports too, unless a check is faster."""
    coalesce_window: float = COALESCE_S
    """Seconds: endpoint updates to a service whose last push of them is in flight (less
    than this long ago, or not answered yet) go out together after it (ingest/controller.py);
    0: never held."""
    replica_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """This meshd among the replicas sharing its etcd (``--replica-id``): names its health
    document and its replica record there, and is the REPLICA of its proxies."""
    advertise_admin: str | None = None
    """Where the other replicas reach this one's admin API (``--advertise-admin``); None:
    ``--admin``'s address, a wildcard host replaced by this host's address."""
    admin: str | None = None  # admin gRPC API; meshd passes --admin (127.0.0.1:18001)
    console: str | None = None
    """The web console's listen address (``--console``; needs ``admin``); None: off."""
    auth: Authenticator = field(default_factory=lambda: Authenticator(None))
    heap_trim_quiet: float = 1.0
    """Give freed memory back to the OS once streams and registry were quiet this long (s)."""
    heap_trim_max_delay: float = 10.0
    """... or at the latest this long after the first activity since the last trim (s)."""
    sd_keep_disconnected_s: float = DISCONNECTED_KEEP_S
    """How long a proxy stays in ``/sd/envoy`` after its stream closed (s)."""
    metrics_header_timeout_s: float = HEADER_TIMEOUT_S
    """Seconds a metrics port connection has to send its request headers."""
    metrics_max_connections: int = MAX_CONNECTIONS
    """Connections open at once on the metrics port."""
    xds_tls: bool = False
    """xDS and the admin API over TLS, with a serving certificate from the mesh CA
    (``--xds-tls on``)."""
    server_names: tuple[str, ...] = ()
    """DNS names of meshd's serving certificate (``--server-names``); empty: ``localhost``,
    ``meshd`` and the host name. The IPs it binds are added."""
    xds_auth: bool = False
    """Every ADS, HDS and LRS stream must present a join token (``--xds-auth required``);
    then ``MeshApp`` needs ``tokens``, a registry of the ``<prefix>tokens/`` keys."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    """SPIFFE trust domain of the mesh's identities (``--trust-domain``)."""
    operator_ca: tuple[bytes, bytes] | None = None
    """An operator's CA or intermediate (cert chain PEM, key PEM) instead of the mesh CA
    kept in etcd (``--ca-cert``/``--ca-key``)."""
    cert_ttl_s: float = 24 * 3600.0
    """Lifetime of workload certificates (``--cert-ttl``; the CLI refuses under 5 minutes)."""
    test_only_cert_ttl_s: float | None = None
    """TEST ONLY: a workload certificate lifetime below the 5-minute floor, so tests see a
    rotation in seconds. No flag sets it."""
    data_dir: str | None = None
    """Where meshd writes ``ca.pem`` (the trust bundle) at start; None: nowhere."""
    xds_limits: StreamLimits = field(default_factory=StreamLimits)
    """What one xDS client may cost: names, streams per address, request rate, responses
    queued (``--xds-max-*``, ``--xds-request-*``)."""
    shared_cache_mb: int = DEFAULT_SHARED_WIRE_MB
    """Encoded responses kept to share between streams (``--xds-shared-cache-mb``)."""


def default_server_names() -> tuple[str, ...]:
    """``localhost``, ``meshd`` and this host's name: the DNS names of meshd's serving
    certificate unless ``--server-names`` says otherwise."""
    names = ["localhost", "meshd"]
    host = socket.gethostname()
    if host and host not in names:
        names.append(host)
    return tuple(names)


def advertised(address: str, port: int) -> str:
    """``host:port`` where others reach a server bound to ``address`` on ``port``: a
    wildcard host (``0.0.0.0``, ``::``) is replaced by this host's own address."""
    host = parse_listen("", address)[0]
    if host in ("0.0.0.0", "::"):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MeshApp:
    """One control plane instance. ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        registry: Registry,
        config: MeshConfig | None = None,
        *,
        tokens: Registry | None = None,
    ) -> None:
        """``tokens``: a registry whose prefix is ``<prefix>tokens/`` (the join tokens
        are listed and watched through it); needed with ``config.xds_auth``."""
        self.registry = registry
        self.config = config or MeshConfig()
        if self.config.xds_auth and tokens is None:
            raise ValueError("xds_auth needs a registry of the join tokens (tokens=...)")
        self._token_source = tokens
        self.join_tokens = TokenAuthority(
            registry.prefix + TOKENS_DIR,
            lambda: self.controller.state.registered_services,
            lookup=tokens.get if tokens is not None else None,
        )
        """Join tokens in force and the streams bound to them (``--xds-auth required``)."""
        xds_auth = self.join_tokens if self.config.xds_auth else None
        self.metrics = Metrics()
        self.cache = ConfigCache(wire_budget=self.config.shared_cache_mb * 1024 * 1024)
        self.trimmer = HeapTrimmer(
            self.config.heap_trim_quiet,
            self.config.heap_trim_max_delay,
            on_trim=self.metrics.heap_trimmed,
        )
        """Gives memory back to the OS after bursts: xDS traffic, registry changes."""
        self.streams = StreamRegistry()
        self.guard = StreamGuard(
            self.config.xds_limits, lambda limit: self.metrics.xds_limited.labels(limit).inc()
        )
        """Per-client limits of the xDS port, shared by ADS, HDS and LRS."""
        self.guard.log.on_suppressed = self.metrics.log_lines_held.inc
        self.events = EventBus()
        self.dns = DnsCache(self._dns_answered)
        """Addresses of endpoint names, resolved in the background (an input of the loop)."""
        self.controller = Controller(
            registry,
            self.cache,
            self.metrics,
            dns=self.dns,
            events=self.events,
            trust_domain=self.config.trust_domain,
            coalesce=self.config.coalesce_window,
        )
        ttl = self.config.test_only_cert_ttl_s or self.config.cert_ttl_s
        self.issuer = CertificateIssuer(
            datetime.timedelta(seconds=ttl),
            lambda: self.controller.state.registered_services,
            self._certificates_issued,
        )
        """Workload certificates of the identities connected, rotated at half-life."""
        self.ads = AdsServicer(
            self.cache,
            self.streams,
            observers=[
                StreamPresence(self.issuer.connected, self.issuer.disconnected),
                StreamMetrics(self.metrics, self.cache),
                StreamEvents(self.events, self.metrics.log_lines_held.inc),
                StreamConvergence(self.metrics.convergence),
                StreamActivity(self.trimmer.poke, self.trimmer.stream_ended),
            ],
            auth=xds_auth,
            guard=self.guard,
        )
        self.metrics.watch_streams(
            lambda: [c.stream for c in list(self.streams.connections.values())]
        )
        interval = self.config.report_interval_ms / 1000
        self.health_events = HealthTransitions(
            self.events, registry.prefix, lambda: self.controller.state
        )
        """Verdict changes and panics as ``health`` events (admin Watch)."""
        self.health = HealthService(
            interval,
            on_change=self._health_changed,
            metrics=self.metrics.health,
            trust_domain=self.config.trust_domain,
        )
        """Aggregated endpoint health (HDS): ``health.services(name)`` for the admin API."""
        self.topology = TopologyService(interval, metrics=self.metrics.health)
        """Live topology (LRS): ``topology.graph()``, ``.red()``, ``.recommend()``."""
        self.health_sync = HealthSync(registry, self.health, self.config.replica_id)
        self.replicas = Replicas(registry, self.config.replica_id)
        """The other replicas on this etcd, asked for their part of whole-mesh answers."""
        self.metrics.registry.register(ReplicasCollector(self.replicas))
        self.controller.observers.append(self._registry_changed)
        self.metrics.registry.register(TopologyCollector(self.topology))
        self.metrics.registry.register(HealthCollector(self.health))
        self.metrics.registry.register(SecretExpiry(self._secret_expiries))
        self.metrics.registry.register(
            RegistryCounters(
                lambda: (
                    int(getattr(registry, "relists_total", 0)),
                    int(getattr(registry, "failovers_total", 0)),
                )
            )
        )
        self._health_tasks: list[asyncio.Task[None]] = []
        self.ca: MeshCA | None = None
        """The mesh CA, once :meth:`start` loaded it (shared by replicas through etcd)."""
        self.serving: ServingCertificate | None = None
        """meshd's serving certificate, with ``xds_tls``."""
        self.xds_port = 0
        self.metrics_port = 0
        self.admin_port = 0
        self._admin_server: grpc.aio.Server | None = None
        self.console: Console | None = None
        self.console_port = 0
        self._server: grpc.aio.Server | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._metrics_server: MetricsServer | None = None
        self._sd_targets = RecentTargets(time.monotonic, self.config.sd_keep_disconnected_s)

    async def start(self) -> None:
        """Start the control loop and the servers; returns once the first snapshot is cached.

        Raises ListenError (naming meshd's flag) when an address is out of range or in use,
        before anything starts; the servers listen before the registry is read.
        """
        self._check_addresses()
        self._loop_task = asyncio.create_task(self.controller.run(), name="controller")
        server = grpc.aio.server(options=GRPC_OPTIONS)
        server.add_generic_rpc_handlers(
            (
                self.ads.handler(),
                HdsServicer(self.health, self.ads.auth, self.guard).handler(),
                LrsServicer(self.topology, self.ads.auth, self.guard).handler(),
            )
        )
        self._health_tasks = [
            asyncio.create_task(self.health.run(), name="health"),
            asyncio.create_task(self.health_sync.run(), name="health-sync"),
            asyncio.create_task(self.dns.run(), name="dns"),
        ]
        if self.config.xds_auth and self._token_source is not None:
            self._health_tasks.append(
                asyncio.create_task(self.join_tokens.run(self._token_source), name="join-tokens")
            )
        credentials = None
        if self.config.xds_tls:
            self.ca = await self._load_ca()
            credentials = self._serving_credentials(self.ca)
        self.xds_port = bind_grpc(server, "--xds", self.config.xds, credentials)
        await server.start()
        self._server = server
        if self.ca is None:
            self.ca = await self._load_ca()
        self.issuer.ca = self.ca
        self._health_tasks.append(asyncio.create_task(self.issuer.run(), name="certificates"))
        if self.config.admin:
            if not isinstance(self.registry, WritableRegistry):
                raise TypeError(f"{type(self.registry).__name__} cannot back the admin API")
            admin = AdminServicer(
                self.registry,
                self.controller.state,
                self.streams,
                self.events,
                self.config.auth,
                health=self.health,
                topology=self.topology,
                problems=self.controller.problems,
                replicas=self.replicas,
            )
            # (a port's own credentials: see ServingCertificate.credentials)
            admin_credentials = self.serving.credentials() if self.serving else None
            self._admin_server, self.admin_port = await start_admin_server(
                self.config.admin, admin, admin_credentials
            )
            if self.config.console:
                from xds_server.console import Console  # (only meshd with a console pays)

                self.console = Console(
                    admin,
                    refused=lambda reason: self.metrics.console_refused.labels(reason).inc(),
                    max_connections=self.config.metrics_max_connections,
                )
                try:
                    self.console_port = await self.console.start(self.config.console)
                except OSError as exc:
                    raise ListenError(
                        "--console", self.config.console, listen_reason(exc)
                    ) from None
        self._publish_replica()
        if self.config.metrics:
            host, port = parse_listen("--metrics", self.config.metrics)
            self._metrics_server = MetricsServer(
                self.metrics.registry,
                self.proxy_targets,
                guard=self.metrics.label_guard,
                refused=lambda reason: self.metrics.http_refused.labels(reason).inc(),
                header_timeout=self.config.metrics_header_timeout_s,
                max_connections=self.config.metrics_max_connections,
            )
            try:
                self.metrics_port = self._metrics_server.start(host, port).port
            except OSError as exc:
                raise ListenError("--metrics", self.config.metrics, listen_reason(exc)) from None
        # Everything loaded so far (modules, configuration, servers) lives for the process:
        # keep the collector from rescanning it, so GC pauses stay short on the push path.
        # Done here, while etcd reads the registry's first page (meshd has nothing else to
        # do meanwhile, and the pass is shorter than that read), and before the
        # first snapshot: after it, it would delay the first push, and a big snapshot is
        # frozen by the controller as it is built.
        gc.collect()
        gc.freeze()
        ready = asyncio.ensure_future(self.cache.wait_ready())
        try:
            done, _ = await asyncio.wait(
                {ready, self._loop_task}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:  # also when cancelled (meshd stopped while etcd does not answer)
            ready.cancel()
        if self._loop_task in done:
            self._loop_task.result()
        while self.config.xds_auth and not self.join_tokens.loaded:
            # The tokens' first listing, read meanwhile: until it is in, every stream would
            # be refused (UNAVAILABLE) and retried.
            await asyncio.sleep(0.01)

    async def _load_ca(self) -> MeshCA:
        """The mesh CA from etcd (created there by the first replica), or the operator's;
        its trust bundle written to ``<data_dir>/ca.pem``. Raises CaError (bad CA)."""
        now = datetime.datetime.now(datetime.UTC)
        if isinstance(self.registry, WritableRegistry):
            ca = await load_mesh_ca(
                self.registry, self.config.trust_domain, now, self.config.operator_ca
            )
        elif self.config.operator_ca is not None:
            ca = MeshCA(*self.config.operator_ca, self.config.trust_domain)
        else:  # a read-only registry (tools): a CA of this process alone
            ca = MeshCA(*generate_root(self.config.trust_domain, now), self.config.trust_domain)
        if self.config.data_dir:
            path = Path(self.config.data_dir) / "ca.pem"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(ca.bundle_pem)
        return ca

    def _serving_credentials(self, ca: MeshCA) -> grpc.ServerCredentials:
        """TLS credentials of xDS and the admin API: a certificate the mesh CA issues now,
        named by ``server_names`` and the IPs meshd binds, so a client that dials either and
        trusts the bundle verifies meshd; issued again at half its lifetime (the test-only
        certificate lifetime applies to it too). The key stays in this process's memory."""
        names = self.config.server_names or default_server_names()
        ips = []
        for flag, address in (("--xds", self.config.xds), ("--admin", self.config.admin)):
            if address:
                host = parse_listen(flag, address)[0]
                with contextlib.suppress(ValueError):
                    ips.append(str(ipaddress.ip_address(host)))
        lifetime = SERVER_LIFETIME
        if self.config.test_only_cert_ttl_s:
            lifetime = datetime.timedelta(seconds=self.config.test_only_cert_ttl_s)
        self.serving = ServingCertificate(ca, names, sorted(set(ips)), lifetime=lifetime)
        return self.serving.credentials()

    def _publish_replica(self) -> None:
        """This replica's record for the others: its admin API's address, and over TLS a
        name its certificate holds and the bundle to trust theirs."""
        admin = ""
        if self.config.admin:
            admin = self.config.advertise_admin or advertised(self.config.admin, self.admin_port)
        names = self.config.server_names or default_server_names()
        roots = self.ca.bundle_pem if self.config.xds_tls and self.ca is not None else None
        xds = advertised(self.config.xds, self.xds_port)
        self.replicas.publish(admin, xds=xds, tls_name=names[0], roots=roots)
        self._health_tasks.append(asyncio.create_task(self.replicas.run(), name="replicas"))

    def _check_addresses(self) -> None:
        """Every listen address in range and free, before any server binds one."""
        for flag, address in (
            ("--xds", self.config.xds),
            ("--admin", self.config.admin),
            ("--metrics", self.config.metrics),
        ):
            if address:
                check_free(flag, address)

    def proxy_targets(self) -> list[ProxyTarget]:
        """Proxies that told their admin address (``/sd/envoy``): connected now, or within
        ``sd_keep_disconnected_s`` (so a lost stream shows in their metrics); thread-safe.
        Only addresses that are the proxy's own (:func:`sd_listable`); with ``xds_auth``
        every listed stream has been authenticated (others never get this far)."""
        return self._sd_targets.targets(
            ProxyTarget(c.admin_address, c.stream.node_id, c.stream.node_cluster, c.protocol)
            for c in list(self.streams.connections.values())
            if c.admin_address and sd_listable(c.admin_address, c.peer)
        )

    def _secret_expiries(self) -> list[tuple[str, str, float]]:
        """(namespace, name, expiry) of each registry secret in force with a certificate:
        the ``meshd_secret_expiry_timestamp_seconds`` gauge, read on the metrics thread."""
        secrets = list(self.controller.state.secrets.values())  # (a C-level snapshot)
        return [(s.namespace, s.name, s.info.not_after) for s in secrets if s.info is not None]

    def _health_changed(
        self, health: Mapping[ServiceRef, Mapping[str, int]], refs: set[ServiceRef]
    ) -> None:
        """Verdicts changed: into the loop first (EDS: proxies matter most), then tell
        watchers."""
        self.controller.submit(HealthVerdicts(health, refs))
        self.health_events.changed(health, refs, self.health.panicking)

    def _dns_answered(self, names: set[str]) -> None:
        """The addresses of some endpoint names changed: into the loop."""
        self.controller.submit(DnsAnswers(names))

    def _certificates_issued(
        self, by_cluster: Mapping[str, IssuedCertificate], bundle: bytes
    ) -> None:
        """Certificates issued, rotated, or node clusters came and went: into the loop
        (translation makes the SDS Secrets)."""
        self.controller.submit(Certificates(by_cluster, bundle))

    def _registry_changed(self, state: RegistryView, changes: ChangeSet) -> None:
        self.trimmer.poke()
        if changes.services:  # (a cluster's identity follows the services registered)
            self.issuer.poke()
        self.topology.registry_changed(state)
        if changes.services or changes.endpoints or changes.namespaces:
            # (a namespace's mTLS default decides whether its services are probed over mTLS)
            spaces = changes.namespaces
            moved = {r for r in state.services if r.namespace in spaces} if spaces else set()
            self.health.registry_changed(
                state, self.dns.lookup, changes.services | changes.endpoints | moved
            )

    @property
    def revision(self) -> int:
        return self.controller.state.revision

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, close streams gracefully, stop the loop. Idempotent."""
        if self.console is not None:
            await self.console.stop()
            self.console = None
        if self._admin_server is not None:
            await self._admin_server.stop(grace)
            self._admin_server = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        for task in self._health_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._health_tasks = []
        # (both revokes at once: with etcd away, each waits out its timeout)
        await asyncio.gather(self.health_sync.close(), self.replicas.close())
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
            self._loop_task = None
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        self.trimmer.close()  # last: closing streams poked it
