"""Abuse benchmark: hostile clients against one meshd that also serves well-behaved ones.

meshd runs as its own process on a real etcd, with ``--clients`` well-behaved simulated
proxies (:mod:`integration.loadgen`, half SotW, half Delta). It measures the change latency
those clients see (etcd write -> every client holds it, as :mod:`integration.bench_scale`
does) first without abuse, then while the abusers run, and prints meshd's RSS: at baseline,
its peak during the abuse, and after the abusers left. The abusers are those of issue 22:

- ``names``: streams each subscribing to hundreds of thousands of unique EDS names;
- ``flip``: one client flipping its EDS subscription without nonces, reading every answer;
- ``deaf``: the same from a client that never reads;
- ``clusters``: short streams with a 1 MB ``node.cluster`` each, then concurrent scrapes
  of ``/metrics``;
- ``half-open``: connections to the metrics port that send half a request and wait.

Each abuser is a process of its own, at nice 19. It builds its requests first; then all of
them start at once, as the measured series does (an attacker builds requests on the
attacker's machines, not on the two cores meshd, etcd and the clients share here).

Targets (issue 22): RSS under +100 MB over the baseline, the clients' p99 within 2x of the
run without abuse, and RSS back within 10% of the baseline once the abusers left.

    python -m integration.bench_abuse [--clients 100] [--services 200] [--changes 40]
        [--only names,flip,deaf,clusters,half-open] [--decoy]

``--decoy`` aims the abusers at a second meshd, with a registry as big, and leaves the
clients' meshd alone: what the same attack costs the clients through the machine alone.

Sizes default to the issue's; ``--small`` makes every one tiny (the smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.bench_scale import Latency, Meshd, marker_value, measure_changes, seed
from integration.loadgen import LoadGenGroup

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


class MeshdProcess(Meshd):
    """meshd as its own process (:class:`integration.bench_scale.Meshd`) on the registry at
    ``prefix``, logging at ``log``, with extra flags as given."""

    def __init__(
        self, etcd: str, prefix: str, workdir: Path, flags: Sequence[str] = (), log: str = "info"
    ) -> None:
        super().__init__(
            etcd, workdir, "meshd", log_level=log, extra_args=["--prefix", prefix, *flags]
        )


# --------------------------------------------------------------------------- abusers

_MARKS: dict[str, float] = {}
"""When this abuser process reached each step of its attack (wall clock; the run prints
them as seconds into the measured series, beside the slowest changes)."""


def _mark(step: str) -> None:
    _MARKS.setdefault(step, time.time())


def _sotw(type_url: str, names: Sequence[str] = (), node: str = "", cluster: str = "") -> bytes:
    req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
    if node:
        req.node.id, req.node.cluster = node, cluster or "abuser"
    return bytes(req.SerializeToString())


@contextlib.asynccontextmanager
async def _raw_stream(channel: grpc.aio.Channel, first: bytes) -> AsyncIterator[Any]:
    """An ADS stream of raw bytes whose requests are put on the yielded call's queue."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    queue.put_nowait(first)

    async def requests() -> AsyncIterator[bytes]:
        while (item := await queue.get()) is not None:
            yield item

    call = channel.stream_stream(ADS)(requests())
    call.queue = queue
    try:
        yield call
    finally:
        call.cancel()


async def names_flood(
    target: str, streams: int, names: int, ready: Callable[[], None], wait: float = 30.0
) -> str:
    """``streams`` streams, each subscribing to ``names`` unique EDS names at once; how
    meshd ended them (a stream within the limit stays open: ``wait`` s). The requests are
    built before ``ready`` is called."""
    floods = [
        _sotw(EDS, [f"{j:x}.{i}" for j in range(names)], f"names-{i}") for i in range(streams)
    ]
    ready()
    async with grpc.aio.insecure_channel(target) as channel:

        async def one(i: int) -> str:
            async with _raw_stream(channel, floods[i]) as call:
                _mark("sending")
                with contextlib.suppress(TimeoutError):
                    code = await asyncio.wait_for(call.code(), wait)
                    _mark("first ended")
                    return str(code.name)
                return f"still open after {wait:.0f} s"

        codes = await asyncio.gather(*(one(i) for i in range(streams)))
        _mark("all ended")
    return f"{streams} x {names} names: {', '.join(sorted(set(codes)))}"


def _half(i: int, services: int) -> list[str]:
    return [f"s{j}.default" for j in range(i % 2, services, 2)]


def _halves(services: int) -> list[bytes]:
    """The two nonce-less EDS requests a flipping client sends in turn, built once."""
    return [_sotw(EDS, _half(i, services)) for i in range(2)]


async def flipper(target: str, flips: int, services: int, ready: Callable[[], None]) -> str:
    """One client flipping its EDS subscription without nonces, reading every answer."""
    got = 0
    halves = _halves(services)
    ready()
    async with (
        grpc.aio.insecure_channel(target) as channel,
        _raw_stream(channel, _sotw(EDS, _half(0, services), "flipper")) as call,
    ):
        try:
            for i in range(flips):
                if i:
                    call.queue.put_nowait(halves[i % 2])
                got += len(await asyncio.wait_for(call.read(), 30))
                _mark("first answer")
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            return f"{flips} flips: ended after {got} bytes: {exc}"
    return f"{flips} flips, {got / 1e6:.0f} MB of answers read"


async def deaf(
    target: str, requests: int, services: int, hold: float, ready: Callable[[], None]
) -> str:
    """A client that flips its subscription ``requests`` times and never reads."""
    halves = _halves(services)
    ready()
    async with (
        grpc.aio.insecure_channel(target) as channel,
        _raw_stream(channel, _sotw(EDS, _half(0, services), "deaf")) as call,
    ):
        for i in range(1, requests):
            call.queue.put_nowait(halves[i % 2])
        _mark("queued")
        await asyncio.sleep(hold)
    return f"{requests} requests never read, held {hold:.0f} s"


async def cluster_names(target: str, streams: int, size: int) -> str:
    """``streams`` short streams, each naming a unique ``size``-byte node cluster."""
    async with grpc.aio.insecure_channel(target) as channel:
        for i in range(streams):
            cluster = f"c{i}-" + "x" * size
            async with _raw_stream(channel, _sotw(CDS, (), f"cl-{i}", cluster)) as call:
                _mark("first stream")
                with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                    await asyncio.wait_for(call.read(), 10)
        _mark("last stream ended")
    return f"{streams} streams with {size}-byte node clusters"


async def scrapes(metrics_port: int, n: int) -> str:
    """``n`` concurrent scrapes of /metrics; their sizes."""

    def get() -> int:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=60) as r:
            return len(r.read())

    _mark("scraping")
    sizes = await asyncio.gather(*(asyncio.to_thread(get) for _ in range(n)))
    _mark("scraped")
    return f"{n} scrapes of {max(sizes) / 1e6:.1f} MB"


async def half_open(metrics_port: int, n: int, hold: float) -> str:
    """``n`` connections to the metrics port that send half a request, held ``hold`` s."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", metrics_port))
            socks.append(s)
        _mark("connected")
        await asyncio.sleep(0.2)
        sent = 0
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                sent += 1
        _mark("half requests sent")
        await asyncio.sleep(hold)
    finally:
        for s in socks:
            s.close()
    return f"{n} half-open connections ({sent} took half a request), held {hold:.0f} s"


# --------------------------------------------------------------------------- run


@dataclass
class Sizes:
    names_streams: int = 6
    names: int = 280_000
    flips: int = 2_000
    deaf_requests: int = 2_000
    cluster_streams: int = 200
    cluster_bytes: int = 1_000_000
    scrapes: int = 4
    half_open: int = 2_000
    hold: float = 10.0


SMALL = Sizes(2, 2_000, 20, 20, 5, 1_000, 2, 20, 0.5)
ABUSERS = ("names", "flip", "deaf", "clusters", "half-open")


@dataclass
class Figures:
    rss_base_kb: int = 0
    rss_peak_kb: int = 0
    rss_after_kb: int = 0
    calm: Latency = field(default_factory=Latency)
    abused: Latency = field(default_factory=Latency)
    abusers: list[str] = field(default_factory=list)
    marks: list[dict[str, float]] = field(default_factory=list)
    """Per abuser: when it reached each step, wall clock."""
    series_wall: float = 0.0
    """When the measured series under abuse began, wall clock."""
    limited: dict[str, float] = field(default_factory=dict)
    nice: int = 0
    decoy: bool = False
    """The abusers were aimed at a second meshd (``--decoy``), not the clients' one."""
    cpu_calm_s: float = 0.0
    cpu_abused_s: float = 0.0
    write_calm_ms: float = 0.0
    """The slowest etcd write of a change (part of its latency) without abuse, ms."""
    write_abused_ms: float = 0.0

    def report(self) -> str:
        base, peak, after = (
            self.rss_base_kb / 1024,
            self.rss_peak_kb / 1024,
            self.rss_after_kb / 1024,
        )
        ratio = self.abused.p99 / self.calm.p99 if self.calm.p99 else float("nan")
        lines = [
            *(
                [
                    "the abusers were aimed at a decoy meshd: RSS and CPU below are the clients' "
                    "meshd's, which nothing attacked"
                ]
                if self.decoy
                else []
            ),
            f"meshd RSS: baseline {base:.0f} MB, peak {peak:.0f} MB (+{peak - base:.0f} MB; "
            f"target < +100), after {after:.0f} MB ({(after - base) / base * 100:+.0f}%; "
            "target within 10%)",
            f"change latency without abuse: {self.calm}",
            f"change latency under abuse:   {self.abused}",
            f"p99 under abuse / without: {ratio:.2f}x (target <= 2x)",
            f"slowest changes without abuse: {_slowest(self.calm)}",
            f"slowest changes under abuse:   {_slowest(self.abused)}",
            f"meshd CPU while measuring: {self.cpu_calm_s:.2f} s without abuse, "
            f"{self.cpu_abused_s:.2f} s under abuse",
            f"  (the abusers ran as their own processes at nice {self.nice})",
            f"slowest etcd write of a change (part of its latency): {self.write_calm_ms:.0f} ms "
            f"without abuse, {self.write_abused_ms:.0f} ms under abuse",
            *(
                f"  abuser: {a}{_steps_of(m, self.series_wall)}"
                for a, m in zip(self.abusers, self.marks, strict=True)
            ),
            "  refusals: " + ", ".join(f"{k} {v:.0f}" for k, v in self.limited.items() if v),
        ]
        return "\n".join(lines)


def _steps_of(marks: dict[str, float], start: float) -> str:
    """`` [step at +t s, ...]``, times from ``start``; nothing when there are no marks."""
    if not marks:
        return ""
    return " [" + ", ".join(f"{step} at {at - start:+.1f} s" for step, at in marks.items()) + "]"


def _slowest(lat: Latency, n: int = 4) -> str:
    """The ``n`` slowest changes of a series: when each was written (seconds into the
    series) and its last client's latency."""
    worst = sorted(lat.slowest, key=lambda c: -c[1])[:n]
    return ", ".join(f"{ms:.0f} ms at {at:.1f} s" for at, ms in worst)


async def _quiet_rss(meshd: MeshdProcess, settle: float) -> int:
    await asyncio.sleep(settle)  # (meshd trims its heap once quiet for 1 s)
    return meshd.rss_kb()


async def run(args: argparse.Namespace, workdir: Path) -> Figures:
    fig = Figures(nice=args.abuser_nice, decoy=args.decoy)
    etcd = EmbeddedEtcd(workdir / "etcd", unsafe_no_fsync=True, auto_compaction_retention=None)
    etcd.start_sync()
    prefix = "/mesh/"
    registry = EtcdRegistry(etcd.endpoint, prefix=prefix)
    meshd: MeshdProcess | None = None
    decoy: MeshdProcess | None = None
    clients: LoadGenGroup | None = None
    try:
        revision, _, _ = await seed(registry, args.services, args.endpoints)
        meshd = MeshdProcess(etcd.endpoint, prefix, workdir, args.meshd_flag)
        await meshd.wait_ready(revision)
        if args.decoy:  # (a registry of its own, as big: its answers cost what meshd's do)
            decoys = EtcdRegistry(etcd.endpoint, prefix="/decoy/")
            try:
                decoy_revision, _, _ = await seed(decoys, args.services, args.endpoints)
            finally:
                await decoys.close()
            (workdir / "decoy").mkdir(exist_ok=True)
            decoy = MeshdProcess(etcd.endpoint, "/decoy/", workdir / "decoy", args.meshd_flag)
            await decoy.wait_ready(decoy_revision)
        clients = await LoadGenGroup.start(1, workdir, "loadgen")
        half = args.clients // 2
        await clients.add(meshd.target, sotw=half, delta=args.clients - half)
        done = await clients.wait_complete(120)
        print(f"{done.get('complete')} of {args.clients} clients complete", flush=True)
        key = prefix + "endpoints/default/s0/e0"

        writes: dict[int, float] = {}  # (change -> how long its etcd write took, ms)

        async def change(k: int) -> None:
            t0 = time.monotonic()
            await registry.put(key, marker_value(k))
            writes[k] = (time.monotonic() - t0) * 1000

        fig.rss_base_kb = await _quiet_rss(meshd, args.settle)
        cpu = meshd.cpu()
        fig.calm = await measure_changes(
            change, clients, range(1, args.changes + 1), gap=args.gap, budget=120
        )
        fig.cpu_calm_s = meshd.cpu() - cpu
        fig.rss_base_kb = min(fig.rss_base_kb, await _quiet_rss(meshd, args.settle))
        peak = [fig.rss_base_kb]

        async def sample() -> None:
            while True:
                peak.append(meshd.rss_kb())
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        chosen = set(args.only.split(",")) if args.only else set(ABUSERS)
        target = decoy or meshd
        procs = [await _abuser_process(n, target, args) for n in ABUSERS if n in chosen]
        for proc in procs:  # (each says "ready" once its requests are built)
            assert proc.stdout is not None
            await proc.stdout.readline()
        for proc in procs:  # (and attacks once told "go": all of them at once)
            assert proc.stdin is not None
            with contextlib.suppress(ConnectionError):  # (one that failed: reported below)
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
        abuse = asyncio.gather(*(_abuser_result(proc) for proc in procs))
        start, cpu = args.changes + 1, meshd.cpu()
        fig.series_wall = time.time()
        fig.abused = await measure_changes(
            change, clients, range(start, start + args.changes), gap=args.gap, budget=120
        )
        fig.cpu_abused_s = meshd.cpu() - cpu
        fig.write_calm_ms = max((ms for k, ms in writes.items() if k < start), default=0.0)
        fig.write_abused_ms = max((ms for k, ms in writes.items() if k >= start), default=0.0)
        results = await abuse
        fig.abusers = [r for r, _ in results]
        fig.marks = [m for _, m in results]
        sampler.cancel()
        fig.rss_peak_kb = max(peak)
        fig.rss_after_kb = await _quiet_rss(meshd, args.settle + 2)
        fig.limited = {
            k.partition("{")[2].rstrip("}"): v
            for k, v in (await target.metrics("meshd_xds_limited_total")).items()
        }
        return fig
    finally:
        if clients is not None:
            await clients.close()
        if meshd is not None:
            meshd.stop()
        if decoy is not None:
            decoy.stop()
        await registry.close()
        etcd.stop()


async def _abuser_process(
    name: str, meshd: MeshdProcess, args: argparse.Namespace
) -> asyncio.subprocess.Process:
    """Start abuser ``name`` as its own process at nice ``--abuser-nice``: an attacker's
    clients run on the attacker's machines, so what they cost to build their requests is
    kept off the cores meshd and the well-behaved clients share here."""
    # (``nice`` the command, not a preexec_fn: no fork() of a process gRPC runs threads in)
    cmd = ["nice", "-n", str(args.abuser_nice), sys.executable]
    cmd += ["-m", "integration.bench_abuse", "--abuser", name]
    cmd += ["--target", meshd.target, "--metrics-port", str(meshd.metrics_port)]
    cmd += ["--services", str(args.services)] + (["--small"] if args.small else [])
    return await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _abuser_result(proc: asyncio.subprocess.Process) -> tuple[str, dict[str, float]]:
    """An abuser's report line, once it ended (or why it failed), and its steps' times."""
    out, err = await proc.communicate()
    if proc.returncode:
        return f"failed ({proc.returncode}): {err.decode()[-500:]}", {}
    line, marks = out.decode().strip().splitlines()[-2:]
    return line, json.loads(marks)


def _go() -> None:
    """Say "ready", then wait for the run's "go" (every abuser starts at once)."""
    print("ready", flush=True)
    sys.stdin.readline()


async def _one_abuser(args: argparse.Namespace) -> str:
    """The abuser ``--abuser`` names, against ``--target`` / ``--metrics-port``. It says
    "ready" once its requests are built, and attacks on "go": what an attacker spends
    building them is spent on the attacker's machines, not on the cores meshd and the
    well-behaved clients share here."""
    sizes, target, services = (SMALL if args.small else Sizes()), args.target, args.services
    if args.abuser == "names":
        return await names_flood(target, sizes.names_streams, sizes.names, _go, 3 * sizes.hold)
    if args.abuser == "flip":
        return await flipper(target, sizes.flips, services, _go)
    if args.abuser == "deaf":
        return await deaf(target, sizes.deaf_requests, services, sizes.hold, _go)
    _go()  # (the others' requests cost next to nothing to build)
    if args.abuser == "clusters":
        return await _then(
            cluster_names(target, sizes.cluster_streams, sizes.cluster_bytes),
            scrapes(args.metrics_port, sizes.scrapes),
        )
    return await half_open(args.metrics_port, sizes.half_open, sizes.hold)


async def _then(*steps: Any) -> str:
    return "; ".join([str(await step) for step in steps])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100, help="well-behaved clients")
    p.add_argument("--services", type=int, default=200)
    p.add_argument("--endpoints", type=int, default=5)
    p.add_argument("--changes", type=int, default=40, help="changes measured per phase")
    p.add_argument(
        "--gap",
        type=float,
        default=0.2,
        help="seconds between changes: more than meshd's --coalesce-window, so that each is a "
        "lone change, not part of a burst the window paces on purpose",
    )
    p.add_argument("--settle", type=float, default=2.0, help="quiet seconds before an RSS read")
    p.add_argument("--small", action="store_true", help="tiny abusers (smoke test)")
    p.add_argument(
        "--only", default="", help=f"comma-separated abusers to run (of {', '.join(ABUSERS)})"
    )
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument(
        "--meshd-flag", action="append", default=[], help="an extra meshd flag (repeatable)"
    )
    p.add_argument(
        "--decoy",
        action="store_true",
        help="aim the abusers at a second meshd (with a registry as big) instead of the one "
        "the clients use: what the attack costs the clients through the machine alone",
    )
    p.add_argument(
        "--abuser-nice",
        type=int,
        default=19,
        help="nice value of the abusers' processes (0: compete with meshd for the cores)",
    )
    p.add_argument("--abuser", choices=ABUSERS, help=argparse.SUPPRESS)  # (one abuser's process)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.abuser:
        print(asyncio.run(_one_abuser(args)), flush=True)
        print(json.dumps(_MARKS), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        fig = asyncio.run(run(args, workdir))
    print(fig.report(), flush=True)
    print(json.dumps({"rss_base_kb": fig.rss_base_kb, "rss_peak_kb": fig.rss_peak_kb,
                      "rss_after_kb": fig.rss_after_kb, "p99_calm_ms": fig.calm.p99,
                      "p99_abused_ms": fig.abused.p99}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
