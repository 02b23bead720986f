"""The scale benchmark's instruments: simulated ADS clients and the floor server, for real.

Small and functional (no timing assertions): 20 SotW + 20 Delta clients in a load generator
process against a meshd process on a small etcd registry get a complete config and see every
endpoint change, also after meshd restarts; moved to a second replica they say what they hold
(so meshd sends them nothing). The floor server serves the same clients.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.bench_scale import (
    Floor,
    Meshd,
    churn_key_value,
    marker_value,
    registry_entries,
    seed,
)
from integration.floor_server import cla
from integration.loadgen import (
    MARKER_BASE,
    LoadGenGroup,
    address_pattern,
    first_string,
    marker_ids,
)
from tests.support.wait import eventually
from xds_server.model import Problem, parse_entry

SERVICES, ENDPOINTS = 5, 3


def test_marker_and_name_readers_agree_with_protobuf() -> None:
    msg = cla(0, ENDPOINTS, first_port=MARKER_BASE + 300)
    body = msg.SerializeToString(deterministic=True)
    assert first_string(body) == "s0.default"
    assert marker_ids(body, address_pattern("10.0.0.0"), MARKER_BASE) == [300]
    parsed = endpoint_pb2.ClusterLoadAssignment.FromString(body)
    assert parsed.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == (
        MARKER_BASE + 300
    )
    assert marker_ids(body, address_pattern("10.0.0.1"), MARKER_BASE) == []


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[LoadGenGroup]:
    group = await LoadGenGroup.start(1, tmp_path)
    try:
        yield group
    finally:
        await group.close()


async def test_clients_follow_meshd_changes_restart_and_replica(
    etcd: EmbeddedEtcd, tmp_path: Path, clients: LoadGenGroup
) -> None:
    registry = EtcdRegistry(etcd.endpoint)
    key = registry.prefix + "endpoints/default/s0/e0"
    replica: Meshd | None = None
    try:
        revision, _, keys = await seed(registry, SERVICES, ENDPOINTS)
        assert keys == 1 + SERVICES * (1 + ENDPOINTS)
        meshd = Meshd(etcd.endpoint, tmp_path, "meshd")
        try:
            await meshd.wait_ready(revision, timeout=15)
            await clients.add(meshd.target, sotw=20, delta=20)
            done = await clients.wait_complete(10)
            assert done["complete"] == 40, done
            await registry.put(key, marker_value(0))
            times, missing = await clients.wait_change(0, 10)
            assert (len(times), missing) == (40, 0)

            # meshd restarts on the same port: every client reconnects by itself.
            meshd.stop()
            meshd = Meshd(etcd.endpoint, tmp_path, "meshd2", xds_port=meshd.xds_port)
            await meshd.wait_ready(revision, timeout=15)
            await eventually(
                clients.status,
                "the clients to reopen 80 streams",
                10.0,
                until=lambda status: status["streams"] >= 80,
            )
            await registry.put(key, marker_value(1))
            times, missing = await clients.wait_change(1, 10)
            assert (len(times), missing) == (40, 0)

            # Moved to a replica that is already serving, the clients say what they hold
            # (SotW version_info, Delta initial_resource_versions): nothing is sent to them.
            replica = Meshd(etcd.endpoint, tmp_path, "replica")
            await replica.wait_ready(revision + 1, timeout=15)
            await clients.storm([replica.target], spread=0.2)
            reopened = await clients.wait_reopened(10)
            assert reopened["reopened"] == 40, reopened
            await asyncio.sleep(0.5)
            sent = await clients.storm_report()
            assert sent["clients_sent_anything"] == 0, sent
            await registry.put(key, marker_value(2))
            times, missing = await clients.wait_change(2, 10)
            assert (len(times), missing) == (40, 0)
            assert (await clients.status())["complete_clients"] == 40
        finally:
            meshd.stop()
            if replica is not None:
                replica.stop()
    finally:
        await registry.close()


async def test_reconnecting_while_meshd_starts_is_sent_nothing(
    etcd: EmbeddedEtcd, tmp_path: Path, clients: LoadGenGroup
) -> None:
    registry = EtcdRegistry(etcd.endpoint)
    try:
        revision, _, _ = await seed(registry, SERVICES, ENDPOINTS)
        meshd = Meshd(etcd.endpoint, tmp_path, "meshd")
        try:
            await meshd.wait_ready(revision, timeout=15)
            await clients.add(meshd.target, sotw=10, delta=10)
            assert (await clients.wait_complete(10))["complete"] == 20
            await clients.watch()
            # etcd down while meshd restarts: the clients are back before meshd has a snapshot.
            etcd.stop()
            meshd.stop()
            meshd = Meshd(etcd.endpoint, tmp_path, "meshd2", xds_port=meshd.xds_port)
            await eventually(
                clients.status,
                "the clients to reopen 40 streams",
                10.0,
                until=lambda status: status["streams"] >= 40,
            )
            await etcd.start()
            await meshd.wait_ready(revision, timeout=15)
            await asyncio.sleep(0.5)
            sent = await clients.storm_report()
            assert sent["clients_sent_anything"] == 0, sent
        finally:
            meshd.stop()
    finally:
        await registry.close()


async def test_floor_server_serves_the_same_clients(tmp_path: Path, clients: LoadGenGroup) -> None:
    floor = await Floor.start(SERVICES, ENDPOINTS, tmp_path)
    try:
        await clients.add(floor.target, sotw=5, delta=5)
        done = await clients.wait_complete(10)
        assert done["complete"] == 10, done
        for k in (7, 8):
            await floor.send(f"push {k}")
            times, missing = await clients.wait_change(k, 10)
            assert (len(times), missing) == (10, 0)
        await floor.send("churn 3")  # an unrelated cluster: no marker, nothing recorded
        times, missing = await clients.wait_change(9, 0.3)
        assert (len(times), missing) == (0, 10)
    finally:
        await floor.close()


def test_benchmark_registry_is_valid() -> None:
    """Every value the benchmark writes passes meshd's registry.md validation."""
    entries = [*registry_entries(3, 2), ("endpoints/default/s0/e0", json.loads(marker_value(5)))]
    entries.append(churn_key_value(7, 3, 2))
    for key, value in entries:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        _, parsed = parse_entry("/mesh/" + key, raw, "/mesh/")
        assert not isinstance(parsed, Problem), parsed
    assert json.loads(marker_value(5)) == {"address": "10.0.0.0", "port": MARKER_BASE + 5}
