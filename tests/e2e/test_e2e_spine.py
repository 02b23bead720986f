"""Issue 2 acceptance with real etcd, real Envoy and meshd: split, live change, bad input,
meshd restart under load, etcd outage. Envoy must never NACK anything meshd sends."""

from __future__ import annotations

import asyncio
import json

from integration.scenario import split_route
from tests.support.rig import Load, Rig


async def test_split_90_10_and_live_change_through_etcdctl(rig: Rig) -> None:
    counts = await asyncio.to_thread(rig.counts, 2000)
    share = counts.get("v2", 0) / 2000
    # Envoy picks each request's cluster at random: v2's count is binomial (n=2000, p=0.1),
    # sd 0.67 points. +-3 points is 4.5 sd (a false failure about once in 150,000 runs;
    # +-2.5 points, 3.7 sd, failed once in CI), and still fails any other split.
    assert 0.07 <= share <= 0.13, counts
    assert set(counts) == {"v1", "v2"}, counts
    await asyncio.to_thread(rig.put, "routes/default/web-split", split_route(0, 100))
    await rig.wait_body("v2", timeout=5)
    counts = await asyncio.to_thread(rig.counts, 200)
    assert counts == {"v2": 200}
    assert rig.rejected() == {}


STATUS_TIMEOUT = 5.0  # seconds for meshd to write or remove a status entry


BAD_INPUTS: list[tuple[str, bytes, str, str]] = [
    ("routes/default/web-split", b'{"listener": "public", "destinations": [', "", "invalid JSON"),
    (
        "routes/default/web-split",
        json.dumps(
            {"listener": "public", "destinations": [{"service": "web", "wieght": 10}]}
        ).encode(),
        "destinations[0].wieght",
        "did you mean 'weight'",
    ),
    (
        "routes/default/web-split",
        json.dumps({"listener": "public", "destinations": [{"service": "nope"}]}).encode(),
        "destinations[0].service",
        "unknown service default/nope",
    ),
    (
        "routes/default/web-split",
        json.dumps(
            {"listener": "public", "destinations": [{"service": "web", "subset": "v9"}]}
        ).encode(),
        "destinations[0].subset",
        "no subset 'v9'",
    ),
    ("listeners/public", json.dumps({"port": 70000}).encode(), "port", "at most 65535"),
    (
        "routes/default/web-split",
        json.dumps({"listener": "public", "pad": "x" * (1200 * 1024)}).encode(),
        "",
        "over the 1 MiB limit",
    ),
]


async def test_bad_input_keeps_traffic_and_reports_then_clears(rig: Rig) -> None:
    before = await asyncio.to_thread(rig.counts, 400)
    assert before.get("v2", 0) > 0
    good_route = split_route(90, 10)
    good_listener = {"address": "127.0.0.1", "port": rig.ports["listener"], "nodes": ["*"]}
    for key, value, field, reason in BAD_INPUTS:
        await asyncio.to_thread(rig.put, key, value)
        status = await rig.wait_status(key, present=True, timeout=STATUS_TIMEOUT)
        assert status["key"] == rig.prefix + key
        assert status["field"] == field
        assert reason in str(status["error"]), status
        assert status["last_good_kept"] is True
        # Traffic untouched: the split still serves both versions, nothing fails.
        counts = await asyncio.to_thread(rig.counts, 300)
        assert set(counts) == {"v1", "v2"}, (key, counts)
        good = good_route if key.startswith("routes/") else good_listener
        await asyncio.to_thread(rig.put, key, good)
        await rig.wait_status(key, present=False, timeout=STATUS_TIMEOUT)
    assert rig.rejected() == {}


def _updates(rig: Rig) -> dict[str, int]:
    """Envoy's count of accepted updates per subscription (CDS, LDS, each RDS and EDS)."""
    return {k: v for k, v in rig.envoy.stats().items() if k.endswith("update_success")}


async def test_meshd_restart_drops_no_request_and_sends_no_new_version(rig: Rig) -> None:
    await asyncio.to_thread(rig.counts, 50)
    before = _updates(rig)
    load = Load(rig.url).start()
    try:
        await asyncio.sleep(0.3)
        await rig.restart_meshd(down_for=0.5)
        await asyncio.to_thread(
            rig.envoy.wait_for,
            lambda: (
                rig.envoy.stat("control_plane.connected_state") == 1
                and len(rig.app.streams.connections) == 1
            ),
            10,
            "envoy reconnected",
        )
        await asyncio.sleep(0.5)
    finally:
        load.stop()
    assert load.failed == [], load.failed[:5]
    assert load.ok > 100
    assert _updates(rig) == before
    (conn,) = rig.app.streams.connections.values()
    assert {s.state for s in conn.stream.types.values()} == {"SYNCED"}
    # Nothing was sent on the new stream: every type was current on arrival.
    assert all(s.nonce == "" for s in conn.stream.types.values())
    assert rig.rejected() == {}


async def test_etcd_outage_keeps_config_and_later_changes_arrive(rig: Rig) -> None:
    rig.etcd.stop()
    await asyncio.sleep(3)
    counts = await asyncio.to_thread(rig.counts, 200)
    assert set(counts) == {"v1", "v2"}, counts
    await rig.etcd.restart()
    await asyncio.to_thread(rig.put, "routes/default/web-split", split_route(0, 1))
    await rig.wait_body("v2", timeout=10)
    assert rig.rejected() == {}
