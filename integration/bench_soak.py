"""Soak benchmark (issue 25): two meshd replicas on one etcd for a long run, registry
changes all along, simulated proxies spread over both, one replica restarted every few
minutes.

etcd and two meshd processes; ``--clients`` simulated proxies (:mod:`integration.loadgen`,
half SotW, half Delta), half dialling each replica first, every one knowing both (a
failed stream tries the other, as Envoy's ADS cluster over both replicas does). A writer
changes the registry ``--rate`` times a second (the marker endpoint every client holds, so
each change is seen). Every ``--restart-every`` seconds one replica (in turn) is stopped
with SIGTERM and started again on its port, as in the rolling upgrade of docs/ha.md: its
clients move to the other replica.

Printed: each replica's RSS and the streams it holds every ``--sample-every`` seconds;
per phase between restarts, each replica's RSS growth from ``--settle`` s (30) into the
phase to its end (the target: flat, at most 5% after the first restart); staleness: per
change, the time until every client held it or a later one (a client that reconnects after
missing some gets only the newest), the worst over the run and how many (change, client)
pairs were older than 2 s (the target: none); meshd's CPU and the host's load average
(the clients and meshd share the host, and so does anything else running there).

    python -m integration.bench_soak [--minutes 30] [--restart-every 300] [--clients 300]
        [--rate 10] [--services 50] [--endpoints 5] [--loadgens 2]

``--small`` makes everything tiny (the smoke test: tests/etcd/test_bench_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.bench_scale import Meshd, _connected, cpu_seconds, marker_value, seed
from integration.loadgen import LoadGenGroup, rss_kb

STALE_AFTER = 2.0
"""Seconds after a change by which every client must hold it (or a later one)."""
JUDGE_AFTER = 2.5
"""Seconds after a change before it is judged (a client not holding it then is stale)."""


@dataclass
class Replica:
    """One replica's name, its current process and what was sampled of it."""

    name: str
    meshd: Meshd
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    """(seconds into the run, RSS kB, streams held)."""
    cpu: dict[int, float] = field(default_factory=dict)
    """CPU seconds of each of its processes (by pid), at the last sample."""


@dataclass
class Staleness:
    """What the writer wrote and what the clients were found to hold."""

    written: dict[int, float] = field(default_factory=dict)
    worst: float = 0.0
    worst_change: int = -1
    judged: int = 0
    stale_pairs: int = 0
    lags: list[float] = field(default_factory=list)
    late: list[tuple[int, float, float, int, int]] = field(default_factory=list)
    """The first changes held late: (id, written at, worst lag, clients late, not yet)."""


def say(line: str) -> None:
    print(line, flush=True)


async def writer(
    registry: EtcdRegistry, rate: float, stale: Staleness, stop: asyncio.Event
) -> None:
    """Change the marker endpoint ``rate`` times a second; note when etcd took each."""
    key = registry.prefix + "endpoints/default/s0/e0"
    change, due = 0, time.monotonic()
    while not stop.is_set():
        await registry.put(key, marker_value(change))
        stale.written[change] = time.monotonic()
        change += 1
        due += 1 / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))


async def judge(clients: LoadGenGroup, stale: Staleness, *, final: bool = False) -> None:
    """Judge the changes written at least :data:`JUDGE_AFTER` s ago (all of them at the end)."""
    now = time.monotonic()
    ripe = {c: t for c, t in stale.written.items() if final or now - t >= JUDGE_AFTER}
    if not ripe:
        return
    lags, late, behind = await clients.lag(ripe, STALE_AFTER)
    for change, lag in lags.items():
        if behind.get(change):  # not held JUDGE_AFTER s after: too old, however long
            lag = max(lag, now - ripe[change])
        stale.lags.append(lag)
        stale.judged += 1
        stale.stale_pairs += late.get(change, 0) + behind.get(change, 0)
        if lag > STALE_AFTER and len(stale.late) < 10:
            stale.late.append(
                (change, ripe[change], lag, late.get(change, 0), behind.get(change, 0))
            )
        if lag > stale.worst:
            stale.worst, stale.worst_change = lag, change
    for change in ripe:
        del stale.written[change]


async def sample(replicas: Sequence[Replica], started: float, loads: list[float]) -> None:
    at = time.monotonic() - started
    loads.append(os.getloadavg()[0])
    for r in replicas:
        if r.meshd.proc.poll() is not None:
            continue
        try:
            streams = _connected(await r.meshd.metrics("meshd_connected_proxies"))
        except OSError:
            streams = -1
        r.samples.append((at, rss_kb(r.meshd.pid), streams))
        r.cpu[r.meshd.pid] = cpu_seconds(r.meshd.pid)


async def restart(replica: Replica, etcd: str, workdir: Path, n: int, revision: int) -> float:
    """SIGTERM, then start again on the same xDS port; seconds until it serves again."""
    began = time.monotonic()
    await asyncio.to_thread(replica.meshd.stop)  # (the writer keeps writing meanwhile)
    replica.meshd = Meshd(
        etcd, workdir, f"{replica.name}-{n}", xds_port=replica.meshd.xds_port, grace=0.5
    )
    await replica.meshd.wait_ready(revision, timeout=60)
    return time.monotonic() - began


def growth(
    replicas: Sequence[Replica], restarts: list[float], end: float, settle: float
) -> list[tuple[str, float]]:
    """Per phase after the first restart, each replica's RSS growth from ``settle`` s
    into the phase to the phase's end: (a line saying so, the growth in %)."""
    lines = []
    bounds = [*restarts, end]
    for i in range(len(bounds) - 1):
        start, stop = bounds[i], bounds[i + 1]
        for r in replicas:
            inside = [(t, rss, n) for t, rss, n in r.samples if start + settle <= t <= stop]
            if len(inside) < 2:
                continue
            (_, first, n0), (_, last, n1) = inside[0], inside[-1]
            pct = 100 * (last - first) / first
            lines.append(
                (
                    f"phase {i + 1} ({start:.0f}-{stop:.0f}s) {r.name}: RSS "
                    f"{first / 1024:.1f} -> {last / 1024:.1f} MB ({pct:+.1f}%), "
                    f"streams {n0} -> {n1}",
                    pct,
                )
            )
    return lines


async def run(args: argparse.Namespace, workdir: Path) -> int:
    etcd = EmbeddedEtcd(workdir / "etcd", unsafe_no_fsync=True)
    await etcd.start()
    registry = EtcdRegistry(etcd.endpoint)
    clients: LoadGenGroup | None = None
    replicas: list[Replica] = []
    stop = asyncio.Event()
    stale = Staleness()
    try:
        revision, _, keys = await seed(registry, args.services, args.endpoints)
        for name in ("a", "b"):
            replicas.append(Replica(name, Meshd(etcd.endpoint, workdir, name, grace=0.5)))
        for r in replicas:
            await r.meshd.wait_ready(revision, timeout=60)
        targets = [r.meshd.target for r in replicas]
        clients = await LoadGenGroup.start(args.loadgens, workdir)
        half = args.clients // 2
        for i, r in enumerate(replicas):
            n = half if i == 0 else args.clients - half
            await clients.add(r.meshd.target, sotw=n // 2, delta=n - n // 2, targets=targets)
        done = await clients.wait_complete(120)
        say(
            f"soak: {args.clients} clients ({done['complete']} complete) over 2 replicas, "
            f"{keys} registry keys, {args.rate:g} changes/s for {args.minutes:g} min, a "
            f"replica restarted every {args.restart_every:g}s"
        )
        started = time.monotonic()
        writing = asyncio.create_task(writer(registry, args.rate, stale, stop))
        restarts: list[float] = []
        loads: list[float] = []
        next_sample = next_restart = started
        next_restart += args.restart_every
        deadline = started + args.minutes * 60
        turn = 0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_sample:
                await sample(replicas, started, loads)
                next_sample += args.sample_every
            if now >= next_restart:
                victim = replicas[turn % 2]
                turn += 1
                restarts.append(now - started)
                took = await restart(victim, etcd.endpoint, workdir, turn, revision)
                say(f"  {now - started:6.0f}s restarted replica {victim.name} ({took:.1f}s down)")
                next_restart += args.restart_every
            await judge(clients, stale)
            await asyncio.sleep(0.5)
        stop.set()
        await writing
        await asyncio.sleep(JUDGE_AFTER)
        await judge(clients, stale, final=True)
        await sample(replicas, started, loads)
        end = time.monotonic() - started

        say("RSS per replica (MB) and streams held, over time:")
        for r in replicas:
            cells = " ".join(f"{t:.0f}s:{rss / 1024:.0f}/{n}" for t, rss, n in r.samples)
            say(f"  {r.name}: {cells}")
        lines = growth(replicas, restarts, end, args.settle)
        for line, _ in lines:
            say(f"  {line}")
        worst_growth = max((pct for _, pct in lines), default=0.0)
        lags = sorted(stale.lags)
        p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else 0.0
        say(
            f"RSS growth after the first restart: worst {worst_growth:+.1f}% per phase "
            f"(target <= 5%)"
        )
        say(
            f"staleness: {stale.judged} changes judged, p99 {p99 * 1000:.0f}ms, worst "
            f"{stale.worst * 1000:.0f}ms (change {stale.worst_change}), {stale.stale_pairs} "
            f"(change, client) pairs older than {STALE_AFTER:g}s (target 0)"
        )
        for c, t, lag, n_late, n_behind in stale.late:
            say(
                f"  late: change {c} written at {t - started:.1f}s, held after {lag:.2f}s "
                f"({n_late} clients late, {n_behind} without it when judged)"
            )
        cpu = ", ".join(f"{r.name} {sum(r.cpu.values()):.0f}s" for r in replicas)
        say(
            f"meshd CPU over the run: {cpu} ({end:.0f}s); this host's load average (1 min): "
            f"median {statistics.median(loads):.1f}, max {max(loads):.1f} on "
            f"{os.cpu_count()} CPUs (others' work included)"
        )
        status = await clients.status()
        say(f"clients: {status['streams']} streams opened, errors {status['errors']}")
        for code, detail in sorted(status.get("error_details", {}).items()):
            say(f"  first {code}: {detail}")
        return 0
    finally:
        stop.set()
        if clients is not None:
            await clients.close()
        for r in replicas:
            r.meshd.stop()
        await registry.close()
        etcd.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--restart-every", type=float, default=300.0, help="seconds")
    p.add_argument("--clients", type=int, default=300)
    p.add_argument("--rate", type=float, default=10.0, help="registry changes per second")
    p.add_argument("--services", type=int, default=50)
    p.add_argument("--endpoints", type=int, default=5)
    p.add_argument("--loadgens", type=int, default=2, help="load generator processes")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    p.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="seconds into a phase before its RSS is the baseline of its growth",
    )
    p.add_argument("--workdir", help="keep logs here (default: a temporary directory)")
    p.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    args = p.parse_args(argv)
    if args.small:
        args.minutes = min(args.minutes, 0.5)
        args.restart_every = min(args.restart_every, 12.0)
        args.clients = min(args.clients, 8)
        args.services, args.endpoints = min(args.services, 5), min(args.endpoints, 2)
        args.loadgens, args.sample_every = 1, min(args.sample_every, 2.0)
        args.settle = min(args.settle, 2.0)
    if args.clients < 2 or args.rate <= 0 or args.minutes <= 0:
        p.error("--clients must be >= 2, --rate and --minutes > 0")
    return args


def main() -> None:
    args = parse_args()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        sys.exit(asyncio.run(run(args, Path(args.workdir))))
    with (
        tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp,
        contextlib.suppress(KeyboardInterrupt),
    ):
        sys.exit(asyncio.run(run(args, Path(tmp))))


if __name__ == "__main__":
    main()
