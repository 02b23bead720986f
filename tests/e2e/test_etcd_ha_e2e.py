"""meshd on a three-member etcd cluster, under load and faults (real processes throughout:
etcd members, the meshd process, two Envoy gateways, HTTP load at 200 requests a second).

- The etcd leader is killed (SIGKILL) while routes change every second: no request fails,
  every change reaches both Envoys, meshd logs the failover once and lists nothing again.
- Two members of three stop (quorum lost) for ``QUORUM_LOSS_S`` seconds: the Envoys keep
  serving the last config, writes through meshctl fail with UNAVAILABLE naming etcd, and
  once the members are back everything written before is there and a change reaches both
  Envoys within 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from integration.harness import http_get
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.ha_mesh import HaMesh, start_ha_mesh
from tests.support.meshctl import meshctl
from tests.support.paced import PacedCallers

RATE = 200.0
"""Requests a second, over both Envoys."""

QUORUM_LOSS_S = float(os.environ.get("MESH_TEST_QUORUM_LOSS_S", "30"))
"""How long quorum stays lost: the acceptance's 30 s (an environment variable shortens it
while developing; the suite runs the full 30 s)."""


def _load(mesh: HaMesh) -> list[PacedCallers]:
    """Two callers per Envoy, RATE requests a second in all, on ``/`` (route ``web``)."""

    def caller(url: str) -> Callable[[], int]:
        return lambda: http_get(url, timeout=5)[0]

    return [PacedCallers(caller(url), callers=2, rate=RATE / 4) for url in mesh.urls.values()]


@contextlib.contextmanager
def _loaded(mesh: HaMesh) -> Iterator[list[PacedCallers]]:
    """The load running: started on entry, stopped on exit."""
    loads = _load(mesh)
    with contextlib.ExitStack() as stack:
        for load in loads:
            stack.enter_context(load)
        yield loads


def _check_load(loads: list[PacedCallers], seconds: float) -> None:
    results = [r for load in loads for r in load.results]
    failed = [r for load in loads for r in load.failed]
    assert failed == [], f"{len(failed)} of {len(results)} requests failed: {failed[:10]}"
    # The pace held (the machine is shared: a loose floor).
    assert len(results) >= RATE * seconds * 0.7, (len(results), seconds)


async def _member_in_use(mesh: HaMesh) -> str:
    """The endpoint meshd uses now, from its log ("using member X", "failover ... to X")."""
    for line in reversed(mesh.log().splitlines()):
        for marker in ("etcd: using member ", " to "):
            if "etcd:" in line and marker in line:
                return line.rsplit(marker, 1)[1].split()[0]
    raise AssertionError(f"meshd did not say which etcd member it uses:\n{mesh.log()}")


@pytest.fixture
async def mesh(
    tmp_path: Path, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> AsyncIterator[HaMesh]:
    async for started in start_ha_mesh(tmp_path, envoy_factory, backend_factory):
        yield started


async def test_etcd_leader_killed_under_load_while_routes_change(
    mesh: HaMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = mesh.cluster
    used = await _member_in_use(mesh)
    leader, _ = await cluster.wait_leader()
    if leader.endpoint != used:
        # Make the member meshd uses the leader, so that killing the leader is its loss.
        member = next(m for m in cluster.members if m.endpoint == used)
        status = await cluster.status(member)
        assert status is not None
        cluster.etcdctl("move-leader", format(status.header.member_id, "x"), members=[leader])
        leader, _ = await cluster.wait_leader()
        assert leader.endpoint == used
    names: list[str] = []
    elected_at = 0.0
    started = time.monotonic()
    with _loaded(mesh) as loads:

        async def change_every_second() -> None:
            n = 0
            while True:
                n += 1
                name = f"r{n}"
                with contextlib.suppress(Exception):  # (some fail while no leader is elected)
                    await mesh.route(name)
                    names.append(name)
                await asyncio.sleep(max(0.0, started + n - time.monotonic()))

        changes = asyncio.ensure_future(change_every_second())
        try:
            await asyncio.sleep(3)
            leader.kill()
            killed_at = time.monotonic()
            _, elected_at = await cluster.wait_leader(other_than=leader)
            await asyncio.sleep(6)
        finally:
            changes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await changes
        after = [n for n in names if mesh.written[n] > elected_at]
        assert len(after) >= 4, (names, mesh.written, elected_at)
        # Every change written (those after the election above all) reaches both Envoys.
        await mesh.wait_served(names, timeout=10)
        seconds = time.monotonic() - started
    _check_load(loads, seconds)
    log = mesh.log()
    failovers = [line for line in log.splitlines() if "etcd: failover from" in line]
    assert len(failovers) == 1, log
    assert leader.endpoint in failovers[0], failovers  # which member, and why
    assert log.count("etcd: listed") == 1, log  # the first listing, none since
    assert mesh.metric("meshd_registry_relists_total") == 0
    assert mesh.metric("meshd_registry_failovers_total") == 1
    with capsys.disabled():
        print(
            f"\nleader killed: new leader after {elected_at - killed_at:.1f} s; "
            f"{len(names)} changes, {len(after)} after the election; "
            f"{sum(len(load.results) for load in loads)} requests, none failed"
        )


async def test_etcd_quorum_lost_envoys_keep_serving_and_writes_fail_clearly(
    mesh: HaMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = mesh.cluster
    before = [f"before{i}" for i in range(3)]
    for name in before:
        await mesh.route(name)
    await mesh.wait_served(before, timeout=10)
    used = await _member_in_use(mesh)
    # meshd's own member goes, and one more: the one left has no quorum.
    stopped = [m for m in cluster.members if m.endpoint == used]
    stopped.append(next(m for m in cluster.members if m.endpoint != used))
    refusals: list[str] = []
    started = time.monotonic()
    with _loaded(mesh) as loads:
        for member in stopped:
            member.stop()
        lost_at = time.monotonic()
        while time.monotonic() - lost_at < QUORUM_LOSS_S - 3:
            code, out, err = await meshctl("--admin", mesh.admin, "split", "web", "web@v2=100")
            assert code == 2, (code, out, err)  # (meshctl's code for UNAVAILABLE)
            assert "UNAVAILABLE" in err and "registry (etcd) unavailable" in err, err
            refusals.append(err.strip())
            # The Envoys hold the last config: the routes written before the loss.
            assert all(mesh.serves(e, n) for e in mesh.urls for n in before)
            await asyncio.sleep(2)
        await asyncio.sleep(max(0.0, lost_at + QUORUM_LOSS_S - time.monotonic()))
        await cluster.start(stopped)
        back_at = time.monotonic()
        # A change now reaches both Envoys within 2 s of its write.
        while True:
            try:
                written = await mesh.route("after")
                break
            except Exception:
                await asyncio.sleep(0.05)
        seen = await mesh.wait_served(["after"], timeout=10)
        seconds = time.monotonic() - started
    _check_load(loads, seconds)
    assert refusals, "no write was tried while quorum was lost"
    assert seen - written <= 2.0, f"the change took {seen - written:.2f} s to reach both Envoys"
    # Everything written before the loss is in etcd and in meshd's view.
    listing = await mesh.writer.list_prefix("/mesh/routes/default/")
    keys = {e.key.rsplit("/", 1)[1] for e in listing.entries}
    assert {*before, "web", "after"} <= keys, keys
    code, out, err = await meshctl("--admin", mesh.admin, "get", "routes", "-o", "json")
    assert code == 0, err
    assert all(name in out for name in before), out
    # A write through the admin API works again.
    code, out, err = await meshctl("--admin", mesh.admin, "split", "web", "web@v1=100")
    assert code == 0, err
    assert mesh.metric("meshd_registry_relists_total") == 0
    with capsys.disabled():
        print(
            f"\nquorum lost {QUORUM_LOSS_S:g} s: {len(refusals)} meshctl writes refused, e.g. "
            f"{refusals[0]!r}; back after {written - back_at:.2f} s, the change on both "
            f"Envoys {seen - written:.2f} s after its write; "
            f"{sum(len(load.results) for load in loads)} requests, none failed"
        )
