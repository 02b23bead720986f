"""Churn benchmark: a rolling deploy of one big service, written as fast as etcd takes it.

Real etcd (``--unsafe-no-fsync``), meshd as its own process (CPU from /proc), ``--clients``
simulated Delta Envoys (:mod:`integration.loadgen`, in ``--procs`` processes) that hold the
service's cluster and endpoints and the route configuration of listener ``public``. The
registry: one service ``default/big`` of ``--endpoints`` endpoints, listener ``public``
(every node), and a route ``default/marker`` to the service on it.

The burst: ``--updates`` single-endpoint updates (each a put of its own, one revision each,
``--inflight`` puts in flight), every one to another endpoint (its weight), the last one
setting the port of endpoint ``e0`` (the clients' marker, as in :mod:`bench_scale`).
``--route-changes`` times in the middle of the burst the route's path prefix is rewritten
to carry a new id, which the clients detect in the route configuration. Figures, beside
their targets (issue 24):

- the last update at every client: time from its write (just before the put) until the
  last client holds it (target <= 1 s);
- a route change written during the burst at every client: p50 / p99 / max over every
  client of every route change, from its write (target p99 < 100 ms);
- meshd's CPU per update: meshd's CPU time from just before the burst until it is idle
  again after it, divided by the updates; the same run is made on a service of
  ``--small-endpoints`` endpoints (each size with a meshd and a registry prefix of its own,
  the same etcd and the same number of clients), and the ratio is printed (target <= 1.5x).

Beside them, what bounds the first two on the machine at hand: the same route change and
one endpoint update (one push of the whole assignment) made before the burst, one at a
time; and, once meshd is gone, the same clients against the floor server
(:mod:`integration.floor_server` ``--one``: pre-serialized bytes, nothing else) serving the
same shape, ``--floor-changes`` route changes and as many pushes of the whole assignment.

    python -m integration.bench_churn [--endpoints 10000] [--updates 10000] [--clients 1000]
        [--small] [--meshd-src DIR]

``--small`` makes everything tiny (the smoke test). ``--meshd-src`` runs meshd from another
source tree (for example a ``git worktree`` of an older commit) to measure it the same way.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.bench_scale import (
    BASE,
    Floor,
    Meshd,
    address,
    compile_meshd,
    cpu_seconds,
    load,
    percentile,
    put_entries,
    quiesce,
    say,
)
from integration.loadgen import LoadGenGroup, raise_nofile_limit

SERVICE = "big"
CLUSTER = f"{SERVICE}.default"
ROUTE_MARK = "/churn-mark/"
ROUTE_IDS = 1_000  # route change i is change id ROUTE_IDS + i (the marker update is id 1)
MARKER_ID = 1
MARKER_ADDRESS = "fd00::1"
"""Endpoint ``e0``'s address: the only IPv6 one, so the clients' search for it in a big
assignment skips over the IPv4 ones (a 10.x address would match partly at every one)."""


@dataclass
class Figures:
    """What one run (one service size) gave."""

    endpoints: int
    updates: int = 0
    write_s: float = 0.0
    last_ms: float = float("nan")
    last_missing: int = 0
    route_ms: list[float] = field(default_factory=list)
    route_missing: int = 0
    route_changes: int = 0
    calm_ms: list[float] = field(default_factory=list)
    calm_missing: int = 0
    calm_changes: int = 0
    calm_push_ms: list[float] = field(default_factory=list)
    calm_push_missing: int = 0
    bare_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    clients_cpu_s: float = 0.0
    settle_s: float = 0.0
    pushes: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    lag_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    floor_route_ms: list[float] = field(default_factory=list)
    floor_route_missing: int = 0
    floor_changes: int = 0
    floor_push_ms: list[float] = field(default_factory=list)
    floor_push_missing: int = 0

    @property
    def cpu_per_update_ms(self) -> float:
        return self.cpu_s / max(1, self.updates) * 1000

    def route_line(self, samples: list[float], changes: int, missing: int) -> str:
        s = sorted(samples)
        lost = f", MISSING {missing}" if missing else ""
        return (
            f"p50={percentile(s, 0.5):.1f}ms p99={percentile(s, 0.99):.1f}ms "
            f"max={max(s, default=float('nan')):.1f}ms ({len(s)} samples, "
            f"{changes} route changes{lost})"
        )

    def report(self) -> list[str]:
        route_p99 = percentile(sorted(self.route_ms), 0.99)
        last = f"{self.last_ms:.0f} ms" + (
            f" (MISSING at {self.last_missing} clients)" if self.last_missing else ""
        )
        pushes = ", ".join(f"{k} {v:.0f}" for k, v in sorted(self.pushes.items()) if v)
        return [
            f"{self.updates} updates to one service of {self.endpoints} endpoints written in "
            f"{self.write_s:.2f} s ({self.updates / max(self.write_s, 1e-9):.0f} puts/s)",
            f"  last update at every client: {last} after its write (target <= 1000 ms): "
            + _verdict(self.last_ms <= 1000 and not self.last_missing),
            "  route change during the burst at every client: "
            + self.route_line(self.route_ms, self.route_changes, self.route_missing)
            + " (target p99 < 100 ms): "
            + _verdict(route_p99 < 100 and not self.route_missing),
            "  the same route change before the burst (no churn): "
            + self.route_line(self.calm_ms, self.calm_changes, self.calm_missing),
            "  one endpoint update before the burst (no churn), until the last client holds it: "
            + _ms_list(self.calm_push_ms, self.calm_push_missing),
            "  the route changes of the burst at a bare etcd watcher (its own process): "
            + ", ".join(f"{ms:.0f}" for ms in self.bare_ms)
            + " ms",
            f"  meshd CPU: {self.cpu_s:.2f} s, {self.cpu_per_update_ms:.3f} ms per update "
            f"(until idle, {self.settle_s:.1f} s after the last client held the last update); "
            f"the clients' CPU {self.clients_cpu_s:.1f} s",
            f"  pushes (responses written): {pushes or 'none'}; {self.batches} batches of "
            f"registry updates, mean watch lag {self.lag_ms:.1f} ms; client stream errors: "
            + (json.dumps(self.errors) if self.errors else "none"),
            *self.floor_report(),
        ]

    def floor_report(self) -> list[str]:
        if not self.floor_changes:
            return []
        return [
            "  the floor (a server writing pre-serialized bytes, nothing else) through the same "
            "clients, no churn:",
            "    a route change at every client: "
            + self.route_line(self.floor_route_ms, self.floor_changes, self.floor_route_missing),
            f"    one push of the whole {self.endpoints}-endpoint assignment, until the last "
            "client holds it: " + _ms_list(self.floor_push_ms, self.floor_push_missing),
        ]


def _ms_list(ms: list[float], missing: int) -> str:
    lost = f" (MISSING at {missing} clients)" if missing else ""
    return ", ".join(f"{v:.0f}" for v in ms) + " ms" + lost


def _verdict(ok: bool) -> str:
    return "pass" if ok else "fail"


def registry_entries(endpoints: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """The benchmark registry (keys without the prefix)."""
    yield "listeners/public", {"address": "0.0.0.0", "port": 10000, "nodes": ["*"]}
    yield f"services/default/{SERVICE}", {"protocol": "http", "port": 8080}
    yield "routes/default/marker", route_value(0)
    yield f"endpoints/default/{SERVICE}/e0", marker_value(0)
    for j in range(1, endpoints):
        yield f"endpoints/default/{SERVICE}/e{j}", endpoint_value(j, 100)


def route_value(change: int) -> dict[str, Any]:
    return {
        "listener": "public",
        "match": {"prefix": f"{ROUTE_MARK}{change}"},
        "destinations": [{"service": SERVICE}],
    }


def endpoint_value(j: int, weight: int) -> dict[str, Any]:
    return {"address": address(j), "port": 8080, "weight": weight}


def marker_value(change: int) -> dict[str, Any]:
    """Endpoint ``e0`` carrying change id ``change`` in its port (as bench_scale's marker)."""
    return {"address": MARKER_ADDRESS, "port": BASE + change}


async def seed(registry: EtcdRegistry, endpoints: int) -> int:
    """Write the registry in transactions; the revision after."""
    revision, _ = await put_entries(registry, registry_entries(endpoints))
    return revision


@contextlib.contextmanager
def _meshd_source(src: Path | None) -> Iterator[None]:
    """Start processes from ``src`` (its ``xds_server`` first on their path) meanwhile."""
    if src is None:
        yield
        return
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src) + (os.pathsep + before if before else "")
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def source_revision(src: Path) -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "xds_server", "adapters"],
        cwd=src,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return out.stdout.strip() + (f" + {len(dirty)} uncommitted file(s)" if dirty else "")


async def burst(
    registry: EtcdRegistry, fig: Figures, args: argparse.Namespace, endpoints: int
) -> tuple[list[float], float]:
    """Write the burst; (each route change's write time, the marker update's write time)."""
    prefix = registry.prefix
    n = args.updates - 1  # (the last update is the marker's)
    at = {n * (i + 1) // (args.route_changes + 1): i for i in range(args.route_changes)}
    route_written = [0.0] * args.route_changes
    window = asyncio.Semaphore(args.inflight)
    tasks: set[asyncio.Task[int]] = set()

    async def put(key: str, value: dict[str, Any]) -> int:
        try:
            return await registry.put(prefix + key, json.dumps(value).encode())
        finally:
            window.release()

    def spawn(key: str, value: dict[str, Any]) -> None:
        task = asyncio.create_task(put(key, value))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    started = time.monotonic()
    others = max(1, endpoints - 1)
    for k in range(n):
        if k in at:
            await window.acquire()
            route_written[at[k]] = time.monotonic()
            spawn("routes/default/marker", route_value(ROUTE_IDS + at[k]))
        await window.acquire()
        j = 1 + k % others if endpoints > 1 else 0
        spawn(f"endpoints/default/{SERVICE}/e{j}", endpoint_value(j, 1 + k % 200))
    while tasks:  # the marker goes last, once every other update is in
        await asyncio.gather(*tasks)
    last_written = time.monotonic()
    marker = json.dumps(marker_value(MARKER_ID)).encode()
    await registry.put(f"{prefix}endpoints/default/{SERVICE}/e0", marker)
    fig.write_s = time.monotonic() - started
    fig.updates = args.updates
    return route_written, last_written


async def connected_clients(
    target: str, args: argparse.Namespace, workdir: Path, tag: str
) -> LoadGenGroup:
    """``--clients`` Delta clients of ``target`` holding the service and the route
    configuration (the marker and the route mark watched), once complete."""
    clients = await LoadGenGroup.start(args.procs, workdir, tag)
    try:
        await clients.add(
            target,
            delta=args.clients,
            marker=CLUSTER,
            marker_address=MARKER_ADDRESS,
            route="public",
            route_mark=ROUTE_MARK,
        )
        done = await clients.wait_complete(args.timeout)
    except BaseException:
        await clients.close()
        raise
    if done["complete"] < args.clients:
        say(f"  !! {tag}: only {done['complete']}/{args.clients} clients complete")
    return clients


async def one_change(
    write: Awaitable[object],
    change: int,
    clients: LoadGenGroup,
    pids: list[int],
    args: argparse.Namespace,
) -> tuple[list[float], int]:
    """Make one change alone (``write``, which carries change id ``change``): each client's
    latency from the write (ms) and how many clients never got it; then wait until ``pids``
    are idle again."""
    written = time.monotonic()
    await write
    times, missing = await clients.wait_change(change, args.timeout)
    await quiesce(pids)
    return [(t - written) * 1000 for t in times], missing


async def run_size(
    etcd: EmbeddedEtcd, endpoints: int, args: argparse.Namespace, workdir: Path
) -> Figures:
    """One meshd, its clients, one burst against a service of ``endpoints`` endpoints."""
    fig = Figures(endpoints, route_changes=args.route_changes)
    prefix = f"/churn{endpoints}/"
    registry = EtcdRegistry(etcd.endpoint, prefix=prefix, timeout=30)
    meshd: Meshd | None = None
    clients: LoadGenGroup | None = None
    try:
        revision = await seed(registry, endpoints)
        with _meshd_source(args.meshd_src):
            meshd = Meshd(
                etcd.endpoint,
                workdir,
                f"meshd-{endpoints}",
                log_level="info",
                profile="phase" if args.profile else "",
                extra_args=["--prefix", prefix, *args.meshd_flag],
            )
        await meshd.wait_ready(revision, timeout=args.timeout)
        clients = await connected_clients(meshd.target, args, workdir, f"loadgen-{endpoints}")
        pids = [meshd.pid, *clients.pids]
        await quiesce(pids)
        # The same route change without a burst: what the machine gives at best.
        calm = ROUTE_IDS + args.route_changes
        for k in range(calm, calm + args.calm_changes):
            route = registry.put(
                prefix + "routes/default/marker", json.dumps(route_value(k)).encode()
            )
            ms, missing = await one_change(route, k, clients, pids, args)
            fig.calm_ms += ms
            fig.calm_missing += missing
            fig.calm_changes += 1
        # One endpoint update alone: one push of the whole assignment (ids after the burst's).
        for k in range(MARKER_ID + 1, MARKER_ID + 1 + args.calm_changes):
            marker = registry.put(
                f"{prefix}endpoints/default/{SERVICE}/e0", json.dumps(marker_value(k)).encode()
            )
            ms, missing = await one_change(marker, k, clients, pids, args)
            fig.calm_push_ms.append(max(ms, default=0.0))
            fig.calm_push_missing += missing
        pushes_before = await _pushes(meshd)
        batches_before = await _batches(meshd)
        meshd.profile_phase(True)
        cpu0 = meshd.cpu()
        clients_cpu0 = sum(_cpu(p) for p in clients.pids)
        watcher = await BareWatcher.start(etcd.endpoint, prefix + "routes/default/marker")
        route_written, last_written = await burst(registry, fig, args, endpoints)
        times, fig.last_missing = await clients.wait_change(MARKER_ID, args.timeout)
        if times:
            fig.last_ms = (max(times) - last_written) * 1000
        # A client holds route change i once it holds it or a later one: two route changes
        # translated in one batch reach the clients as the later one only.
        held: dict[str, float] = {}
        by_change = []
        for i in reversed(range(len(route_written))):
            wait = args.timeout if i == len(route_written) - 1 else 0.0
            for client, t in (await clients.arrivals(ROUTE_IDS + i, wait)).items():
                held[client] = min(t, held.get(client, t))
            by_change.append(dict(held))
        for written, got in zip(route_written, reversed(by_change), strict=True):
            fig.route_ms += [(t - written) * 1000 for t in got.values()]
            fig.route_missing += args.clients - len(got)
        bare = await watcher.arrivals()
        fig.bare_ms = [
            (bare[ROUTE_IDS + i] - t) * 1000
            for i, t in enumerate(route_written)
            if ROUTE_IDS + i in bare
        ]
        fig.settle_s = await quiesce([meshd.pid], limit=args.timeout)
        fig.cpu_s = meshd.cpu() - cpu0
        meshd.profile_phase(False)
        fig.clients_cpu_s = sum(_cpu(p) for p in clients.pids) - clients_cpu0
        after = await _pushes(meshd)
        fig.pushes = {k: after.get(k, 0) - pushes_before.get(k, 0) for k in after}
        batches = await _batches(meshd)
        fig.batches = int(batches[0] - batches_before[0])
        fig.lag_ms = (batches[1] - batches_before[1]) / max(1.0, batches[2] - batches_before[2])
        fig.lag_ms *= 1000
        status = await clients.status()
        fig.errors = status["errors"]
        meshd.check_alive()
        return fig
    finally:
        if clients is not None:
            await clients.close()
        if meshd is not None:
            meshd.stop()
        await registry.close()


class BareWatcher:
    """A process of its own that watches the route key on etcd and notes when each route
    change id arrives (``time.monotonic()``): what etcd's own delivery costs a watcher
    that does nothing else, beside what meshd's clients see."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, endpoint: str, key: str) -> BareWatcher:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "integration.bench_churn",
            "--bare-watch",
            endpoint,
            key,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 30)  # "watching"
        return cls(proc)

    async def arrivals(self) -> dict[int, float]:
        """Route change id -> when the watcher got it (all it got; stops it)."""
        self.proc.terminate()
        out, _ = await self.proc.communicate()
        got: dict[int, float] = {}
        for line in out.decode().splitlines():
            change, at = line.split()
            got.setdefault(int(change), float(at))
        return got


async def bare_watch(endpoint: str, key: str) -> None:
    """The watcher's process: one line ``<route change id> <monotonic time>`` per change."""
    registry = EtcdRegistry(endpoint, prefix=key.rsplit("/", 3)[0] + "/")
    watching = False
    async for update in registry.updates():
        now = time.monotonic()
        if not watching:
            # Only now: the first update is the listing, and the watch goes on from its
            # revision, so no write after this line is missed.
            print("watching", flush=True)
            watching = True
        for event in getattr(update, "events", ()):
            if event.key == key and event.value:
                prefix = json.loads(event.value)["match"]["prefix"]
                print(prefix.rsplit("/", 1)[1], now, flush=True)


def _cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


async def _batches(meshd: Meshd) -> tuple[float, float, float]:
    """Batches of registry updates meshd translated so far, and the sum and count of its
    watch lag samples (etcd event received -> applied)."""
    m = await meshd.metrics(
        "meshd_translate_seconds_count",
        "meshd_registry_watch_lag_seconds_sum",
        "meshd_registry_watch_lag_seconds_count",
    )
    return (
        m.get("meshd_translate_seconds_count", 0.0),
        m.get("meshd_registry_watch_lag_seconds_sum", 0.0),
        m.get("meshd_registry_watch_lag_seconds_count", 0.0),
    )


async def _pushes(meshd: Meshd) -> dict[str, float]:
    """Responses meshd wrote so far, by type."""
    out: dict[str, float] = {}
    for key, value in (await meshd.metrics("meshd_xds_pushes_total")).items():
        kind = key.partition("type=")[2].split(",")[0].rstrip("}")
        out[kind] = out.get(kind, 0) + value
    return out


async def floor_size(endpoints: int, args: argparse.Namespace, workdir: Path, fig: Figures) -> None:
    """The same clients against the floor server serving the same shape: ``--floor-changes``
    route changes and as many pushes of the whole assignment, one at a time, no churn.
    What no server can beat here, for the clients and the machine at hand."""
    floor = await Floor.start(
        1,
        endpoints,
        workdir,
        extra=[
            *("--one", CLUSTER, "--marker-address", MARKER_ADDRESS, "--route-mark", ROUTE_MARK),
            *("--prebuilt", str(args.floor_changes + 2)),
        ],
    )
    clients: LoadGenGroup | None = None
    try:
        clients = await connected_clients(floor.target, args, workdir, f"floor-loadgen-{endpoints}")
        pids = [floor.pid, *clients.pids]
        await quiesce(pids)
        for k in range(1, args.floor_changes + 1):
            change = ROUTE_IDS + k
            route = floor.send(f"route {change}")
            ms, missing = await one_change(route, change, clients, pids, args)
            fig.floor_route_ms += ms
            fig.floor_route_missing += missing
            fig.floor_changes += 1
            ms, missing = await one_change(floor.send(f"push {k}"), k, clients, pids, args)
            fig.floor_push_ms.append(max(ms, default=0.0))
            fig.floor_push_missing += missing
    finally:
        if clients is not None:
            await clients.close()
        await floor.close()


async def amain(args: argparse.Namespace, workdir: Path) -> list[Figures]:
    etcd = EmbeddedEtcd(workdir / "etcd", unsafe_no_fsync=True, auto_compaction_retention=None)
    await etcd.start()
    figures = []
    try:
        for endpoints in args.sizes:
            say(f"\n-- a service of {endpoints} endpoints ({load()})")
            fig = await run_size(etcd, endpoints, args, workdir)
            if args.floor_changes:
                await floor_size(endpoints, args, workdir, fig)
            for line in fig.report():
                say(line)
            figures.append(fig)
    finally:
        etcd.stop()
    return figures


def summary(figures: list[Figures]) -> list[str]:
    """The CPU per update of the largest size against the smallest."""
    if len(figures) < 2:
        return []
    big = max(figures, key=lambda f: f.endpoints)
    small = min(figures, key=lambda f: f.endpoints)
    ratio = big.cpu_per_update_ms / small.cpu_per_update_ms if small.cpu_s else float("nan")
    return [
        f"meshd CPU per update: {big.endpoints} endpoints {big.cpu_per_update_ms:.3f} ms, "
        f"{small.endpoints} endpoints {small.cpu_per_update_ms:.3f} ms: {ratio:.2f}x "
        f"(target <= 1.5x): " + _verdict(ratio <= 1.5)
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoints", type=int, default=10_000, help="endpoints of the big service")
    p.add_argument("--small-endpoints", type=int, default=10, help="the service compared")
    p.add_argument("--updates", type=int, default=10_000, help="single-endpoint updates")
    p.add_argument("--clients", type=int, default=1_000, help="Delta clients")
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--route-changes", type=int, default=5, help="route changes in the burst")
    p.add_argument(
        "--calm-changes",
        type=int,
        default=3,
        help="route changes, and as many endpoint updates, measured alone before the burst",
    )
    p.add_argument(
        "--floor-changes",
        type=int,
        default=5,
        help="route changes and assignment pushes through the floor server (0: no floor)",
    )
    p.add_argument("--inflight", type=int, default=16, help="puts in flight while writing")
    p.add_argument("--order", choices=("big-first", "small-first"), default="big-first")
    p.add_argument("--only", choices=("big", "small", "both"), default="both")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait at each step")
    p.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    p.add_argument("--meshd-src", type=Path, default=None, help="run meshd from this tree")
    p.add_argument(
        "--meshd-flag", action="append", default=[], help="an extra meshd flag (repeatable)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    p.add_argument(
        "--profile", action="store_true", help="cProfile meshd during the burst (slows it)"
    )
    args = p.parse_args(argv)
    if args.small:
        args.endpoints, args.small_endpoints = (
            min(args.endpoints, 200),
            min(args.small_endpoints, 5),
        )
        args.updates, args.clients = min(args.updates, 300), min(args.clients, 4)
        args.route_changes, args.procs = min(args.route_changes, 2), 1
        args.floor_changes = min(args.floor_changes, 2)
    sizes = {"big": [args.endpoints], "small": [args.small_endpoints]}
    sizes["both"] = [args.endpoints, args.small_endpoints]
    args.sizes = sizes[args.only]
    if args.order == "small-first":
        args.sizes.reverse()
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--bare-watch"]:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(bare_watch(argv[1], argv[2]))
        return
    args = parse_args(argv)
    raise_nofile_limit()
    workdir = Path(tempfile.mkdtemp(prefix="bench-churn-"))
    src = args.meshd_src or Path(__file__).resolve().parent.parent
    say(
        f"bench_churn: {os.cpu_count()} CPUs, {load()}, {args.clients} Delta clients in "
        f"{args.procs} load generator process(es), {args.inflight} puts in flight, etcd "
        f"--unsafe-no-fsync; meshd code at {source_revision(src)} ({src}); {compile_meshd()}; "
        f"work dir {workdir}"
    )
    started = time.monotonic()
    try:
        figures = asyncio.run(amain(args, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    say(f"\nsummary ({time.monotonic() - started:.0f} s, {load()}):")
    for fig in figures:
        for line in fig.report():
            say("  " + line)
    for line in summary(figures):
        say("  " + line)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
