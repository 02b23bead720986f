"""etcd edits that would cut traffic a route sends: the service (or subset) stays in force
as it was, with errors on both keys, until the route changes or the service comes back.
Real etcd and etcdctl, meshd, a real Envoy gateway, meshctl."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from integration.scenario import split_entries
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.meshctl import meshctl
from tests.support.rig import Load, Rig, make_rig

SERVICE = "services/default/web"
ROUTE = "routes/default/web-split"


@pytest.fixture
async def rig(
    tmp_path: Path, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> AsyncIterator[Rig]:
    """The e2e rig (SotW) with meshd's admin API on a free port."""
    async for r in make_rig(tmp_path, envoy_factory, backend_factory, admin="127.0.0.1:0"):
        yield r


STATUS_TIMEOUT = 10.0  # seconds for meshd to write or remove a status entry


async def _errors(rig: Rig) -> dict[str, dict[str, Any]]:
    code, out, err = await meshctl(
        "errors", "-o", "json", "--admin", f"127.0.0.1:{rig.app.admin_port}"
    )
    assert code == 0, err
    return {e["key"].removeprefix(rig.prefix): e for e in json.loads(out)["errors"]}


async def test_etcdctl_delete_of_a_routed_service_keeps_traffic_and_says_why(rig: Rig) -> None:
    assert set(await asyncio.to_thread(rig.counts, 300)) == {"v1", "v2"}
    load = Load(rig.url).start()
    try:
        await asyncio.to_thread(rig.etcdctl, "del", rig.prefix + SERVICE)
        service = await rig.wait_status(SERVICE, present=True, timeout=STATUS_TIMEOUT)
        route = await rig.wait_status(ROUTE, present=True, timeout=STATUS_TIMEOUT)
        await asyncio.sleep(1.0)  # requests keep flowing meanwhile
    finally:
        load.stop()
    assert load.failed == [], load.failed[:5]
    assert load.ok > 50
    assert set(await asyncio.to_thread(rig.counts, 300)) == {"v1", "v2"}
    assert service["last_good_kept"] is True
    assert service["error"].startswith(f"deleted while {ROUTE} still depends on it"), service
    assert route["field"] == "destinations[0].service"
    assert "unknown service default/web in the registry" in route["error"], route
    errors = await _errors(rig)
    assert set(errors) == {SERVICE, ROUTE}, errors
    assert errors[SERVICE]["last_good_kept"] and errors[ROUTE]["last_good_kept"]

    # Put back: the errors clear, nothing was lost.
    web = split_entries(rig.ports["v1"], rig.ports["v2"], rig.ports["listener"])[SERVICE]
    await asyncio.to_thread(rig.put, SERVICE, web)
    await rig.wait_status(SERVICE, present=False, timeout=STATUS_TIMEOUT)
    await rig.wait_status(ROUTE, present=False, timeout=STATUS_TIMEOUT)
    assert await _errors(rig) == {}
    assert rig.rejected() == {}


async def test_etcdctl_dropping_a_routed_subset_keeps_it_until_the_route_changes(
    rig: Rig,
) -> None:
    web = split_entries(rig.ports["v1"], rig.ports["v2"], rig.ports["listener"])[SERVICE]
    only_v1 = {**web, "subsets": {"v1": {"version": "v1"}}}
    await asyncio.to_thread(rig.put, SERVICE, only_v1)
    service = await rig.wait_status(SERVICE, present=True, timeout=STATUS_TIMEOUT)
    route = await rig.wait_status(ROUTE, present=True, timeout=STATUS_TIMEOUT)
    assert service["error"].startswith(f"changed while {ROUTE} still depends on it"), service
    assert route["field"] == "destinations[1].subset"
    assert set(await asyncio.to_thread(rig.counts, 400)) == {"v1", "v2"}  # the 10% still flows

    # The route stops using v2: the service's new value applies, the errors clear.
    v1_only_route = {"listener": "public", "destinations": [{"service": "web", "subset": "v1"}]}
    await asyncio.to_thread(rig.put, ROUTE, v1_only_route)
    await rig.wait_status(SERVICE, present=False, timeout=STATUS_TIMEOUT)
    await rig.wait_status(ROUTE, present=False, timeout=STATUS_TIMEOUT)
    await rig.wait_body("v1")
    assert await _errors(rig) == {}
    assert rig.rejected() == {}
