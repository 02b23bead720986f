"""meshd beside a go-control-plane server: the same registry, the same clients, one run.

The other side is ``integration/gcp/``, a Go program written as go-control-plane's users
write an xDS server: a SnapshotCache for CDS, LDS and RDS (one snapshot per node cluster,
versions per type), a LinearCache for EDS (a ClusterLoadAssignment per service, updated
alone), both behind one ADS server (SotW and Delta); :mod:`integration.gcp_server` builds
and runs it. Both servers read their input the same way: real etcd (``--unsafe-no-fsync``
unless ``--fsync``), one listing of the registry prefix, then a watch from that revision;
every change below is an etcd write, timed from just before the write, so both figures
include the server's etcd watch. Both serve the same resources for the registry (a cluster
per service over EDS, one ClusterLoadAssignment per service, listener ``public`` over RDS,
its route configuration with one virtual host per service and one per route host): the run
first fetches every resource from both over SotW and compares them (``[0]``): the same
messages, in another field order where Go's protobuf writes oneof fields last.

The clients are bench_scale's simulated Envoys (:mod:`integration.loadgen`), ``--procs``
load generator processes per side. Figures, each printed as meshd, go-control-plane and the
ratio meshd/go-control-plane (every figure is lower-is-better: under 1.00x, meshd is ahead):

1. ``cold``: ``--cold-services`` x ``--endpoints`` in etcd; from the process start to the
   server's own word that every resource is servable (meshd's "meshd ready" log line, the Go
   server's "ready" line: the listed registry in its caches), and to the first of two probe
   clients (one SotW, one Delta, dialing every 50 ms from before the start) holding a
   complete config. ``--cold-runs`` starts of each, the first side alternating; medians.
2. ``storm``: ``--clients`` fresh clients connect within ``--spread`` s: time to the last
   one complete, server CPU until everything is idle again, server RSS growth per client
   (read ``--settle`` s after). ``--storms`` storms per side and protocol, each against
   fresh server processes, the first side alternating; medians.
3. ``endpoint``: in the last storm's processes, one endpoint change (bench_scale's marker:
   the port of ``s0/e0``) reaching every client, p50 / p99, and server CPU per change,
   ``--changes`` per side in alternating blocks of ``--block`` (bench_scale's series).
4. ``route``: the same for a route edit: route ``default/bench-edit`` on listener
   ``public`` gets a new prefix carrying the change id, ``--route-changes`` per side.

Each side has its own registry prefix holding the same entries, so a change made for one
side reaches only that side's server and clients.

    python -m integration.bench_gcp [--clients 1000] [--services 1000] [--cold-services 10000]
        [--protocol sotw|delta|both] [--small]

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.bench_scale import (
    Bench,
    Meshd,
    Run,
    Side,
    add_run_options,
    compile_meshd,
    finish_run_options,
    load,
    marker_value,
    meshd_revision,
    quiesce,
    ratio,
    run_bench,
    say,
    seed,
)
from integration.gcp_server import GoServer, build
from integration.harness import free_port
from integration.loadgen import CDS, EDS, LDS, RDS, LoadGenGroup, route_names

MARKER_KEY = "endpoints/default/s0/e0"
ROUTE_KEY = "routes/default/bench-edit"
ROUTE_MARK = "/bench-marker/"
ROUTE_CONFIG = "public"
# The listeners' typed configs, so that a differing listener can be printed.
FILTERS = (fault_pb2.HTTPFault, local_rate_limit_pb2.LocalRateLimit, router_pb2.Router)
MESSAGES: dict[str, type[Message]] = {
    CDS: cluster_pb2.Cluster,
    EDS: endpoint_pb2.ClusterLoadAssignment,
    LDS: listener_pb2.Listener,
    RDS: route_pb2.RouteConfiguration,
}
SMALL = {
    "clients": 20,
    "services": 30,
    "cold_services": 300,
    "endpoints": 3,
    "changes": 4,
    "route_changes": 4,
    "storms": 1,
    "cold_runs": 1,
    "spread": 0.2,
    "settle": 0.2,
    "procs": 1,
    "block": 2,
}


class Server(Protocol):
    """What the benchmark needs of either server process (bench_scale's Meshd, GoServer)."""

    @property
    def target(self) -> str: ...
    @property
    def pid(self) -> int: ...

    started: float

    def rss_kb(self) -> int: ...
    def cpu(self) -> float: ...
    def check_alive(self) -> None: ...
    def ready_logged_at(self) -> float | None: ...
    async def wait_ready(self, revision: int, timeout: float = 120) -> float: ...
    def stop(self) -> None: ...


def route_value(change: int | None) -> bytes:
    """Route ``bench-edit``: a host of its own on listener ``public``, to ``s1``, its prefix
    carrying change id ``change`` (the clients' route marker), or none yet."""
    prefix = f"{ROUTE_MARK}{change}" if change is not None else "/bench-edit"
    value = {
        "listener": "public",
        "hosts": ["edit.bench"],
        "match": {"prefix": prefix},
        "destinations": [{"service": "s1" if change is None or change % 2 else "s2"}],
    }
    return json.dumps(value).encode()


@dataclass
class Starter:
    """How to start one side's server on a registry prefix."""

    name: str
    start: Callable[[str, str, int | None, str], Server]  # (prefix, tag, xds port, log level)
    registries: dict[str, tuple[EtcdRegistry, int]] = field(default_factory=dict)
    storms: dict[str, list[Storm]] = field(default_factory=dict)


@dataclass
class Storm:
    """One connect storm against one server."""

    complete_s: float
    cpu_s: float
    per_client_kb: float
    complete: int


def figure(label: str, values: dict[str, float], unit: str, digits: int = 2) -> str:
    """One figure line: meshd, go-control-plane, and meshd/go-control-plane."""
    m, g = values["meshd"], values["go-control-plane"]
    verdict = "meshd ahead" if m < g else "meshd behind" if m > g else "even"
    return (
        f"{label}: meshd {m:.{digits}f} {unit}, go-control-plane {g:.{digits}f} {unit}, "
        f"meshd/go-control-plane {ratio(m, g)} ({verdict})"
    )


# --------------------------------------------------------------------------- shapes


async def fetch_config(target: str, node_cluster: str = "sidecar") -> dict[str, dict[str, bytes]]:
    """Every resource a SotW client of ``node_cluster`` is served: type -> name -> bytes."""
    node = {"id": "bench-gcp-shapes", "cluster": node_cluster}
    got: dict[str, dict[str, bytes]] = {t: {} for t in (CDS, EDS, LDS, RDS)}
    opts = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(target, options=opts) as channel:
        method = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        call = method(wait_for_ready=True)

        async def ask(type_url: str, names: list[str]) -> None:
            req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
            json_format.ParseDict(node, req.node)
            await call.write(req)
            while not names or not set(names) <= set(got[type_url]):
                resp = await call.read()
                if resp.type_url != type_url:
                    continue
                for a in resp.resources:
                    msg = MESSAGES[type_url]()
                    a.Unpack(msg)
                    name = getattr(msg, "cluster_name", "") or getattr(msg, "name", "")
                    got[type_url][name] = a.value
                if not names:
                    return

        await ask(CDS, [])
        await ask(EDS, sorted(got[CDS]))
        await ask(LDS, [])
        await ask(RDS, sorted({n for body in got[LDS].values() for n in route_names(body)}))
        call.cancel()
    return got


def compare(
    a: dict[str, dict[str, bytes]], b: dict[str, dict[str, bytes]]
) -> tuple[int, list[str]]:
    """How two servers' resources compare: (how many are the same message in another field
    order, where they differ). Go's protobuf writes oneof fields after the others, so the
    same message can come as other bytes of the same length; it is compared unpacked."""
    reordered, out = 0, []
    for type_url, ours in a.items():
        theirs = b[type_url]
        short = type_url.rsplit(".", 1)[1]
        if set(ours) != set(theirs):
            only = sorted(set(ours) ^ set(theirs))[:3]
            out.append(f"{short}: {len(ours)} names against {len(theirs)} (e.g. {only})")
            continue
        for name in sorted(ours):
            if ours[name] == theirs[name]:
                continue
            x, y = (_as_dict(MESSAGES[type_url].FromString(v)) for v in (ours[name], theirs[name]))
            if x == y:
                reordered += 1
            else:
                out.append(f"{short} {name}: {_first_difference(x, y)}")
    return reordered, out[:5]


def _first_difference(x: Any, y: Any, path: str = "") -> str:
    """Where two unpacked messages (dicts, lists, scalars) first differ, and how."""
    if isinstance(x, dict) and isinstance(y, dict):
        for key in sorted(set(x) | set(y)):
            if x.get(key) != y.get(key):
                return _first_difference(x.get(key), y.get(key), f"{path}.{key}")
    elif isinstance(x, list) and isinstance(y, list):
        for i, (a, b) in enumerate(zip(x, y, strict=False)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
        return f"{path}: {len(x)} items against {len(y)}"
    return f"{path or '.'}: meshd {str(x)[:200]} against go-control-plane {str(y)[:200]}"


def _as_dict(msg: Message) -> dict[str, Any]:
    data: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return data


# --------------------------------------------------------------------------- the run


class GcpBench:
    """One invocation: etcd, the two sides' registries, the figures."""

    def __init__(self, args: argparse.Namespace, workdir: Path, binary: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.binary = binary
        self.bench = Bench(args, workdir)  # change ids, connect, clients, series, summary
        self.etcd = EmbeddedEtcd(
            workdir / "etcd", unsafe_no_fsync=not args.fsync, auto_compaction_retention=None
        )
        self.sides = [
            Starter("meshd", self._meshd),
            Starter("go-control-plane", self._go),
        ]

    def _meshd(self, prefix: str, tag: str, xds_port: int | None, level: str) -> Server:
        flags = ("--prefix", prefix, "--xds-auth", "off", "--xds-tls", "off")
        return Meshd(
            self.etcd.endpoint,
            self.workdir,
            f"meshd-{tag}",
            log_level=level,
            xds_port=xds_port,
            extra_args=flags,
        )

    def _go(self, prefix: str, tag: str, xds_port: int | None, level: str) -> Server:
        return GoServer(
            self.binary, self.etcd.endpoint, self.workdir, f"gcp-{tag}", prefix, xds_port
        )

    async def registry(self, prefix: str, services: int) -> tuple[EtcdRegistry, int]:
        """A registry under ``prefix``: the benchmark's ``services`` x ``--endpoints`` and
        route ``bench-edit``; (client, revision)."""
        registry = EtcdRegistry(self.etcd.endpoint, prefix=prefix, timeout=30)
        revision, secs, keys = await seed(registry, services, self.args.endpoints)
        revision = await registry.put(prefix + ROUTE_KEY, route_value(None))
        say(f"  seeded {keys + 1} keys under {prefix} in {secs:.2f} s")
        return registry, revision

    async def run(self) -> None:
        a = self.args
        await self.etcd.start()
        registries: list[EtcdRegistry] = []
        try:
            for side in self.sides:
                short = "meshd" if side.name == "meshd" else "gcp"
                reg = await self.registry(f"/bench-{short}/", a.services)
                registries.append(reg[0])
                side.registries["fanout"] = reg
            await self.shapes()
            if "cold" in a.only:
                cold = await self.registry("/bench-cold/", a.cold_services)
                registries.append(cold[0])
                for side in self.sides:
                    side.registries["cold"] = cold
                await self.cold()
            if {"storm", "endpoint", "route"} & set(a.only):
                for protocol in a.protocols:
                    await self.protocol_run(protocol)
        finally:
            for r in registries:
                await r.close()
            self.etcd.stop()

    async def shapes(self) -> None:
        """[0] Both servers' resources for the fan-out registry, compared byte for byte."""
        servers = []
        try:
            configs = []
            for side in self.sides:
                registry, revision = side.registries["fanout"]
                server = side.start(registry.prefix, "shapes", None, "warning")
                servers.append(server)
                await server.wait_ready(revision)
                configs.append(await asyncio.wait_for(fetch_config(server.target), 60))
        finally:
            for s in servers:
                s.stop()
        reordered, diff = compare(*configs)
        counts = ", ".join(f"{len(v)} {t.rsplit('.', 1)[1]}" for t, v in configs[0].items())
        if diff:
            self.bench.report(f"[0] resource shapes: DIFFERENT ({counts}): " + "; ".join(diff))
        else:
            size = sum(len(body) for bodies in configs[0].values() for body in bodies.values())
            self.bench.report(
                f"[0] resource shapes: the same messages from both servers ({counts}; "
                f"{size} bytes; {reordered} of them in another field order)"
            )

    async def cold(self) -> None:
        a = self.args
        say(f"[1] cold start: {a.cold_services} services x {a.endpoints} endpoints ({load()})")
        ready: dict[str, list[float]] = {s.name: [] for s in self.sides}
        first: dict[str, list[float]] = {s.name: [] for s in self.sides}
        rss: dict[str, int] = {}
        for run in range(a.cold_runs):
            order = self.sides if run % 2 == 0 else self.sides[::-1]
            for side in order:
                r, f, kb = await self._cold_once(side, run)
                ready[side.name].append(r)
                first[side.name].append(f)
                rss[side.name] = kb
                say(
                    f"  run {run + 1} {side.name}: every resource servable {r:.2f} s, first "
                    f"client complete {f:.2f} s, RSS {kb / 1024:.0f} MB ({load()})"
                )
        what = f"[1] cold start {a.cold_services}x{a.endpoints}"
        every = f"median of {a.cold_runs} start(s) each, first side alternating"
        med = {k: statistics.median(v) for k, v in ready.items()}
        self.bench.report(
            figure(f"{what}: start -> every resource servable", med, "s") + f" ({every})"
        )
        med = {k: statistics.median(v) for k, v in first.items()}
        self.bench.report(figure(f"{what}: start -> first client complete", med, "s"))
        mb = {k: v / 1024 for k, v in rss.items()}
        self.bench.report(figure(f"{what}: server RSS after", mb, "MB", 0) + f"; {load()}")

    async def _cold_once(self, side: Starter, run: int) -> tuple[float, float, int]:
        """One cold start: (start -> ready, start -> first client complete, RSS KB)."""
        registry, _ = side.registries["cold"]
        clients = await self.bench.clients(f"loadgen-cold-{side.name}-{run}")
        xds = free_port()
        # The probes dial before the server listens; a 50 ms retry keeps their delay small.
        await clients.add(f"127.0.0.1:{xds}", sotw=1, delta=1, backoff=(0.05, 0.05))
        server = side.start(registry.prefix, f"cold-{run}", xds, "info")
        try:
            res = await clients.wait_complete(180)
            server.check_alive()
            if res["complete"] < 2:
                say(f"  !! only {res['complete']}/2 probes complete on {side.name}")
            first = (res["first"] or float("nan")) - server.started
            ready = server.ready_logged_at()
            return ready if ready is not None else float("nan"), first, server.rss_kb()
        finally:
            await clients.close()
            server.stop()

    async def protocol_run(self, protocol: str) -> None:
        """Figures 2-4 for one protocol: the storms, then the changes in the last one's
        processes."""
        a = self.args
        n = a.clients
        sotw, delta = (n, 0) if protocol == "sotw" else (0, n)
        say(f"{protocol}: {n} clients per side, {a.services} services x {a.endpoints} endpoints")
        for side in self.sides:
            side.storms[protocol] = []
        storms = a.storms if "storm" in a.only else 1
        for rep in range(storms):
            order = self.sides if rep % 2 == 0 else self.sides[::-1]
            groups: dict[str, LoadGenGroup] = {}
            servers: dict[str, Server] = {}
            try:
                for side in self.sides:
                    registry, _ = side.registries["fanout"]
                    servers[side.name] = server = side.start(
                        registry.prefix, f"{protocol}-{rep}", None, "warning"
                    )
                    await server.wait_ready(await self._head(registry))
                await asyncio.sleep(1)  # past the start (meshd's heap trims, first scrapes)
                for side in order:
                    server = servers[side.name]
                    group = await self.bench.clients(f"loadgen-{protocol}-{side.name}-{rep}")
                    groups[side.name] = group
                    st = await self.storm(server, group, sotw, delta)
                    side.storms[protocol].append(st)
                    short = f", ONLY {st.complete}/{n} COMPLETE" if st.complete < n else ""
                    say(
                        f"  storm {rep + 1} {side.name}: all complete {st.complete_s:.2f} s; "
                        f"server CPU {st.cpu_s:.2f} s; RSS {st.per_client_kb:.1f} KB/client"
                        f"{short}; {load()}"
                    )
                if rep == storms - 1:
                    await self.changes(protocol, servers, groups, n)
            finally:
                for group in groups.values():
                    await group.close()
                for server in servers.values():
                    server.stop()
        if "storm" not in a.only:
            return
        what = f"[2] {protocol} connect storm, {n} clients within {a.spread:g} s"
        every = f"median of {storms} storm(s) each, first side alternating"

        def med(attr: str) -> dict[str, float]:
            return {
                s.name: statistics.median(getattr(st, attr) for st in s.storms[protocol])
                for s in self.sides
            }

        self.bench.report(figure(f"{what}: all complete", med("complete_s"), "s") + f" ({every})")
        self.bench.report(figure(f"{what}: server CPU", med("cpu_s"), "s") + " (until idle)")
        self.bench.report(figure(f"{what}: server RSS per client", med("per_client_kb"), "KB", 1))

    async def _head(self, registry: EtcdRegistry) -> int:
        """The registry's revision now (a put and delete of a key no server reads)."""
        head = await registry.put(registry.prefix + "bench/head", b"{}")
        await registry.delete(registry.prefix + "bench/head")
        return head

    async def storm(self, server: Server, clients: LoadGenGroup, sotw: int, delta: int) -> Storm:
        """Connect the clients within ``--spread`` s; measure until everything is idle."""
        a = self.args
        rss0 = server.rss_kb()
        cpu0 = server.cpu()
        complete_s, res = await self.bench.connect(
            clients,
            server.target,
            sotw,
            delta,
            300,
            spread=a.spread,
            route=ROUTE_CONFIG,
            route_mark=ROUTE_MARK,
        )
        await quiesce([server.pid, *clients.pids], limit=30)
        cpu = server.cpu() - cpu0
        await asyncio.sleep(a.settle)
        server.check_alive()
        per_client = (server.rss_kb() - rss0) / max(1, sotw + delta)
        return Storm(complete_s, cpu, per_client, int(res["complete"]))

    async def changes(
        self,
        protocol: str,
        servers: dict[str, Server],
        groups: dict[str, LoadGenGroup],
        n: int,
    ) -> None:
        """Figures 3 and 4: endpoint changes, then route edits, in alternating blocks."""
        a = self.args
        for kind, count in (("endpoint", a.changes), ("route", a.route_changes)):
            if kind not in a.only or not count:
                continue
            sides = [self._side(s, servers[s.name], groups[s.name], n, kind) for s in self.sides]
            await self.bench.series(sides, count)
            lat = {s.run.name: s.run.latency for s in sides}
            what = f"[{3 if kind == 'endpoint' else 4}] {protocol} {kind} change to {n} clients"
            first = sides[0].run.latency
            assert first is not None
            every = f"{first.changes} changes each, in blocks of {a.block} taken in turn"
            missing = {k: v.missing for k, v in lat.items() if v is not None and v.missing}
            gone = f"; MISSING {missing}" if missing else ""
            p50 = {k: v.p50 for k, v in lat.items() if v is not None}
            p99 = {k: v.p99 for k, v in lat.items() if v is not None}
            cpu = {s.run.name: s.run.cpu_s / max(1, first.changes) * 1000 for s in sides}
            self.bench.report(figure(f"{what}: p50", p50, "ms", 1) + f" ({every}{gone})")
            self.bench.report(figure(f"{what}: p99", p99, "ms", 1))
            self.bench.report(
                figure(f"{what}: server CPU per change", cpu, "ms", 1) + f"; {load()}"
            )

    def _side(
        self, starter: Starter, server: Server, clients: LoadGenGroup, n: int, kind: str
    ) -> Side:
        """A side of bench_scale's alternating series: changes are writes to its prefix."""
        registry, _ = starter.registries["fanout"]

        async def endpoint(k: int) -> None:
            await registry.put(registry.prefix + MARKER_KEY, marker_value(k))

        async def route(k: int) -> None:
            await registry.put(registry.prefix + ROUTE_KEY, route_value(k))

        async def no_churn(k: int) -> None:
            raise AssertionError("the side-by-side run makes no churn")

        change = endpoint if kind == "endpoint" else route
        return Side(Run(starter.name, clients=n), clients, server.pid, change, no_churn)


FIGURES = ("cold", "storm", "endpoint", "route")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options (with bench_scale's shared ones), ``--small`` setting tiny defaults."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000, help="clients per side")
    p.add_argument("--services", type=int, default=1000, help="storm and change registry")
    p.add_argument("--cold-services", type=int, default=10_000, help="cold start registry")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    p.add_argument("--cold-runs", type=int, default=3, help="cold starts per side (median)")
    p.add_argument("--changes", type=int, default=60, help="endpoint changes per side")
    p.add_argument("--route-changes", type=int, default=30, help="route edits per side")
    p.add_argument("--storms", type=int, default=3, help="connect storms per side and protocol")
    p.add_argument("--spread", type=float, default=1.0, help="seconds over which clients connect")
    p.add_argument(
        "--only", default=",".join(FIGURES), help="comma-separated: " + ",".join(FIGURES)
    )
    p.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    add_run_options(p, budget=60.0)
    if "--small" in argv:
        p.set_defaults(**SMALL)
    args = finish_run_options(p.parse_args(argv))
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(args.only) - set(FIGURES)
    if unknown:
        p.error(f"unknown figure(s) {sorted(unknown)}; choose from {FIGURES}")
    if args.storms < 1 or args.cold_runs < 1:
        p.error("--storms and --cold-runs must be at least 1")
    return args


async def amain(args: argparse.Namespace, workdir: Path) -> None:
    started = time.monotonic()
    binary, how = await asyncio.to_thread(build)
    say(
        f"bench_gcp: {os.cpu_count()} CPUs, {load()}, loadgen processes {args.procs} per side, "
        f"etcd {'fsync' if args.fsync else '--unsafe-no-fsync'}; work dir {workdir}; meshd "
        f"code at {meshd_revision()}; {compile_meshd()}; {how}"
    )
    bench = GcpBench(args, workdir, binary)
    await bench.run()
    say(f"\nsummary ({time.monotonic() - started:.0f} s, {load()}):")
    for line in bench.bench.summary:
        say("  " + line)


def main() -> None:
    run_bench(amain, parse_args(), "gcp")


if __name__ == "__main__":
    main()
