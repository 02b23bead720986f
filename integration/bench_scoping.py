"""Scoping benchmark: sidecars that declare their ``upstreams`` against sidecars that do not.

Real etcd, meshd as its own process, simulated proxies in load generator processes
(:mod:`integration.loadgen`), each presenting the node cluster of its own service
(``s<i>.default``), and the zero-work floor (:mod:`integration.floor_server`) through the
same clients. The registry: ``--services`` (10,000) services x ``--endpoints`` (2), one HTTP
listener ``out`` served to every node, and ``--sidecars`` (2,000) of the services each
declaring ``--upstreams`` (10) others, drawn at random (seeded); ``--dependents`` (200) of
them declare the target service ``s<sidecars>`` among theirs. The same run is made twice,
with the declarations ("scoped") and without them ("everything", as before), on etcds of
their own. Figures, printed with their targets:

1. ``config``: bytes of resources meshd sent per sidecar to bring it up (its
   ``meshd_xds_push_bytes_total``, over the clients), and how long the connect took.
2. ``memory``: meshd RSS per connected client beyond its baseline.
3. ``fanout``: an endpoint change of the target service (port of ``e0`` set to ``base +
   change id``, the load generator's marker), p50/p99 to every client holding it, against the
   floor serving the same clients a config of the same size (scoped: the dependents and a
   config of ``--upstreams`` services; everything: every sidecar and every service) in
   alternating blocks (target: p99 within 1.5x of the floor's); meshd CPU per change. Scoped:
   the other sidecars must be sent nothing at all (target 0 responses).
4. ``cds``: ``--edits`` edits of the target service's own value (its Cluster changes: the
   wildcard CDS path): responses the dependents and the other sidecars got (target 0 for
   the others).

    python -m integration.bench_scoping [--small] [--protocol delta|sotw|both]

The machine is shared and its speed drifts: the floor and meshd take the changes in
alternating blocks (:meth:`~integration.bench_scale.Bench.series`); figures are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.bench_scale import (
    BASE,
    Bench,
    Floor,
    Meshd,
    Run,
    Side,
    _read_errors,
    add_run_options,
    address,
    compile_meshd,
    finish_run_options,
    load,
    meshd_revision,
    put_entries,
    run_bench,
    say,
)
from integration.loadgen import LoadGenGroup, rss_kb


def declarations(args: argparse.Namespace) -> list[list[str]]:
    """Each sidecar's ``upstreams`` (service names): ``--upstreams`` others drawn at random
    (seeded by the sidecar's index); the first ``--dependents`` call the target."""
    target = args.sidecars
    out = []
    for i in range(args.sidecars):
        rng = random.Random(i)
        picks: list[int] = []
        if i < args.dependents:
            picks.append(target)
        while len(picks) < args.upstreams:
            j = rng.randrange(args.services)
            if j not in (i, target) and j not in picks:
                picks.append(j)
        out.append([f"s{j}" for j in picks])
    return out


def registry_entries(args: argparse.Namespace, scoped: bool) -> Iterator[tuple[str, Any]]:
    """The registry (keys without prefix): one HTTP listener for every node, the services
    and their endpoints; with ``scoped``, the sidecars' declarations."""
    yield "listeners/out", {"address": "0.0.0.0", "port": 15001, "nodes": ["*"]}
    declared = declarations(args) if scoped else []
    for i in range(args.services):
        service: dict[str, Any] = {"protocol": "http", "port": 8080}
        if i < len(declared):
            service["upstreams"] = declared[i]
        yield f"services/default/s{i}", service
        for j in range(args.endpoints):
            ep = {"address": address(i * args.endpoints + j), "port": 8080}
            yield f"endpoints/default/s{i}/e{j}", ep


async def seed(registry: EtcdRegistry, entries: Iterator[tuple[str, Any]]) -> int:
    """Write ``entries`` in transactions of TXN_BATCH puts; the last revision."""
    revision, _ = await put_entries(registry, entries)
    return revision


@dataclass
class Mode:
    """What one registry (scoped or not) gave."""

    name: str
    scoped: bool
    meshd: Run = field(default_factory=lambda: Run("meshd"))
    floor: Run = field(default_factory=lambda: Run("floor"))
    bytes_per_client: float = 0.0
    others_sent: int = -1  # responses the sidecars that do not call the target got
    cds_dependents: int = 0
    cds_others: int = -1


class ScopingBench:
    """One invocation: both modes, their figures, the summary."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.bench = Bench(args, workdir)  # (the alternating series and change ids)
        self.summary: list[str] = []

    def report(self, line: str) -> None:
        say(line)
        self.summary.append(line)

    async def run(self, protocol: str) -> tuple[Mode, Mode]:
        modes = (Mode("scoped", True), Mode("everything", False))
        for mode in modes:
            if mode.name in self.args.modes:
                await self.mode(mode, protocol)
        if len(self.args.modes) == len(modes):
            self.figures(modes, protocol)
        return modes

    async def add_clients(
        self, group: LoadGenGroup, target: str, indices: range, protocol: str, **kw: Any
    ) -> None:
        """One client per index, presenting node cluster ``s<index>.default``, spread over
        the group's processes."""
        calls: list[list[dict[str, Any]]] = [[] for _ in group.gens]
        n = 1 if protocol == "sotw" else 0
        for k, i in enumerate(indices):
            calls[k % len(group.gens)].append(
                {"sotw": n, "delta": 1 - n, "node_cluster": f"s{i}.default"}
            )

        async def feed(gen_index: int) -> None:
            gen = group.gens[gen_index]
            for c in calls[gen_index]:
                await gen.call("add", target=target, backoff=self.args.backoff, **c, **kw)

        await asyncio.gather(*(feed(g) for g in range(len(group.gens))))
        group.total += len(indices)

    @contextlib.asynccontextmanager
    async def meshd_side(
        self, mode: Mode, protocol: str
    ) -> AsyncIterator[tuple[Side, LoadGenGroup | None, EtcdRegistry]]:
        a = self.args
        etcd = EmbeddedEtcd(
            self.workdir / f"etcd-{mode.name}-{protocol}",
            unsafe_no_fsync=not a.fsync,
            auto_compaction_retention=None,
        )
        await etcd.start()
        registry = EtcdRegistry(etcd.endpoint, timeout=30)
        t0 = time.perf_counter()
        revision = await seed(registry, registry_entries(a, mode.scoped))
        say(f"  {mode.name}: seeded etcd in {time.perf_counter() - t0:.1f} s")
        meshd = Meshd(
            etcd.endpoint,
            self.workdir,
            f"meshd-{mode.name}-{protocol}",
            profile="phase" if a.profile else "",
        )
        deps: LoadGenGroup | None = None
        others: LoadGenGroup | None = None
        run = mode.meshd
        try:
            await meshd.wait_ready(revision, timeout=600)
            await asyncio.sleep(1)
            run.rss_base_kb = meshd.rss_kb()
            sent0 = await _push_bytes(meshd)
            deps = await LoadGenGroup.start(a.procs, self.workdir, f"lg-{mode.name}-deps")
            if mode.scoped and a.sidecars > a.dependents:
                others = await LoadGenGroup.start(1, self.workdir, f"lg-{mode.name}-others")
            target = a.sidecars
            marker = {
                "marker": f"s{target}.default",
                "marker_address": address(target * a.endpoints),
            }
            t0 = time.monotonic()
            # Scoped: the dependents are measured, the others watched for what they get;
            # everything: every sidecar holds the target, every one is measured.
            measured = range(a.dependents) if mode.scoped else range(a.sidecars)
            await self.add_clients(deps, meshd.target, measured, protocol, **marker)
            if others is not None:
                rest = range(a.dependents, a.sidecars)
                await self.add_clients(others, meshd.target, rest, protocol, **marker)
            run.clients = a.sidecars
            for group in (deps, others):
                if group is None:
                    continue
                res = await group.wait_complete(a.connect_timeout)
                if res["complete"] < group.total:
                    say(f"  !! {res['complete']}/{group.total} clients complete")
            run.connect_s = time.monotonic() - t0
            await asyncio.sleep(a.settle)
            meshd.check_alive()
            run.rss_connected_kb = meshd.rss_kb()
            mode.bytes_per_client = (await _push_bytes(meshd) - sent0) / a.sidecars
            key = registry.prefix + f"endpoints/default/s{target}/e0"
            at = address(target * a.endpoints)

            async def put(k: int) -> None:
                await registry.put(key, json.dumps({"address": at, "port": BASE + k}).encode())

            async def no_churn(k: int) -> None:
                return None

            side = Side(run, deps, meshd.pid, put, no_churn, profile=meshd.profile_phase)
            yield side, others, registry
            meshd.check_alive()
            run.rss_after_kb = meshd.rss_kb()
            await _read_errors(run, deps)
        finally:
            for group in (deps, others):
                if group is not None:
                    await group.close()
            meshd.stop()
            await registry.close()
            etcd.stop()

    @contextlib.asynccontextmanager
    async def floor_side(self, mode: Mode, protocol: str) -> AsyncIterator[Side]:
        """The floor serving each measured client a config of the size meshd gives it."""
        a = self.args
        services = a.upstreams if mode.scoped else a.services
        clients = a.dependents if mode.scoped else a.sidecars
        run = mode.floor
        run.clients = clients
        floor = await Floor.start(services, a.endpoints, self.workdir)
        group: LoadGenGroup | None = None
        try:
            group = await LoadGenGroup.start(a.procs, self.workdir, f"lg-{mode.name}-floor")
            await asyncio.sleep(0.5)
            run.rss_base_kb = rss_kb(floor.pid)
            t0 = time.monotonic()
            sotw = clients if protocol == "sotw" else 0
            await group.add(floor.target, sotw=sotw, delta=clients - sotw, backoff=a.backoff)
            res = await group.wait_complete(a.connect_timeout)
            run.connect_s = time.monotonic() - t0
            if res["complete"] < clients:
                say(f"  !! floor: {res['complete']}/{clients} clients complete")
            await asyncio.sleep(a.settle)
            run.rss_connected_kb = rss_kb(floor.pid)

            async def push(k: int) -> None:
                await floor.send(f"push {k}")

            async def no_churn(k: int) -> None:
                return None

            yield Side(run, group, floor.pid, push, no_churn)
            await _read_errors(run, group)
        finally:
            if group is not None:
                await group.close()
            await floor.close()

    async def mode(self, mode: Mode, protocol: str) -> None:
        a = self.args
        what = (
            f"{a.sidecars} sidecars declaring {a.upstreams} upstreams each, {a.dependents} "
            f"calling the target s{a.sidecars}"
            if mode.scoped
            else f"{a.sidecars} sidecars declaring nothing (every service, as before)"
        )
        say(f"[{mode.name}] {protocol}: {a.services} services x {a.endpoints}, {what} ({load()})")
        async with self.floor_side(mode, protocol) as fside:
            fl = fside.run
            say(f"  floor: {fl.clients} clients connect {fl.connect_s:.1f} s; RSS {fl.memory()}")
            async with self.meshd_side(mode, protocol) as (mside, others, registry):
                ml = mside.run
                say(
                    f"  meshd: {ml.clients} clients connect {ml.connect_s:.1f} s; "
                    f"{mode.bytes_per_client / 1024:.1f} KB sent per sidecar; RSS {ml.memory()}"
                )
                before = await _responses(others)
                await self.bench.series([fside, mside], a.changes)
                after_series = await _responses(others)
                mode.others_sent = after_series - before if others is not None else -1
                mode.cds_dependents, mode.cds_others = await self.edits(mside, others, registry)
        assert fl.latency is not None and ml.latency is not None
        say(f"  floor: {fl.latency}; stream errors {fl.errors_text}")
        say(
            f"  meshd: {ml.latency}; meshd CPU {ml.cpu_s / max(1, ml.latency.changes) * 1000:.1f} "
            f"ms/change; stream errors {ml.errors_text}; RSS after {ml.after}"
        )

    async def edits(
        self, mside: Side, others: LoadGenGroup | None, registry: EtcdRegistry
    ) -> tuple[int, int]:
        """Edits of the target service's value (its Cluster): responses its dependents and
        the other sidecars got."""
        a = self.args
        key = registry.prefix + f"services/default/s{a.sidecars}"
        deps0, others0 = await _responses(mside.clients), await _responses(others)
        for k in range(a.edits):
            value = {"protocol": "http", "port": 8080, "connect_timeout_ms": 1000 + k}
            await registry.put(key, json.dumps(value).encode())
            await asyncio.sleep(a.edit_gap)
        await asyncio.sleep(a.settle)
        deps1, others1 = await _responses(mside.clients), await _responses(others)
        return deps1 - deps0, (others1 - others0) if others is not None else -1

    def figures(self, modes: tuple[Mode, Mode], protocol: str) -> None:
        a = self.args
        scoped, everything = modes
        s_b, e_b = scoped.bytes_per_client, everything.bytes_per_client
        self.report(
            f"[1] config per sidecar ({protocol}, {a.services} services x {a.endpoints}): scoped "
            f"{s_b / 1024:.1f} KB, everything {e_b / 1024:.1f} KB ({e_b / max(1.0, s_b):.0f}x "
            f"more); connect of {a.sidecars} sidecars {scoped.meshd.connect_s:.1f} s / "
            f"{everything.meshd.connect_s:.1f} s"
        )
        self.report(
            f"[2] meshd memory per client ({protocol}): scoped "
            f"{scoped.meshd.per_client_kb:.1f} KB, everything {everything.meshd.per_client_kb:.1f}"
            f" KB; meshd RSS before clients {scoped.meshd.rss_base_kb / 1024:.0f} MB / "
            f"{everything.meshd.rss_base_kb / 1024:.0f} MB"
        )
        for mode, who in (
            (scoped, f"{a.dependents} dependents"),
            (everything, f"all {a.sidecars} sidecars"),
        ):
            ml, fl = mode.meshd.latency, mode.floor.latency
            assert ml is not None and fl is not None
            cpu = mode.meshd.cpu_s / max(1, ml.changes) * 1000
            others = (
                f"; the other {a.sidecars - a.dependents} sidecars were sent {mode.others_sent} "
                "responses (target 0)"
                if mode.scoped
                else ""
            )
            self.report(
                f"[3] fan-out ({mode.name}, {protocol}) of a change to s{a.sidecars} to {who}: "
                f"meshd p50 {ml.p50:.0f} ms / p99 {ml.p99:.0f} ms, floor {fl.p50:.0f} / "
                f"{fl.p99:.0f} ms, ratio {ml.p50 / fl.p50:.2f}x / {ml.p99 / fl.p99:.2f}x "
                f"(target p99 <= 1.5x); meshd CPU {cpu:.1f} ms/change; missing "
                f"{ml.missing}/{fl.missing}; {ml.changes} changes{others}; {load()}"
            )
        self.report(
            f"[4] {a.edits} edits of s{a.sidecars}'s own value (CDS): scoped: its "
            f"{a.dependents} dependents got {scoped.cds_dependents} responses, the other "
            f"sidecars {scoped.cds_others} (target 0); everything: all {a.sidecars} got "
            f"{everything.cds_dependents}"
        )


async def _push_bytes(meshd: Meshd) -> float:
    m = await meshd.metrics("meshd_xds_push_bytes_total")
    return sum(v for k, v in m.items() if k.startswith("meshd_xds_push_bytes_total"))


async def _responses(group: LoadGenGroup | None) -> int:
    if group is None:
        return 0
    return int((await group.status())["responses"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--endpoints", type=int, default=2, help="endpoints per service")
    p.add_argument("--sidecars", type=int, default=2_000, help="simulated sidecars")
    p.add_argument("--upstreams", type=int, default=10, help="services each sidecar declares")
    p.add_argument(
        "--dependents", type=int, default=200, help="sidecars declaring the changed service"
    )
    p.add_argument("--changes", type=int, default=50, help="changes per latency series")
    p.add_argument("--edits", type=int, default=5, help="edits of the target's own value")
    p.add_argument("--edit-gap", type=float, default=0.5, help="seconds between those edits")
    p.add_argument("--connect-timeout", type=float, default=900.0)
    p.add_argument(
        "--small",
        action="store_true",
        help="a quick run: 300 services, 40 sidecars of 5 upstreams, 10 dependents",
    )
    p.add_argument(
        "--profile", action="store_true", help="profile meshd (cProfile) during its changes"
    )
    p.add_argument(
        "--modes",
        default="scoped,everything",
        help="which runs (the figures need both): scoped, everything",
    )
    add_run_options(p, budget=60.0)
    p.set_defaults(protocol="delta")
    args = finish_run_options(p.parse_args(argv))
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.small:
        args.services, args.sidecars, args.upstreams, args.dependents = 300, 40, 5, 10
        args.changes, args.edits, args.edit_gap, args.block = 6, 2, 0.2, 3
        args.settle, args.procs = 0.5, 1
    if not args.upstreams < args.services or args.dependents > args.sidecars:
        p.error("needs --upstreams < --services and --dependents <= --sidecars")
    if args.sidecars >= args.services:
        p.error("needs --sidecars < --services (the target is s<sidecars>)")
    return args


async def amain(args: argparse.Namespace, workdir: Path) -> None:
    started = time.monotonic()
    say(
        f"bench_scoping: {os.cpu_count()} CPUs, {load()}, loadgen processes {args.procs}, "
        f"work dir {workdir}; meshd code at {meshd_revision()}; {compile_meshd()}; marker "
        f"ports from {BASE}"
    )
    bench = ScopingBench(args, workdir)
    for protocol in args.protocols:
        await bench.run(protocol)
    say(f"\nsummary ({time.monotonic() - started:.0f} s, {load()}):")
    for line in bench.summary:
        say("  " + line)


def main() -> None:
    run_bench(amain, parse_args(), "scoping")


if __name__ == "__main__":
    main()
