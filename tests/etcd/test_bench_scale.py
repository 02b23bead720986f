"""The scale benchmark itself: its floor-versus-meshd series alternates fairly, and a small
run of it prints every figure line (so the benchmark cannot rot between long runs).

No timing is asserted: figures are for ``python -m integration.bench_scale`` on a quiet
machine, printed, never checked here.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from integration.bench_scale import Bench, Run, Side, parse_args, ratio


class FakeClients:
    """Stands in for a load generator group: every client "receives" a change at once.

    (The real groups are exercised by test_loadgen.py and by the run below.)
    """

    def __init__(self, pid: int) -> None:
        self.pids = [pid]

    async def wait_change(self, change: int, timeout: float) -> tuple[list[float], int]:
        return [asyncio.get_running_loop().time()], 0


@pytest.fixture
async def idle_pid() -> AsyncIterator[int]:
    """A real, idle process: the series waits for its sides' processes to go idle."""
    proc = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        yield proc.pid
    finally:
        proc.kill()
        await proc.wait()


def side(name: str, pid: int, log: list[tuple[str, str, int]]) -> Side:
    async def change(k: int) -> None:
        log.append((name, "change", k))

    async def churn(k: int) -> None:
        log.append((name, "churn", k))

    return Side(Run(name), FakeClients(pid), pid, change, churn)  # type: ignore[arg-type]


def blocks(log: list[tuple[str, str, int]]) -> list[tuple[str, int]]:
    """The changes as (side, changes in a row)."""
    out: list[tuple[str, int]] = []
    for name, kind, _ in log:
        if kind != "change":
            continue
        if out and out[-1][0] == name:
            out[-1] = (name, out[-1][1] + 1)
        else:
            out.append((name, 1))
    return out


async def test_series_takes_blocks_in_turn_and_churns_only_the_side_measured(
    idle_pid: int, tmp_path: Path
) -> None:
    log: list[tuple[str, str, int]] = []
    bench = Bench(parse_args(["--block", "2", "--gap", "0"]), tmp_path)
    floor, meshd = side("floor", idle_pid, log), side("meshd", idle_pid, log)
    await bench.series([floor, meshd], 5)
    # A B, B A, A B: each side first as often as the other (a last short block of 1).
    assert blocks(log) == [("floor", 2), ("meshd", 4), ("floor", 3), ("meshd", 1)]
    ids = [k for _, kind, k in log if kind == "change"]
    assert len(set(ids)) == 10  # a marker is never reused
    for s in (floor, meshd):
        assert s.run.latency is not None
        assert s.run.latency.changes == 5
        assert len(s.run.latency.samples) == 5
        assert not s.run.latency.cut

    log.clear()
    await bench.series([floor, meshd], 4, churn=50.0)
    assert blocks(log) == [("floor", 2), ("meshd", 4), ("floor", 2)]
    churned: dict[str, list[int]] = {"floor": [], "meshd": []}
    for i, (name, kind, k) in enumerate(log):
        if kind != "churn":
            continue
        churned[name].append(k)
        # Churn runs from 1 s before a block's first change to its last: the change before
        # it or the one after it is of the same side.
        before = [n for n, kd, _ in log[:i] if kd == "change"][-1:]
        after = [n for n, kd, _ in log[i:] if kd == "change"][:1]
        assert name in before + after, log
    # Each side's churn goes on where its last block left it: never the same change twice.
    for ks in churned.values():
        assert len(ks) > 10
        assert ks == sorted(set(ks))


async def test_series_stops_both_sides_after_the_same_blocks_when_one_is_over_budget(
    idle_pid: int, tmp_path: Path
) -> None:
    log: list[tuple[str, str, int]] = []
    bench = Bench(parse_args(["--block", "1", "--gap", "0", "--budget", "0.3"]), tmp_path)
    fast, slow = side("floor", idle_pid, log), side("meshd", idle_pid, log)
    change = slow.change

    async def slow_change(k: int) -> None:
        await asyncio.sleep(0.2)
        await change(k)

    slow.change = slow_change
    await bench.series([fast, slow], 20)
    assert fast.run.latency is not None and slow.run.latency is not None
    assert fast.run.latency.changes == slow.run.latency.changes == 2
    assert fast.run.latency.cut and slow.run.latency.cut

    # A round's first block stops at the budget too (an overloaded series must not run a
    # whole block of slow changes), and the round's other blocks make as many changes.
    bench.args.block, bench.args.budget = 10, 0.5
    await bench.series([slow, fast], 20)
    # (0.2 s or more a change: 3 at most fit in 0.5 s, fewer on a loaded machine)
    assert 1 <= slow.run.latency.changes == fast.run.latency.changes <= 3
    assert slow.run.latency.cut and fast.run.latency.cut


def test_a_small_run_prints_every_figure(tmp_path: Path) -> None:
    args: list[Any] = [
        *("--only", "fanout,churn,scaling"),
        *("--clients", 6, "--churn-clients", 6, "--scaling-clients", 2),
        *("--services", 4, "--endpoints", 2, "--changes", 3, "--block", 2),
        *("--scaling-small", 4, "--scaling-large", 40, "--churn-scope", "unsubscribed"),
        *("--settle", 0.2, "--procs", 1, "--bare-runs", 2),
    ]
    out = subprocess.run(
        [sys.executable, "-m", "integration.bench_scale", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = out.stdout.split("\nsummary (", 1)[1]
    for figure in (
        "[2a] fan-out sotw 6 clients",
        "[4] memory sotw 6 clients",
        "[2a] fan-out delta 6 clients",
        "[4] memory delta 6 clients",
        "[2b] churn (unsubscribed) delta 6 clients",
        "[3] scaling 4 -> 40 services",
    ):
        assert figure in summary, summary
    assert summary.count("3 changes each, in blocks of 2 taken in turn") == 4  # 2a x2, 2b, 3
    assert "MISSING" not in out.stdout
    assert summary.count("(median of ") == 2  # the bare stream of each protocol
    assert out.stdout.count("bare streams (floor, 1-cluster config)") == 4


def test_a_ratio_over_nothing_measured_says_so() -> None:
    # A few cheap changes can measure 0 ms of CPU (/proc counts 10 ms ticks): the scaling
    # figure divided by it and the whole benchmark died (seen in a small run under CI).
    assert ratio(3.0, 2.0) == "1.50x"
    assert ratio(3.0, 0.0).startswith("n/a")
