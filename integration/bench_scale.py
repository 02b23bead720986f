"""Scale benchmark: many simulated ADS clients against meshd, and against the floor.

Real etcd, meshd as its own process (the console script, so its RSS and CPU are read from
/proc), simulated Envoy clients in a load generator process (:mod:`integration.loadgen`), and
for comparison the floor (:mod:`integration.floor_server`): a static ADS server that writes
pre-serialized bytes, driven by the same clients with the same protocol, client count and
churn. Figures (targets for this 2-core machine):

1. ``cold``: time from meshd start to a complete config on the first client, 10,000 services
   x 10 endpoints in etcd (target < 3 s). The median of ``--cold-runs`` (3) starts against the
   same etcd, each printed: this VM's speed can change 2x within minutes.
2. ``fanout``: one endpoint change reaching every client, p50/p99 over 100 changes, 2,000
   clients and 1,000 services x 10 endpoints, SotW and Delta (target: within 1.5x of the floor).
   ``churn``: the same with 1,000 Delta clients while 10 unrelated endpoint changes per second
   run, the same churn on the floor. ``--churn-scope``: ``unsubscribed`` (the clients' scope is
   a TCP listener to ``s0``, so the churned services are not theirs: meshd's cost of deciding
   that), ``subscribed`` (every client gets every cluster, so the churn is pushed to all of
   them, by meshd and by the floor), or ``both`` (default).
3. ``scaling``: the same single-endpoint change at 100 and at 10,000 services: meshd CPU time
   per change (from /proc, idle share removed) grows by less than 2x. Also printed: what a
   whole /metrics scrape costs meshd at each size (every service has its health series).
4. ``memory``: meshd RSS (VmRSS) per connected client beyond its baseline, against what a bare
   gRPC stream costs on the floor server with a one-cluster config (the median of
   ``--bare-runs`` (3) connect storms: it varies between them; target: at most 25 KB
   more). Measured by ``fanout`` too. ``--trace-memory`` adds meshd's Python heap per client
   (tracemalloc), which RSS mixes with gRPC's and malloc's buffers.
5. ``storm``: every client reconnects within one second, half of them to a second meshd on
   the same etcd; all in sync again within 10 s, and none is sent a version it already holds
   or a different one. The same storm between two floor servers shows what reconnecting
   costs by itself.

    python -m integration.bench_scale [--clients 2000] [--services 1000] [--only FIG[,FIG]]

A change sets the port of endpoint ``e0`` of service ``s0`` to ``base + change id``; every
client subscribes to ``s0.default`` (as Envoy does, to every cluster) and notes when the
response carrying that port arrives. Latency runs from just before the etcd write (for the
floor: just before the push command is written to its stdin) to that arrival. The next change
waits until the server and the clients are idle (their ACKs handled), so each change is
measured on its own; a series stops after ``--budget`` seconds. For figure 2, the floor and
meshd are up at once, each with its own clients, and take the changes in alternating blocks of
``--block`` (10): this VM's speed drifts by up to 2x within minutes, and run one after the
other, a slow spell would land on one of them only. Clients run in ``--procs``
load generator processes. ``--profile`` runs meshd under cProfile during the changes (cold
start: all of it) and prints where its time goes. Figures are printed, never asserted. etcd
runs with ``--unsafe-no-fsync`` unless ``--fsync``.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import io
import itertools
import json
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from prometheus_client.parser import text_string_to_metric_families

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import free_port
from integration.loadgen import MARKER_BASE, LoadGenGroup, raise_nofile_limit, rss_kb

FIGURES = ("cold", "fanout", "churn", "scaling", "memory", "storm")
BASE = MARKER_BASE  # marker ports: BASE + change id
TXN_BATCH = 1000  # puts per etcd transaction (EmbeddedEtcd allows 1024)
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCRAPES = 5  # whole /metrics scrapes timed at each size of the scaling figure


# --------------------------------------------------------------------------- helpers


def percentile(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (/proc/PID/stat utime + stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def ratio(value: float, base: float) -> str:
    """``value / base`` as a figure, or why there is none: /proc counts CPU in 10 ms ticks,
    so a side that made a few cheap changes can measure none at all."""
    if base <= 0:
        return "n/a (nothing measured on the smaller side: make more changes)"
    return f"{value / base:.2f}x"


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def say(line: str) -> None:
    print(line, flush=True)


def address(i: int) -> str:
    """A distinct 10.x.y.z per endpoint."""
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def registry_entries(
    services: int, endpoints: int, tcp_scope: bool = False
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The benchmark registry (keys without prefix), exactly as ``registry.md`` specifies.

    Normally listener ``public`` serves every node, so every client gets every cluster (every
    HTTP listener routes every service's default host). ``tcp_scope``: ``public`` serves only
    ``gateway`` nodes and the clients (node cluster ``sidecar``) get a TCP listener to ``s0``:
    their scope is the cluster and endpoints of ``s0``, so a change to any other service is
    unrelated to them.
    """
    if tcp_scope:
        yield "listeners/public", {"address": "0.0.0.0", "port": 10000, "nodes": ["gateway"]}
        yield (
            "listeners/tcp-s0",
            {
                "address": "0.0.0.0",
                "port": 10001,
                "protocol": "tcp",
                "service": "default/s0",
                "nodes": ["sidecar"],
            },
        )
    else:
        yield "listeners/public", {"address": "0.0.0.0", "port": 10000, "nodes": ["*"]}
    for i in range(services):
        yield f"services/default/s{i}", {"protocol": "http", "port": 8080}
        for j in range(endpoints):
            ep = {"address": address(i * endpoints + j), "port": 8080}
            yield f"endpoints/default/s{i}/e{j}", ep


async def put_entries(
    registry: EtcdRegistry, entries: Iterable[tuple[str, Any]]
) -> tuple[int, int]:
    """Write ``entries`` (key under the prefix, JSON value) in transactions of TXN_BATCH
    puts; (the last revision, keys written)."""
    batch: dict[str, bytes] = {}
    revision = keys = 0
    for key, value in entries:
        batch[registry.prefix + key] = json.dumps(value).encode()
        if len(batch) == TXN_BATCH:
            revision = await registry.txn(puts=batch)
            keys += len(batch)
            batch = {}
    if batch:
        revision = await registry.txn(puts=batch)
        keys += len(batch)
    return revision, keys


async def seed(
    registry: EtcdRegistry, services: int, endpoints: int, tcp_scope: bool = False
) -> tuple[int, float, int]:
    """Write the registry in transactions of TXN_BATCH puts; (revision, seconds, keys)."""
    started = time.perf_counter()
    revision, keys = await put_entries(registry, registry_entries(services, endpoints, tcp_scope))
    return revision, time.perf_counter() - started, keys


def marker_value(change: int) -> bytes:
    return json.dumps({"address": address(0), "port": BASE + change}).encode()


def churn_key_value(k: int, services: int, endpoints: int) -> tuple[str, bytes]:
    """An unrelated endpoint change (never s0): service 1 + k % (S - 1), endpoint k % E."""
    i = 1 + k % max(1, services - 1)
    j = k % endpoints
    value = {"address": address(i * endpoints + j), "port": 20000 + k % 10000}
    return f"endpoints/default/s{i}/e{j}", json.dumps(value).encode()


# --------------------------------------------------------------------------- processes


class ServerProcess:
    """What a benchmark reads of an xDS server it started as a process: the subclass sets
    ``proc``, ``xds_port`` and ``log_path``; ``what`` names it in errors."""

    what = "server"
    proc: subprocess.Popen[bytes]
    xds_port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.what} exited with {self.proc.returncode}:\n{tail}")


class Meshd(ServerProcess):
    """meshd as its own process (the console script next to sys.executable)."""

    what = "meshd"

    def __init__(
        self,
        etcd: str,
        workdir: Path,
        name: str,
        log_level: str = "warning",
        xds_port: int | None = None,
        profile: str = "",
        grace: float = 0.5,
        extra_args: Sequence[str] = (),
    ) -> None:
        # Children inherit rlimits: raising ours gives meshd the hard open-files limit too
        # (a preexec_fn would make the fork run gRPC's fork handlers in this process).
        raise_nofile_limit()
        self.xds_port = xds_port or free_port()
        self.metrics_port = free_port()
        # Its own admin port, not the default 18001: gRPC binds with SO_REUSEPORT, so
        # meshds up at once (the scaling figure's two, the storm's replicas) would share one
        # port, and anything else bound there would stop this meshd from starting.
        self.admin_port = free_port()
        self.log_path = workdir / f"{name}.log"
        exe = Path(sys.executable).with_name("meshd")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "xds_server.cli.meshd"]
        self.profile_path: Path | None = None
        if profile:
            # meshd's own main() under a cProfile that SIGUSR1 starts and SIGUSR2 stops
            # ("start": from the first instruction), so a profile covers one phase only.
            # "tracemalloc": SIGUSR1 starts tracing, each SIGUSR2 writes a snapshot.
            self.profile_path = workdir / f"{name}.prof"
            # A name may be reused by a later run: never read an earlier run's output.
            for stale in [self.profile_path, *workdir.glob(f"{name}.prof.*")]:
                stale.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "integration.bench_scale", "--profiled-meshd"]
            cmd += [str(self.profile_path), profile, "--"]
        self.tracing = profile == "tracemalloc"
        self._log = self.log_path.open("wb")
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                *cmd,
                "--etcd",
                etcd,
                "--xds",
                f"127.0.0.1:{self.xds_port}",
                "--metrics",
                f"127.0.0.1:{self.metrics_port}",
                "--admin",
                f"127.0.0.1:{self.admin_port}",
                "--data-dir",
                str(workdir / f"{name}-data"),
                "--log-level",
                log_level,
                # Streams get this long to close on SIGTERM (meshd's default is 2 s).
                "--grace",
                str(grace),
                *extra_args,  # e.g. --prefix, --xds-tls, --xds-auth
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def metrics(self, *names: str) -> dict[str, float]:
        """``name{labels}`` -> value of every sample of meshd's /metrics (only of the
        samples ``names`` when given: a whole scrape costs meshd ~30 ms of CPU at 1,000
        services, too much to poll every 50 ms while measuring)."""
        query = "&".join(f"name[]={n}" for n in names)
        url = f"http://127.0.0.1:{self.metrics_port}/metrics" + (f"?{query}" if query else "")

        def get() -> str:
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())

        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(await asyncio.to_thread(get)):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    async def wait_ready(self, revision: int, timeout: float = 120) -> float:
        """Wait until meshd serves ``revision`` (its registry_revision gauge); seconds taken."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError):
                m = await self.metrics("meshd_registry_revision")
                if m.get("meshd_registry_revision", 0) >= revision:
                    return time.monotonic() - self.started
            await asyncio.sleep(0.05)
        raise TimeoutError(f"meshd not at revision {revision} after {timeout} s")

    def ready_logged_at(self) -> float | None:
        """Seconds from start to meshd's own "meshd ready" log line (needs log level info)."""
        m = re.search(
            r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO meshd: meshd ready",
            self.log_path.read_text(errors="replace"),
            re.M,
        )
        if m is None:
            return None
        stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return stamp - self.started_wall

    def traced(self, dump: int, timeout: float = 60) -> tuple[int, list[str]]:
        """Bytes traced at tracemalloc snapshot ``dump`` (waits for it), and its top lines."""
        assert self.profile_path is not None
        path = Path(f"{self.profile_path}.{dump}")
        deadline = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)  # written in one go; let it land
        first, *top = path.read_text().splitlines()
        return int(first.split()[0]), top

    def profile_phase(self, on: bool) -> None:
        """Start (SIGUSR1) or stop and dump (SIGUSR2) the profile of a --profiled-meshd."""
        if self.profile_path is not None and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGUSR1 if on else signal.SIGUSR2)

    def stop(self) -> None:
        self.profile_phase(False)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self.profile_path is not None and self.profile_path.exists() and not self.tracing:
            stream = io.StringIO()
            stats = pstats.Stats(str(self.profile_path), stream=stream)
            stats.sort_stats("tottime").print_stats(20)
            stats.sort_stats("cumulative").print_stats(30)
            say(
                f"  cProfile of {self.log_path.stem} (pid {self.pid}; figures under profile are "
                f"slower than real ones):\n{stream.getvalue()}"
            )


class Floor:
    """The floor server process (:mod:`integration.floor_server`), driven over stdin."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    @classmethod
    async def start(
        cls,
        services: int,
        endpoints: int,
        workdir: Path,
        tcp: bool = False,
        extra: Sequence[str] = (),
    ) -> Floor:
        """Start it; ``extra``: more of its flags (``--one`` and the like)."""
        log = (workdir / "floor.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "integration.floor_server",
            "--services",
            str(services),
            "--endpoints",
            str(endpoints),
            "--base",
            str(BASE),
            *(["--tcp"] if tcp else []),
            *extra,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"floor server did not start; see {workdir / 'floor.log'}")
        return cls(proc, int(line[1]))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.send("quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# --------------------------------------------------------------------------- measurements


@dataclass
class Latency:
    """Per-client arrival latencies of a series of changes."""

    samples: list[float] = field(default_factory=list)
    missing: int = 0
    changes: int = 0
    cut: bool = False  # stopped by the time budget
    settle_s: float = 0.0  # time spent waiting for the processes to go idle
    slowest: list[tuple[float, float]] = field(default_factory=list)
    """Per change: (seconds since the series began, its slowest client's latency in ms)."""

    @property
    def p50(self) -> float:
        return percentile(sorted(self.samples), 0.50)

    @property
    def p99(self) -> float:
        return percentile(sorted(self.samples), 0.99)

    @property
    def max(self) -> float:
        return max(self.samples, default=float("nan"))

    def merge(self, other: Latency) -> None:
        """Add another block of the same series."""
        self.samples += other.samples
        self.missing += other.missing
        self.changes += other.changes
        self.settle_s += other.settle_s
        self.slowest += other.slowest

    def __str__(self) -> str:
        miss = f" MISSING {self.missing}" if self.missing else ""
        cut = " (time budget)" if self.cut else ""
        settle = f", {self.settle_s / self.changes:.2f} s idle wait/change" if self.settle_s else ""
        return (
            f"p50={self.p50:.1f}ms p99={self.p99:.1f}ms max={self.max:.1f}ms "
            f"({len(self.samples)} samples, {self.changes} changes{cut}{settle}){miss}"
        )


async def quiesce(pids: list[int], limit: float = 15.0) -> float:
    """Wait until ``pids`` together use under 15% of a core over 50 ms; seconds waited.

    After the last client got a change, the server still handles their ACKs (and the clients
    still write them). The next change waits for that, so each change is measured on its own
    whatever the server's ACK cost: same rule for meshd and the floor.
    """
    started = time.monotonic()
    while time.monotonic() - started < limit:
        c0 = sum(cpu_seconds(p) for p in pids)
        await asyncio.sleep(0.05)
        if sum(cpu_seconds(p) for p in pids) - c0 < 0.15 * 0.05:
            break
    return time.monotonic() - started


async def measure_changes(
    trigger: Callable[[int], Awaitable[None]],
    clients: LoadGenGroup,
    ids: range,
    *,
    gap: float,
    budget: float,
    quiet: list[int] | None = None,
    timeout: float = 10.0,
) -> Latency:
    """Make each change, wait for every client to hold it, collect latencies (ms).

    Between changes: wait for ``quiet`` processes to go idle (if given), then ``gap`` s.
    Stops early once ``budget`` seconds are spent, so a slow server cannot make a run
    take forever (the figure says how many changes it is over).
    """
    lat = Latency()
    started = time.monotonic()
    for k in ids:
        if lat.changes and time.monotonic() - started > budget:
            lat.cut = True
            break
        t0 = time.monotonic()
        await trigger(k)
        times, missing = await clients.wait_change(k, timeout)
        ms = [(t - t0) * 1000 for t in times]
        lat.samples += ms
        lat.slowest.append((t0 - started, max(ms, default=float("nan"))))
        lat.missing += missing
        lat.changes += 1
        if quiet:
            lat.settle_s += await quiesce(quiet)
        await asyncio.sleep(gap)
    return lat


async def churn_loop(
    rate: float, send: Callable[[int], Awaitable[None]], ks: Iterator[int]
) -> None:
    """Background churn at ``rate`` changes per second until cancelled; change ``k`` for
    each ``k`` of ``ks`` (a side's churn goes on where its last block left it)."""
    start = time.monotonic()
    for n, k in enumerate(ks, 1):
        await send(k)
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))


@dataclass
class Run:
    """What one target (floor or meshd) gave for one client population."""

    name: str
    connect_s: float = 0.0
    rss_base_kb: int = 0
    rss_connected_kb: int = 0
    rss_after_kb: int = 0
    clients: int = 0
    latency: Latency | None = None
    cpu_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    error_details: dict[str, str] = field(default_factory=dict)
    traced: int = 0  # tracemalloc bytes held after the clients connected (--trace-memory)
    trims: str = ""  # meshd's heap trims by the time RSS was read with the clients connected

    @property
    def errors_text(self) -> str:
        """Stream errors the clients saw (and retried), with the first message of each code."""
        if not self.errors:
            return "none"
        details = "; ".join(f"{k}: {v!r}" for k, v in self.error_details.items())
        return f"{self.errors} ({details})" if details else str(self.errors)

    @property
    def per_client_kb(self) -> float:
        return (self.rss_connected_kb - self.rss_base_kb) / max(1, self.clients)

    def memory(self) -> str:
        return (
            f"base {self.rss_base_kb / 1024:.0f} MB, with clients "
            f"{self.rss_connected_kb / 1024:.0f} MB: {self.per_client_kb:.1f} KB per client"
            + (f" ({self.trims})" if self.trims else "")
        )

    @property
    def after(self) -> str:
        return f"{self.rss_after_kb / 1024:.0f} MB"


@dataclass
class Side:
    """A server with its clients connected, ready for a series of changes (Bench.series)."""

    run: Run
    clients: LoadGenGroup
    server_pid: int
    change: Callable[[int], Awaitable[None]]  # make change k (the clients' marker k)
    churn: Callable[[int], Awaitable[None]]  # make unrelated change k
    profile: Callable[[bool], None] = lambda on: None  # profile meshd during its blocks
    churned: Iterator[int] = field(default_factory=itertools.count)
    others_cpu_s: float = 0.0  # CPU the other sides (server, clients) used in this side's blocks
    spent_s: float = 0.0  # time spent in this side's blocks

    @property
    def pids(self) -> list[int]:
        return [self.server_pid, *self.clients.pids]


async def _read_errors(run: Run, clients: LoadGenGroup) -> None:
    status = await clients.status()
    run.errors = status["errors"]
    run.error_details = status.get("error_details") or {}


class Bench:
    """One benchmark invocation: a work dir, etcds by registry size, the change counter."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.etcds: dict[tuple[int, int, bool], tuple[EmbeddedEtcd, EtcdRegistry, int]] = {}
        self.next_change = 0
        self.summary: list[str] = []

    def report(self, line: str) -> None:
        say(line)
        self.summary.append(line)

    def change_ids(self, n: int) -> range:
        """Fresh change ids: a marker port is never reused within one invocation."""
        ids = range(self.next_change, self.next_change + n)
        self.next_change += n
        return ids

    async def registry(
        self, services: int, endpoints: int, tcp_scope: bool = False
    ) -> tuple[EmbeddedEtcd, EtcdRegistry, int]:
        """An etcd seeded with ``services`` x ``endpoints`` (created once per size and scope)."""
        key = (services, endpoints, tcp_scope)
        if key not in self.etcds:
            etcd = EmbeddedEtcd(
                self.workdir / f"etcd-{services}x{endpoints}{'-tcp' if tcp_scope else ''}",
                unsafe_no_fsync=not self.args.fsync,
                auto_compaction_retention=None,
            )
            await etcd.start()
            registry = EtcdRegistry(etcd.endpoint, timeout=30)
            revision, secs, keys = await seed(registry, services, endpoints, tcp_scope)
            fsync = "with fsync" if self.args.fsync else "etcd --unsafe-no-fsync"
            say(
                f"  seeded {keys} keys ({services} services x {endpoints} endpoints) in "
                f"{secs:.2f} s: {keys / secs:.0f} keys/s, txns of {TXN_BATCH} puts, {fsync}"
            )
            self.etcds[key] = (etcd, registry, revision)
        etcd, registry, revision = self.etcds[key]
        # Later figures may have written more: wait for what is there now.
        head = await registry.put(registry.prefix + "bench/head", b"{}")
        await registry.delete(registry.prefix + "bench/head")
        return etcd, registry, max(revision, head)

    async def close(self) -> None:
        for etcd, registry, _ in self.etcds.values():
            await registry.close()
            etcd.stop()

    async def clients(self, tag: str) -> LoadGenGroup:
        return await LoadGenGroup.start(self.args.procs, self.workdir, tag)

    # -- one population against one target ------------------------------------------------

    async def connect(
        self,
        clients: LoadGenGroup,
        target: str,
        sotw: int,
        delta: int,
        timeout: float,
        **client_args: Any,
    ) -> tuple[float, dict[str, Any]]:
        """Start the clients (``client_args``: more of the load generator's ``add``) and
        wait until all hold a complete config; (seconds from the start to the last, status)."""
        t0 = time.monotonic()
        await clients.add(target, sotw=sotw, delta=delta, backoff=self.args.backoff, **client_args)
        res = await clients.wait_complete(timeout)
        if res["complete"] < sotw + delta:
            say(f"  !! only {res['complete']}/{sotw + delta} clients complete after {timeout} s")
        return (res["last"] or time.monotonic()) - t0, res

    @contextlib.asynccontextmanager
    async def floor_side(
        self, services: int, sotw: int, delta: int, tcp_scope: bool = False
    ) -> AsyncIterator[Side]:
        """The floor server with its clients connected (RSS read before and after they
        connect), for :meth:`series`; its last RSS and the clients' errors are read on exit."""
        run = Run("floor", clients=sotw + delta)
        floor = await Floor.start(services, self.args.endpoints, self.workdir, tcp=tcp_scope)
        clients: LoadGenGroup | None = None
        try:
            clients = await self.clients("loadgen-floor")
            await asyncio.sleep(0.5)
            run.rss_base_kb = rss_kb(floor.pid)
            run.connect_s, _ = await self.connect(clients, floor.target, sotw, delta, 300)
            await asyncio.sleep(self.args.settle)
            run.rss_connected_kb = rss_kb(floor.pid)

            async def push(k: int) -> None:
                await floor.send(f"push {k}")

            async def churn(k: int) -> None:
                await floor.send(f"churn {k}")

            yield Side(run, clients, floor.pid, push, churn)
            run.rss_after_kb = rss_kb(floor.pid)
            await _read_errors(run, clients)
        finally:
            if clients is not None:
                await clients.close()
            await floor.close()

    @contextlib.asynccontextmanager
    async def meshd_side(
        self, services: int, sotw: int, delta: int, tcp_scope: bool = False
    ) -> AsyncIterator[Side]:
        """meshd on an etcd seeded with ``services`` with its clients connected, as
        :meth:`floor_side`; changes are etcd writes, and so is the churn."""
        run = Run("meshd", clients=sotw + delta)
        etcd, registry, revision = await self.registry(services, self.args.endpoints, tcp_scope)
        mode = "tracemalloc" if self.args.trace_memory else "phase" if self.args.profile else ""
        meshd = Meshd(etcd.endpoint, self.workdir, "meshd", profile=mode)
        clients: LoadGenGroup | None = None
        try:
            await meshd.wait_ready(revision)
            await asyncio.sleep(1)
            run.rss_base_kb = meshd.rss_kb()
            clients = await self.clients("loadgen-meshd")
            if meshd.tracing:
                meshd.profile_phase(True)
            run.connect_s, _ = await self.connect(clients, meshd.target, sotw, delta, 300)
            await asyncio.sleep(self.args.settle)
            meshd.check_alive()
            run.rss_connected_kb = meshd.rss_kb()
            run.trims = await heap_trims(meshd)
            if meshd.tracing:
                meshd.profile_phase(False)
                traced, top = await asyncio.to_thread(meshd.traced, 1)
                run.traced = traced
                say(
                    f"  meshd Python heap allocated since before the clients and still held: "
                    f"{traced / 1024 / 1024:.1f} MB = {traced / 1024 / run.clients:.1f} KB/client "
                    f"(tracemalloc: this run's latencies and RSS include its overhead); top:\n    "
                    + "\n    ".join(top[:8])
                )
            key = registry.prefix + "endpoints/default/s0/e0"
            e = self.args.endpoints

            async def put(k: int) -> None:
                await registry.put(key, marker_value(k))

            async def churn(k: int) -> None:
                churn_key, value = churn_key_value(k, services, e)
                await registry.put(registry.prefix + churn_key, value)

            side = Side(run, clients, meshd.pid, put, churn, profile=meshd.profile_phase)
            yield side
            meshd.check_alive()
            run.rss_after_kb = meshd.rss_kb()
            if meshd.tracing and run.latency is not None:
                traced, top = await asyncio.to_thread(meshd.traced, 2)
                say(
                    f"  meshd Python heap after the changes: {traced / 1024 / 1024:.1f} MB "
                    f"({(traced - run.traced) / 1024 / 1024:+.1f} MB); top:\n    "
                    + "\n    ".join(top[:5])
                )
            await _read_errors(run, clients)
        finally:
            if clients is not None:
                await clients.close()
            meshd.stop()

    async def series(self, sides: list[Side], changes: int, churn: float = 0.0) -> None:
        """The same series of changes on every side, in alternating blocks.

        This VM's speed changes by up to 2x within minutes. Measured one after the other,
        a slow minute lands on one side only; in blocks of ``--block`` changes taken in turn
        (A B, B A, A B, ...), both sides see the same mix of fast and slow minutes. Every
        side gets the same changes: the series stops once a side has spent ``--budget``
        seconds in its blocks, and a round's first block stops there too, its count then
        being the round's. With ``churn``, the churn runs on the side being measured only,
        from 1 s before the block's first change. Before each block, the other sides are left
        to go idle (their last ACKs), so they do not load it. Each side's latency, CPU and
        time spent are this series' own.
        """
        a = self.args
        for s in sides:
            s.run.latency, s.run.cpu_s, s.spent_s, s.others_cpu_s = Latency(), 0.0, 0.0, 0.0
        order = list(sides)
        done = 0
        while done < changes and max(s.spent_s for s in sides) <= a.budget:
            n = min(a.block, changes - done)
            for i, side in enumerate(order):
                others = [p for o in sides if o is not side for p in o.pids]
                # (An overloaded series, like the subscribed churn, can take a while.)
                await quiesce(others, limit=60)
                churner: asyncio.Task[None] | None = None
                if churn:
                    churner = asyncio.create_task(churn_loop(churn, side.churn, side.churned))
                    await asyncio.sleep(1)
                side.profile(True)
                cpu0 = cpu_seconds(side.server_pid)
                idle0 = sum(cpu_seconds(p) for p in others)
                t0 = time.monotonic()
                try:
                    block = await measure_changes(
                        side.change,
                        side.clients,
                        self.change_ids(n),
                        gap=a.gap,
                        budget=a.budget - side.spent_s if i == 0 else float("inf"),
                        quiet=None if churn else side.pids,
                    )
                finally:
                    if churner is not None:
                        churner.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await churner
                side.spent_s += time.monotonic() - t0
                side.run.cpu_s += cpu_seconds(side.server_pid) - cpu0
                side.others_cpu_s += sum(cpu_seconds(p) for p in others) - idle0
                side.profile(False)
                assert side.run.latency is not None  # (set above)
                side.run.latency.merge(block)
                n = block.changes  # the round's other blocks make as many
            done += n
            order.reverse()
        for s in sides:
            assert s.run.latency is not None
            s.run.latency.cut = done < changes

    # -- figures --------------------------------------------------------------------------

    async def cold(self) -> None:
        a = self.args
        say(f"[1] cold start: {a.cold_services} services x {a.endpoints} endpoints ({load()})")
        etcd, _, _ = await self.registry(a.cold_services, a.endpoints)
        runs: list[tuple[float, float, float | None, int, int]] = []
        for run in range(a.cold_runs):
            runs.append(await self._cold_once(etcd, run))
            first, last, ready, rss, complete = runs[-1]
            ready_s = f"{ready:.2f} s" if ready is not None else "?"
            say(
                f"  run {run + 1}: first client complete {first:.2f} s, both {last:.2f} s, "
                f"meshd logged ready (snapshot built) at {ready_s}, RSS {rss / 1024:.0f} MB, "
                f"complete {complete}/2"
            )
        firsts = sorted(r[0] for r in runs)
        every = ", ".join(f"{r[0]:.2f}" for r in runs)
        self.report(
            f"[1] cold start {a.cold_services}x{a.endpoints}: meshd start -> first client "
            f"complete {statistics.median(firsts):.2f} s median of {len(runs)} runs ({every} s; "
            f"target < 3 s), {sum(f < 3 for f in firsts)} of {len(runs)} under 3 s; meshd RSS "
            f"{runs[-1][3] / 1024:.0f} MB; {load()}"
        )

    async def _cold_once(
        self, etcd: EmbeddedEtcd, run: int
    ) -> tuple[float, float, float | None, int, int]:
        """One cold start: (first and last client complete, ready logged, RSS KB, complete)."""
        clients = await self.clients(f"loadgen-cold-{run}")
        xds = free_port()
        # The probes dial before meshd listens; a 50 ms retry keeps their own delay small.
        await clients.add(f"127.0.0.1:{xds}", sotw=1, delta=1, backoff=(0.05, 0.05))
        # Log level info: meshd's "ready" line tells when its first snapshot was built.
        meshd = Meshd(
            etcd.endpoint,
            self.workdir,
            f"meshd-cold-{run}",
            log_level="info",
            xds_port=xds,
            profile="start" if self.args.profile and run == 0 else "",
        )
        try:
            res = await clients.wait_complete(120)
            meshd.check_alive()
            first = (res["first"] or float("nan")) - meshd.started
            last = (res["last"] or float("nan")) - meshd.started
            return first, last, meshd.ready_logged_at(), meshd.rss_kb(), int(res["complete"])
        finally:
            await clients.close()
            meshd.stop()

    async def fanout(self, protocol: str, with_changes: bool = True) -> None:
        a = self.args
        n, s = a.clients, a.services
        sotw, delta = (n, 0) if protocol == "sotw" else (0, n)
        changes = a.changes if with_changes else 0
        fig = "[2a]" if with_changes else "[4]"
        say(f"{fig} {protocol}: {n} clients, {s} services x {a.endpoints} endpoints ({load()})")
        async with self.floor_side(s, sotw, delta) as fside:
            say(f"  floor: connect {fside.run.connect_s:.1f} s; RSS {fside.run.memory()}")
            async with self.meshd_side(s, sotw, delta) as mside:
                say(f"  meshd: connect {mside.run.connect_s:.1f} s; RSS {mside.run.memory()}")
                if changes:
                    await self.series([fside, mside], changes)
        floor, mesh = fside.run, mside.run
        say(f"  floor: stream errors {floor.errors_text}; RSS after the changes {floor.after}")
        say(f"  meshd: stream errors {mesh.errors_text}; RSS after the changes {mesh.after}")
        if mesh.latency and floor.latency:
            fl, ml = floor.latency, mesh.latency
            say(f"  floor: {fl}; floor CPU {_per_change(floor)}; {_idle_note(fside)}")
            say(f"  meshd: {ml}; meshd CPU {_per_change(mesh)}; {_idle_note(mside)}")
            slowed = " (NOT COMPARABLE: meshd ran under tracemalloc)" if a.trace_memory else ""
            self.report(
                f"[2a] fan-out{slowed} {protocol} {n} clients {s}x{a.endpoints}: meshd p50 "
                f"{ml.p50:.0f} ms / p99 {ml.p99:.0f} ms, floor {fl.p50:.0f} / {fl.p99:.0f} ms, "
                f"ratio {ml.p50 / fl.p50:.2f}x / {ml.p99 / fl.p99:.2f}x (target <= 1.5x); missing "
                f"{ml.missing}/{fl.missing}; {ml.changes} changes each, in blocks of {a.block} "
                f"taken in turn; {load()}"
            )
        # A bare stream: the floor with a one-cluster config, as the shared floor tool measures
        # it (the full config sent at connect leaves gRPC and malloc holding buffers).
        # It varies between connect storms (47.6 to 75.0 KB per client in one session's
        # runs): the median of --bare-runs storms, each printed.
        bares: list[float] = []
        for _ in range(a.bare_runs):
            async with self.floor_side(s, sotw, delta, tcp_scope=True) as bside:
                pass
            say(f"  bare streams (floor, 1-cluster config): RSS {bside.run.memory()}")
            bares.append(bside.run.per_client_kb)
        bare = statistics.median(bares)
        every = ", ".join(f"{b:.1f}" for b in bares)
        extra = mesh.per_client_kb - bare
        self.report(
            f"[4] memory {protocol} {n} clients: meshd {mesh.per_client_kb:.1f} KB/client; bare "
            f"gRPC stream {bare:.1f} KB (median of {every}), floor with the same config "
            f"{floor.per_client_kb:.1f} KB; extra over bare {extra:.1f} KB (target <= 25 KB); "
            f"meshd RSS {mesh.rss_base_kb / 1024:.0f} -> {mesh.rss_connected_kb / 1024:.0f} -> "
            f"{mesh.rss_after_kb / 1024:.0f} MB after the changes; {load()}"
        )

    async def churn(self) -> None:
        a = self.args
        n, s = a.churn_clients, a.services
        for scope in a.churn_scopes:
            tcp = scope == "unsubscribed"
            what = (
                "churned services outside the clients' scope (TCP listener to s0)"
                if tcp
                else "churned services subscribed by every client"
            )
            say(
                f"[2b] churn ({scope}): {n} Delta clients, {s} services, {a.churn_rate:g} "
                f"unrelated endpoint changes/s, {what} ({load()})"
            )
            async with (
                self.floor_side(s, 0, n, tcp_scope=tcp) as fside,
                self.meshd_side(s, 0, n, tcp_scope=tcp) as mside,
            ):
                await self.series([fside, mside], a.changes, churn=a.churn_rate)
            floor, mesh = fside.run, mside.run
            assert floor.latency and mesh.latency
            fl, ml = floor.latency, mesh.latency
            say(f"  floor: {fl}; stream errors {floor.errors_text}; {_idle_note(fside)}")
            say(
                f"  meshd: {ml}; meshd CPU {_per_change(mesh)} (churn included); stream errors "
                f"{mesh.errors_text}; {_idle_note(mside)}"
            )
            self.report(
                f"[2b] churn ({scope}) delta {n} clients {s}x{a.endpoints} + {a.churn_rate:g}/s: "
                f"meshd p50 {ml.p50:.0f} ms / p99 {ml.p99:.0f} ms, floor {fl.p50:.0f} / "
                f"{fl.p99:.0f} ms, ratio {ml.p50 / fl.p50:.2f}x / {ml.p99 / fl.p99:.2f}x (target "
                f"<= 1.5x); missing {ml.missing}/{fl.missing}; {ml.changes} changes each, in "
                f"blocks of {a.block} taken in turn; {load()}"
            )

    async def scaling(self) -> None:
        a = self.args
        k = a.scaling_clients
        say(f"[3] scaling: {k} clients (half SotW, half Delta), {a.changes} changes ({load()})")
        got: dict[int, tuple[float, float, float, float, Latency, float]] = {}
        async with (
            self._scaling_side(a.scaling_small, k // 2, k - k // 2, got) as small_side,
            self._scaling_side(a.scaling_large, k // 2, k - k // 2, got) as large_side,
        ):
            # Both up at once, the changes in alternating blocks: CPU per change is a ratio
            # of two runs, and this VM's speed drifts between runs made one after the other.
            await self.series([small_side, large_side], a.changes)
        for services in (a.scaling_small, a.scaling_large):
            cpu, idle, translate, push, lat, scrape = got[services]
            say(
                f"  {services} services: meshd CPU {cpu:.2f} ms/change (idle share {idle:.2f} "
                f"removed), translate {translate:.2f} ms, change->EDS written {push:.2f} ms, "
                f"end to end {lat}; a whole /metrics scrape {scrape:.0f} ms of meshd CPU"
            )
        small, large = got[a.scaling_small], got[a.scaling_large]
        self.report(
            f"[3] scaling {a.scaling_small} -> {a.scaling_large} services: meshd CPU per change "
            f"{small[0]:.2f} -> {large[0]:.2f} ms = {ratio(large[0], small[0])} (target < 2x); "
            f"translate {small[2]:.2f} -> {large[2]:.2f} ms = {ratio(large[2], small[2])}; e2e "
            f"p50 {small[4].p50:.1f} -> {large[4].p50:.1f} ms = "
            f"{ratio(large[4].p50, small[4].p50)}; "
            f"{small[4].changes} changes each, in blocks of {a.block} taken in turn; "
            f"/metrics scrape {small[5]:.0f} -> {large[5]:.0f} ms CPU; {load()}"
        )

    @contextlib.asynccontextmanager
    async def _scaling_side(
        self,
        services: int,
        sotw: int,
        delta: int,
        got: dict[int, tuple[float, float, float, float, Latency, float]],
    ) -> AsyncIterator[Side]:
        """meshd on ``services`` with its clients, for :meth:`series`; on exit, its figures
        go into ``got[services]``: CPU per change (idle share removed), the idle share,
        translate and change -> EDS written means (ms), latency, and a scrape's CPU (ms)."""
        etcd, registry, revision = await self.registry(services, self.args.endpoints)
        meshd = Meshd(
            etcd.endpoint,
            self.workdir,
            f"meshd-{services}",
            profile="phase" if self.args.profile else "",
        )
        clients: LoadGenGroup | None = None
        try:
            await meshd.wait_ready(revision)
            clients = await self.clients(f"loadgen-scaling-{services}")
            await self.connect(clients, meshd.target, sotw, delta, 120)
            await asyncio.sleep(1)
            # Idle CPU (keepalives, metrics) over a few seconds, to take out of the figure.
            c0, t0 = meshd.cpu(), time.monotonic()
            await asyncio.sleep(2)
            idle_rate = (meshd.cpu() - c0) / (time.monotonic() - t0)
            before = await meshd.metrics()
            key = registry.prefix + "endpoints/default/s0/e0"

            async def put(k: int) -> None:
                await registry.put(key, marker_value(k))

            async def no_churn(k: int) -> None:
                raise AssertionError("the scaling figure runs without churn")

            side = Side(Run("meshd", sotw + delta), clients, meshd.pid, put, no_churn)
            side.profile = meshd.profile_phase
            yield side
            after = await meshd.metrics()
            # What a Prometheus scrape costs meshd (every service has its health series).
            c0 = meshd.cpu()
            for _ in range(SCRAPES):
                await meshd.metrics()
            scrape = (meshd.cpu() - c0) / SCRAPES * 1000
            meshd.check_alive()
        finally:
            if clients is not None:
                await clients.close()
            meshd.stop()

        def mean(name: str, labels: str = "") -> float:
            """Mean of a histogram over the changes, in ms."""
            s, n = f"{name}_sum{labels}", f"{name}_count{labels}"
            dn = after.get(n, 0) - before.get(n, 0)
            return (after.get(s, 0) - before.get(s, 0)) / dn * 1000 if dn else float("nan")

        lat = side.run.latency
        assert lat is not None and lat.changes
        idle = idle_rate * side.spent_s / lat.changes * 1000
        per_change = side.run.cpu_s / lat.changes * 1000 - idle
        push = mean("meshd_xds_push_latency_seconds", "{type=EDS}")
        translate = mean("meshd_translate_seconds")
        got[services] = (per_change, idle, translate, push, lat, scrape)

    async def storm(self) -> None:
        a = self.args
        n, s = a.clients, a.services
        sotw, delta = n // 2, n - n // 2
        say(f"[5] storm: {sotw} SotW + {delta} Delta clients, {s} services ({load()})")
        floor = await self._floor_storm(s, sotw, delta)
        say(
            f"  floor (2 static servers; a client holding any version is sent nothing): streams "
            f"reopened by {floor['reopen_s']:.2f} s; CPU servers {floor['cpu_servers']:.1f} s, "
            f"clients {floor['cpu_clients']:.1f} s; clients sent anything "
            f"{floor['report']['clients_sent_anything']}"
        )
        etcd, registry, revision = await self.registry(s, a.endpoints)
        profile = "phase" if a.profile else ""
        m1 = Meshd(etcd.endpoint, self.workdir, "meshd-a", profile=profile)
        m2: Meshd | None = None
        clients: LoadGenGroup | None = None
        try:
            await m1.wait_ready(revision)
            clients = await self.clients("loadgen-storm")
            connect_s, _ = await self.connect(clients, m1.target, sotw, delta, 300)
            say(f"  {n} clients complete on meshd A in {connect_s:.1f} s")
            m2 = Meshd(etcd.endpoint, self.workdir, "meshd-b", profile=profile)
            await m2.wait_ready(revision)
            await asyncio.sleep(a.settle)
            before = [await m.metrics() for m in (m1, m2)]
            rss1 = m1.rss_kb()
            pids = [m1.pid, m2.pid, *clients.pids]
            cpu0 = [cpu_seconds(p) for p in pids]
            m1.profile_phase(True)
            m2.profile_phase(True)
            t0 = time.monotonic()
            split = await clients.storm([m1.target, m2.target], a.storm_spread)
            expected = [split.get(m1.target, 0), split.get(m2.target, 0)]

            async def registered() -> tuple[float, list[int]]:
                # Server side: every stream registered again (meshd counts a proxy once it
                # has handled its first request) on the replica it went to; A's old streams gone.
                counts = [0, 0]
                while time.monotonic() - t0 < 30:
                    counts = [
                        _connected(await m.metrics("meshd_connected_proxies")) for m in (m1, m2)
                    ]
                    if counts == expected:
                        return time.monotonic() - t0, counts
                    await asyncio.sleep(0.05)
                return float("nan"), counts

            reopened, (registered_s, counts) = await asyncio.gather(
                clients.wait_reopened(30), registered()
            )
            reopen_s = (reopened["last"] or float("nan")) - t0
            cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
            m1.profile_phase(False)
            m2.profile_phase(False)
            await asyncio.sleep(1)  # anything meshd would (wrongly) send arrives by now
            report = await clients.storm_report()
            after = [await m.metrics() for m in (m1, m2)]
            pushes = [_pushes(a_) - _pushes(b_) for a_, b_ in zip(after, before, strict=True)]
            # A change after the storm must reach every client: all streams are live and in sync.
            (probe,) = self.change_ids(1)
            tp = time.monotonic()
            await registry.put(registry.prefix + "endpoints/default/s0/e0", marker_value(probe))
            times, missing = await clients.wait_change(probe, 10)
            probe_ms = sorted((t - tp) * 1000 for t in times)
            in_sync_s = max(reopen_s, registered_s)
            say(
                f"  meshd: streams reopened {reopened['reopened']}/{n} by {reopen_s:.2f} s; meshd "
                f"A/B serving {counts} by {registered_s:.2f} s; pushes during storm A/B {pushes}; "
                f"meshd A RSS {rss1 / 1024:.0f} -> {m1.rss_kb() / 1024:.0f} MB; CPU until all "
                f"registered: meshd A {cpu[0]:.1f} s, B {cpu[1]:.1f} s, clients "
                f"{sum(cpu[2:]):.1f} s"
            )
            say(
                f"  clients sent anything after reconnecting: {report['clients_sent_anything']} "
                f"{report.get('by_protocol') or ''}; same version again: {report['same']}; "
                f"different version: {report['different']}; probe change after the storm: "
                f"p50 {percentile(probe_ms, 0.5):.0f} ms, max {max(probe_ms, default=0):.0f} ms, "
                f"missing {missing}"
            )
            self.report(
                f"[5] storm {n} clients -> 2 replicas within {a.storm_spread:g} s: all in sync "
                f"again after {in_sync_s:.2f} s (target < 10 s; floor: reopened after "
                f"{floor['reopen_s']:.2f} s); sent a version already held: "
                f"{sum(report['same'].values())}, a different version: "
                f"{sum(report['different'].values())} (target 0/0); probe reached "
                f"{len(times)}/{n}; {load()}"
            )
        finally:
            if clients is not None:
                await clients.close()
            m1.stop()
            if m2 is not None:
                m2.stop()

    async def _floor_storm(self, services: int, sotw: int, delta: int) -> dict[str, Any]:
        """The same storm between two floor servers: what reconnecting costs by itself."""
        a = self.args
        f1 = await Floor.start(services, a.endpoints, self.workdir)
        f2 = await Floor.start(services, a.endpoints, self.workdir)
        clients = await self.clients("loadgen-storm-floor")
        try:
            await self.connect(clients, f1.target, sotw, delta, 300)
            await asyncio.sleep(a.settle)
            pids = [f1.pid, f2.pid, *clients.pids]
            cpu0 = [cpu_seconds(p) for p in pids]
            t0 = time.monotonic()
            await clients.storm([f1.target, f2.target], a.storm_spread)
            reopened = await clients.wait_reopened(30)
            cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
            await asyncio.sleep(1)
            report = await clients.storm_report()
        finally:
            await clients.close()
            await f1.close()
            await f2.close()
        return {
            "reopen_s": (reopened["last"] or float("nan")) - t0,
            "cpu_servers": cpu[0] + cpu[1],
            "cpu_clients": sum(cpu[2:]),
            "report": report,
        }


async def heap_trims(meshd: Meshd) -> str:
    """How often meshd had given memory back (heap trims) and how much, for the memory line:
    RSS read before the trim that follows a burst is higher than after it."""
    m = await meshd.metrics()
    n = int(m.get("meshd_heap_trims_total", 0))
    released = m.get("meshd_heap_trim_released_bytes_total", 0) / 2**20
    return f"{n} heap trims so far, {released:.0f} MB given back"


def _per_change(run: Run) -> str:
    changes = run.latency.changes if run.latency else 0
    return f"{run.cpu_s / max(1, changes) * 1000:.1f} ms/change"


def _idle_note(side: Side) -> str:
    """What the other side (server and clients), connected but idle, used meanwhile."""
    changes = side.run.latency.changes if side.run.latency else 0
    per = side.others_cpu_s / max(1, changes) * 1000
    return f"the other side's processes meanwhile {per:.1f} ms CPU/change"


def _connected(metrics: dict[str, float]) -> int:
    return int(sum(v for k, v in metrics.items() if k.startswith("meshd_connected_proxies{")))


def _pushes(metrics: dict[str, float]) -> int:
    return int(sum(v for k, v in metrics.items() if k.startswith("meshd_xds_pushes_total{")))


def meshd_revision() -> str:
    """The commit meshd runs from, and whether its code differs from it (work in progress)."""
    root = Path(__file__).resolve().parent.parent

    def git(*cmd: str) -> str:
        try:
            out = subprocess.run(["git", *cmd], cwd=root, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.decode().strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "xds_server", "adapters").splitlines()
    return f"{head}" + (
        f" + {len(dirty)} uncommitted file(s) in xds_server/adapters" if dirty else ""
    )


def compile_meshd() -> str:
    """Compile meshd's modules to bytecode before starting it, as installing a package does
    (pip, the Docker image). Without it a source tree run with PYTHONDONTWRITEBYTECODE=1 (set
    here) has meshd compile every module changed since its last .pyc at each start, and
    the cold start figure would count that (~0.2 s of its imports)."""
    root = Path(__file__).resolve().parent.parent
    ok = all(compileall.compile_dir(root / pkg, quiet=1) for pkg in ("xds_server", "adapters"))
    return "meshd bytecode compiled" if ok else "meshd bytecode NOT compiled (errors above)"


async def amain(args: argparse.Namespace, workdir: Path) -> None:
    bench = Bench(args, workdir)
    started = time.monotonic()
    say(
        f"bench_scale: {os.cpu_count()} CPUs, {load()}, loadgen processes {args.procs}, "
        f"client back-off {args.backoff[0]:g}-{args.backoff[1]:g} s, gap {args.gap:g} s, "
        f"etcd {'fsync' if args.fsync else '--unsafe-no-fsync'}; work dir {workdir}; "
        f"meshd code at {meshd_revision()}; {compile_meshd()}"
    )
    try:
        for fig in args.only:
            if fig == "cold":
                await bench.cold()
            elif fig == "fanout":
                for protocol in args.protocols:
                    await bench.fanout(protocol)
            elif fig == "memory":
                if "fanout" not in args.only:
                    for protocol in args.protocols:
                        await bench.fanout(protocol, with_changes=False)
            elif fig == "churn":
                await bench.churn()
            elif fig == "scaling":
                await bench.scaling()
            elif fig == "storm":
                await bench.storm()
    finally:
        await bench.close()
    say(f"\nsummary ({time.monotonic() - started:.0f} s, {load()}):")
    for line in bench.summary:
        say("  " + line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=2000, help="fan-out, memory, storm clients")
    p.add_argument("--services", type=int, default=1000, help="fan-out/churn/storm services")
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    p.add_argument("--changes", type=int, default=100, help="changes per latency series")
    p.add_argument("--cold-services", type=int, default=10_000)
    p.add_argument(
        "--cold-runs", type=int, default=3, help="cold starts measured (the median is reported)"
    )
    p.add_argument(
        "--bare-runs", type=int, default=3, help="bare-stream storms for figure 4 (the median)"
    )
    p.add_argument("--churn-clients", type=int, default=1000)
    p.add_argument("--churn-rate", type=float, default=10.0, help="unrelated changes per second")
    p.add_argument(
        "--churn-scope",
        choices=("unsubscribed", "subscribed", "both"),
        default="both",
        help="churned services outside the clients' scope, in it (pushed to all), or both",
    )
    p.add_argument("--scaling-small", type=int, default=100)
    p.add_argument("--scaling-large", type=int, default=10_000)
    p.add_argument("--scaling-clients", type=int, default=20)
    p.add_argument("--storm-spread", type=float, default=1.0, help="seconds for all reconnects")
    add_run_options(
        p,
        procs_help="load generator processes (1 makes them the bottleneck)",
        block_help="changes per block; the floor's and meshd's blocks are taken in turn",
        budget=30.0,
        budget_help="max seconds of changes per series",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile meshd (cProfile; cold start whole, other figures during the changes only)",
    )
    p.add_argument(
        "--trace-memory",
        action="store_true",
        help="fan-out/memory: tracemalloc in meshd while clients connect (slows meshd)",
    )
    p.add_argument(
        "--only", default=",".join(FIGURES), help="comma-separated: " + ",".join(FIGURES)
    )
    args = finish_run_options(p.parse_args(argv))
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(args.only) - set(FIGURES)
    if unknown:
        p.error(f"unknown figure(s) {sorted(unknown)}; choose from {FIGURES}")
    both = ("unsubscribed", "subscribed")
    args.churn_scopes = both if args.churn_scope == "both" else (args.churn_scope,)
    return args


def add_run_options(
    p: argparse.ArgumentParser,
    *,
    procs_help: str = "load generator processes per side",
    block_help: str = "changes per block, sides in turn",
    budget: float,
    budget_help: str = "max seconds of changes per side",
) -> None:
    """The options of a run through simulated clients that :class:`Bench` reads (protocol,
    load generators, the alternating series, client back-off, etcd, work dir), shared by the
    benchmarks built on this one; ``finish_run_options`` completes them once parsed."""
    p.add_argument("--protocol", choices=("sotw", "delta", "both"), default="both")
    p.add_argument("--procs", type=int, default=2, help=procs_help)
    p.add_argument("--block", type=int, default=10, help=block_help)
    p.add_argument("--gap", type=float, default=0.05, help="pause after each change once idle, s")
    p.add_argument("--budget", type=float, default=budget, help=budget_help)
    p.add_argument("--settle", type=float, default=2.0, help="pause before reading RSS, s")
    p.add_argument(
        "--backoff", type=float, nargs=2, default=(0.1, 0.5), help="client reconnect back-off"
    )
    p.add_argument("--fsync", action="store_true", help="etcd with fsync (default: no fsync)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs)")


def finish_run_options(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` of :func:`add_run_options` as :class:`Bench` reads them: ``protocols`` (a
    tuple of ``sotw``/``delta``) and ``backoff`` as a tuple."""
    args.protocols = ("sotw", "delta") if args.protocol == "both" else (args.protocol,)
    args.backoff = tuple(args.backoff)
    return args


def traced_meshd(out: str, argv: list[str]) -> None:
    """Run meshd's main() here; SIGUSR1 starts tracemalloc, each SIGUSR2 writes a snapshot.

    Python-level memory allocated since the start and still held: meshd's own state per
    client, without the buffers gRPC's C core and malloc keep (which RSS includes).
    """
    import tracemalloc

    dumps = [0]

    def start(*_: object) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start()

    def dump(*_: object) -> None:
        if not tracemalloc.is_tracing():
            return
        snapshot = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
        dumps[0] += 1
        lines = [f"{current} {peak}"]
        lines += [str(stat) for stat in snapshot.statistics("lineno")[:12]]
        Path(f"{out}.{dumps[0]}").write_text("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    from xds_server.cli.meshd import main as meshd_main

    meshd_main(argv)


def profiled_meshd(out: str, mode: str, argv: list[str]) -> None:
    """Run meshd's main() in this process under a cProfile toggled by signals (see Meshd)."""
    if mode == "tracemalloc":
        traced_meshd(out, argv)
        return
    import cProfile

    prof = cProfile.Profile()
    state = {"on": False}

    def start(*_: object) -> None:
        if not state["on"]:
            state["on"] = True
            prof.enable()

    def stop(*_: object) -> None:
        if state["on"]:
            prof.disable()
            state["on"] = False
            prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    if mode == "start":
        start()
    from xds_server.cli.meshd import main as meshd_main

    try:
        meshd_main(argv)
    finally:
        stop()


def main() -> None:
    if sys.argv[1:2] == ["--profiled-meshd"]:
        out, mode, _, *rest = sys.argv[2:]
        profiled_meshd(out, mode, rest)
        return
    run_bench(amain, parse_args(), "scale")


def run_bench(
    amain: Callable[[Any, Path], Coroutine[Any, Any, object]], args: Any, name: str
) -> NoReturn:
    """A benchmark's ``main``: ``amain(args, workdir)`` in a fresh work directory (removed
    afterwards unless ``args.keep``), then exit at once (grpc's threads can hold the
    interpreter at exit; nothing is left to flush by then)."""
    raise_nofile_limit()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        asyncio.run(amain(args, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
