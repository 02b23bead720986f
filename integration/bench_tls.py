"""The cost of TLS on xDS: the same clients against a plaintext meshd and a TLS meshd, in one run.

Real etcd, two meshd processes (the console script, so their RSS and CPU are read from
/proc) and simulated Envoy clients in load generator processes (:mod:`integration.loadgen`),
as :mod:`integration.bench_scale` runs them, whose pieces this module reuses:

- ``plaintext``: ``--xds-auth off --xds-tls off`` (development mode, loopback only);
- ``tls``: ``--xds-tls on --xds-auth required``: xDS over TLS with a certificate from meshd's
  own mesh CA (created in etcd at its first start), every stream presenting a join token.
  The CA bundle comes from ``meshctl ca get --etcd``, the token from ``meshctl token create
  gateway:bench`` over the TLS admin API; every client dials with a TLS channel trusting
  only that bundle, sends ``authorization: Bearer <token>`` on its stream, and names node
  cluster ``bench`` (the token's identity). So the ``tls`` side pays for the handshake, the
  encryption of every byte and the token check of every stream; nothing else differs.

Both meshds use the same etcd, each under its own registry prefix holding the same
``--services`` x ``--endpoints`` registry (the plaintext clients name node cluster ``bench``
too, so both serve the same config): a change made for one side reaches only that
side's meshd and clients, so the idle side does not load the side measured. Figures, per
protocol (``--protocol``: SotW, Delta or both), each printed as plaintext, TLS and the ratio
TLS/plaintext:

1. ``storm``: ``--clients`` fresh clients connect within ``--spread`` (1) s, client i at
   ``spread * i / n``, each on its own connection: the time from the first connect to the
   last client holding a complete config (clusters, endpoints of every one, listeners and
   their routes); meshd CPU seconds from the first connect until meshd and the clients are
   idle again; meshd RSS per client, read ``--settle`` s after the last one is complete.
   ``--storms`` (3) repetitions, each with fresh meshd processes (so RSS starts from a new
   process) and the order of the two sides swapped every time; the figure is the median.
2. ``fanout``: one endpoint change reaching every client (the marker of bench_scale: the port
   of ``s0/e0`` set to ``base + change id``, timed from just before the etcd write to its
   arrival at each client), p50/p99 over ``--changes`` changes per side, and meshd CPU per
   change. Run in the last storm's processes, both sides connected at once, the changes in
   alternating blocks of ``--block`` (bench_scale's ``series``: A B, B A, ...), so a slow
   spell of this VM lands on both sides; the next change waits until everything is idle.

    python -m integration.bench_tls [--clients 1000] [--services 1000] [--changes 60]
        [--protocol sotw|delta|both] [--storms 3]

Figures are printed, never asserted. etcd runs with ``--unsafe-no-fsync`` unless ``--fsync``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.bench_scale import (
    Bench,
    Meshd,
    Run,
    Side,
    add_run_options,
    compile_meshd,
    cpu_seconds,
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
from integration.loadgen import LoadGenGroup

NODE_CLUSTER = "bench"
"""Every client's node cluster: the gateway identity ``gateway:bench`` of the join token."""

MARKER_KEY = "endpoints/default/s0/e0"


@dataclass
class Server:
    """One side: its registry prefix, meshd flags, and how its clients connect."""

    name: str
    prefix: str
    tls: bool
    registry: EtcdRegistry
    revision: int
    client_args: dict[str, Any] = field(default_factory=dict)
    storms: list[Storm] = field(default_factory=list)
    meshd: Meshd | None = None

    @property
    def flags(self) -> tuple[str, ...]:
        """meshd's flags for this side (on loopback both safeguards could default to off:
        each is spelled out)."""
        if self.tls:
            return ("--xds-tls", "on", "--xds-auth", "required")
        return ("--xds-auth", "off", "--xds-tls", "off")

    def start(self, etcd: EmbeddedEtcd, workdir: Path, tag: str) -> Meshd:
        """A fresh meshd for this side on ``etcd`` (its log ``meshd-<name>-<tag>.log``)."""
        self.meshd = Meshd(
            etcd.endpoint,
            workdir,
            f"meshd-{self.name}-{tag}",
            extra_args=("--prefix", self.prefix, *self.flags),
        )
        return self.meshd

    def stop(self) -> None:
        """Stop this side's meshd, if one runs."""
        if self.meshd is not None:
            self.meshd.stop()
            self.meshd = None


@dataclass
class Storm:
    """What one connect storm against one meshd gave."""

    complete_s: float
    meshd_cpu_s: float
    clients_cpu_s: float
    rss_base_kb: int
    rss_kb: int
    clients: int
    complete: int
    errors: dict[str, int]

    @property
    def per_client_kb(self) -> float:
        """meshd's RSS growth over the storm, per client."""
        return (self.rss_kb - self.rss_base_kb) / max(1, self.clients)


def meshctl(*args: str) -> str:
    """Run the ``meshctl`` console script (next to sys.executable); its stdout."""
    exe = Path(sys.executable).with_name("meshctl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "xds_server.cli.meshctl"]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"meshctl {' '.join(args)}: exit {out.returncode}: {out.stderr}")
    return out.stdout


def tls_credentials(etcd: EmbeddedEtcd, server: Server, workdir: Path) -> dict[str, Any]:
    """What a TLS client needs, got as an operator would: the trust bundle straight from etcd
    (first contact), then a gateway join token over the TLS admin API trusting it."""
    assert server.meshd is not None
    bundle = meshctl("ca", "get", "--etcd", etcd.endpoint, "--prefix", server.prefix)
    ca = workdir / "ca.pem"
    ca.write_text(bundle)
    admin = f"127.0.0.1:{server.meshd.admin_port}"
    identity = f"gateway:{NODE_CLUSTER}"
    create = ["token", "create", identity, "--ttl", "24h", "-o", "json", "--admin", admin]
    made = json.loads(meshctl(*create, "--ca", str(ca)))
    say(f"  tls: trust bundle from etcd ({len(bundle)} bytes), join token for {made['identity']}")
    return {"root_certs": bundle, "token": made["token"]}


async def storm(
    bench: Bench, server: Server, clients: LoadGenGroup, sotw: int, delta: int
) -> Storm:
    """Connect the clients to ``server`` within ``--spread`` s and measure (see figure 1)."""
    a = bench.args
    meshd = server.meshd
    assert meshd is not None
    rss0 = meshd.rss_kb()
    cpu0, lg0 = meshd.cpu(), sum(cpu_seconds(p) for p in clients.pids)
    complete_s, res = await bench.connect(
        clients,
        meshd.target,
        sotw,
        delta,
        300,
        spread=a.spread,
        node_cluster=NODE_CLUSTER,
        **server.client_args,
    )
    # The storm's cost runs until its last ACKs are handled, not only to the last arrival.
    await quiesce([meshd.pid, *clients.pids], limit=30)
    cpu = meshd.cpu() - cpu0
    clients_cpu = sum(cpu_seconds(p) for p in clients.pids) - lg0
    await asyncio.sleep(a.settle)
    meshd.check_alive()
    errors = res.get("errors") or {}
    return Storm(
        complete_s, cpu, clients_cpu, rss0, meshd.rss_kb(), sotw + delta, res["complete"], errors
    )


def figure(label: str, plain: float, tls: float, unit: str, digits: int = 2) -> str:
    """One figure line: plaintext, TLS, and TLS/plaintext."""
    return (
        f"{label}: plaintext {plain:.{digits}f} {unit}, TLS {tls:.{digits}f} {unit}, "
        f"TLS/plaintext {ratio(tls, plain)}"
    )


async def protocol_run(
    bench: Bench, etcd: EmbeddedEtcd, servers: list[Server], protocol: str, workdir: Path
) -> None:
    """Figures 1 and 2 for one protocol: the storms, then the fan-out in the last one's
    processes."""
    a = bench.args
    n = a.clients
    sotw, delta = (n, 0) if protocol == "sotw" else (0, n)
    say(f"{protocol}: {n} clients per side, {a.services} services x {a.endpoints} endpoints")
    for s in servers:
        s.storms = []
    sides: dict[str, Side] = {}
    for rep in range(a.storms):
        order = servers if rep % 2 == 0 else servers[::-1]
        groups: list[LoadGenGroup] = []
        try:
            for s in servers:
                meshd = s.start(etcd, workdir, f"{protocol}-{rep}")
                await meshd.wait_ready(s.revision)
                if s.tls and not s.client_args:
                    s.client_args = await asyncio.to_thread(tls_credentials, etcd, s, workdir)
            await asyncio.sleep(1)  # past meshd's start (heap trims, first scrapes)
            for s in order:
                group = await bench.clients(f"loadgen-{protocol}-{s.name}-{rep}")
                groups.append(group)
                st = await storm(bench, s, group, sotw, delta)
                s.storms.append(st)
                missing = f", ONLY {st.complete}/{st.clients} COMPLETE" if st.complete < n else ""
                say(
                    f"  storm {rep + 1} {s.name}: all complete {st.complete_s:.2f} s; meshd CPU "
                    f"{st.meshd_cpu_s:.2f} s, clients' CPU {st.clients_cpu_s:.2f} s; meshd RSS "
                    f"{st.rss_base_kb / 1024:.0f} -> {st.rss_kb / 1024:.0f} MB = "
                    f"{st.per_client_kb:.1f} KB/client; stream errors {st.errors or 'none'}"
                    f"{missing}; {load()}"
                )
            if rep == a.storms - 1 and a.changes:
                for s, group in zip(order, groups, strict=True):
                    sides[s.name] = fanout_side(s, group, n)
                await bench.series([sides[s.name] for s in order], a.changes)
        finally:
            for group in groups:
                await group.close()
            for s in servers:
                s.stop()
    plain, tls = servers
    storms = len(plain.storms)
    what = f"[1] {protocol} connect storm, {n} clients within {a.spread:g} s"
    every = f"median of {storms} storm(s) each, first side alternating"

    def both(attr: str) -> tuple[float, float]:
        """The median of ``attr`` over each side's storms: (plaintext, TLS)."""
        plain_s, tls_s = ([getattr(st, attr) for st in s.storms] for s in servers)
        return statistics.median(plain_s), statistics.median(tls_s)

    clients_cpu = both("clients_cpu_s")
    bench.report(
        figure(f"{what}: all complete", *both("complete_s"), "s") + f" ({every}; {load()})"
    )
    bench.report(
        figure(f"{what}: meshd CPU", *both("meshd_cpu_s"), "s")
        + f" (until idle; the clients' CPU {clients_cpu[0]:.2f} / {clients_cpu[1]:.2f} s)"
    )
    bench.report(figure(f"{what}: meshd RSS per client", *both("per_client_kb"), "KB", 1))
    if not sides:
        return
    pl, tl = sides[plain.name].run.latency, sides[tls.name].run.latency
    assert pl is not None and tl is not None
    what = f"[2] {protocol} fan-out, one change to {n} clients"
    every = f"{pl.changes} changes each, in blocks of {a.block} taken in turn"
    missing = f"; MISSING {pl.missing}/{tl.missing}" if pl.missing or tl.missing else ""
    bench.report(figure(f"{what}: p50", pl.p50, tl.p50, "ms", 1) + f" ({every}{missing})")
    bench.report(figure(f"{what}: p99", pl.p99, tl.p99, "ms", 1))
    cpu = [sides[s.name].run.cpu_s / max(1, pl.changes) * 1000 for s in servers]
    bench.report(figure(f"{what}: meshd CPU per change", cpu[0], cpu[1], "ms", 1) + f"; {load()}")


def fanout_side(server: Server, clients: LoadGenGroup, n: int) -> Side:
    """``server``'s meshd and clients as a side of bench_scale's alternating series."""
    meshd = server.meshd
    assert meshd is not None
    registry = server.registry

    async def change(k: int) -> None:
        await registry.put(registry.prefix + MARKER_KEY, marker_value(k))

    async def no_churn(k: int) -> None:
        raise AssertionError("the fan-out runs without churn")

    return Side(Run(server.name, clients=n), clients, meshd.pid, change, no_churn)


async def amain(args: argparse.Namespace, workdir: Path) -> None:
    started = time.monotonic()
    say(
        f"bench_tls: {os.cpu_count()} CPUs, {load()}, loadgen processes {args.procs} per side, "
        f"etcd {'fsync' if args.fsync else '--unsafe-no-fsync'}; work dir {workdir}; meshd "
        f"code at {meshd_revision()}; {compile_meshd()}"
    )
    bench = Bench(args, workdir)
    etcd = EmbeddedEtcd(
        workdir / "etcd", unsafe_no_fsync=not args.fsync, auto_compaction_retention=None
    )
    await etcd.start()
    servers: list[Server] = []
    try:
        for name, prefix, tls in (
            ("plaintext", "/mesh-plain/", False),
            ("tls", "/mesh-tls/", True),
        ):
            registry = EtcdRegistry(etcd.endpoint, prefix=prefix, timeout=30)
            revision, secs, keys = await seed(registry, args.services, args.endpoints)
            say(f"  seeded {keys} keys under {prefix} in {secs:.2f} s")
            servers.append(Server(name, prefix, tls, registry, revision))
        for protocol in args.protocols:
            await protocol_run(bench, etcd, servers, protocol, workdir)
    finally:
        for s in servers:
            s.stop()
            await s.registry.close()
        etcd.stop()
    say(f"\nsummary ({time.monotonic() - started:.0f} s, {load()}):")
    for line in bench.summary:
        say("  " + line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench's options, with the attributes bench_scale's Bench reads."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000, help="clients per side")
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    p.add_argument("--changes", type=int, default=60, help="fan-out changes per side (0: none)")
    p.add_argument("--storms", type=int, default=3, help="connect storms per side and protocol")
    p.add_argument("--spread", type=float, default=1.0, help="seconds over which clients connect")
    add_run_options(p, budget=60.0)
    args = finish_run_options(p.parse_args(argv))
    if args.storms < 1:
        p.error("--storms must be at least 1")
    return args


def main() -> None:
    run_bench(amain, parse_args(), "tls")


if __name__ == "__main__":
    main()
