"""A WebSocket through two sidecars, with real Envoys and a real ``websockets`` client.

The mesh's path for a call between services: the caller's application talks plaintext to
its own sidecar's outbound listener (``web-out``, on the sidecar of ``shop/web``), whose
route (here with ``websocket``) picks ``shop/api``; that sidecar calls api's sidecar
inbound listener over mTLS (namespace ``shop`` is strict), whose one route forwards to the
application. Both hops must let the upgrade through: the outbound route because the route
says so, the inbound route because it always does for ``http`` services. The application
is the test backend's ``/__ws`` echo. The rig is :mod:`tests.support.mtls_mesh`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from integration.harness import EnvoyProcess
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.mtls_mesh import WAIT, Mesh, start_mtls_mesh
from tests.support.wait import eventually
from tests.support.ws_client import upgrades

MESSAGES = 400
ROUTE_TIMEOUT_MS = 3_000
"""The outbound route's timeout: the held connection must outlast it (and its edit's), which
takes seconds where Envoy's default (15 s) would take the whole 15."""
OUT = "web-out"  # the outbound listener of web's sidecar (its HTTP stat prefix too)
INBOUND = "inbound|api.shop"  # api's sidecar inbound listener and route configuration
WS_ROUTE: dict[str, Any] = {
    "listener": OUT,
    "match": {"prefix": "/__ws"},
    "destinations": [{"service": "api"}],
    "websocket": True,
    "timeout_ms": ROUTE_TIMEOUT_MS,
}


@pytest.fixture
async def mesh(
    tmp_path: Path, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> AsyncIterator[Mesh]:
    async with start_mtls_mesh(tmp_path, envoy_factory, backend_factory) as m:
        yield m


async def _put(mesh: Mesh, key: str, value: dict[str, Any]) -> None:
    await mesh.registry.put(mesh.registry.prefix + key, json.dumps(value).encode())


def _stat(envoy: EnvoyProcess, suffix: str) -> int:
    """The sum of ``envoy``'s stats whose name ends with ``suffix``."""
    return sum(v for k, v in envoy.stats().items() if k.endswith(suffix))


def _rds_updates(envoy: EnvoyProcess, config: str) -> int:
    """Route configurations named ``config`` that ``envoy`` accepted so far."""
    return _stat(envoy, f"rds.{config}.update_success")


def _upgrades_active(mesh: Mesh) -> tuple[int, int]:
    """Upgraded connections open now on web's outbound and api's inbound listener."""
    return (
        _stat(mesh.web, f"http.{OUT}.downstream_cx_upgrades_active"),
        _stat(mesh.api, f"http.{INBOUND}.downstream_cx_upgrades_active"),
    )


async def test_websocket_through_outbound_and_inbound_sidecars_holds_through_route_edits(
    mesh: Mesh,
) -> None:
    await mesh.reach("web", "api.shop")  # (mesh certificates in force on both sidecars)
    await _put(mesh, "routes/shop/ws", WS_ROUTE)
    # The same path without ``websocket`` (selected by a header): the caller's sidecar
    # refuses the upgrade, whatever api's inbound route allows.
    await _put(
        mesh,
        "routes/shop/no-ws",
        {**WS_ROUTE, "websocket": False, "match": {"prefix": "/__ws", "headers": {"x-no": "1"}}},
    )
    url = f"ws://127.0.0.1:{mesh.ports['web_out']}/__ws"

    async def connects(headers: dict[str, str] | None = None) -> bool:
        return await upgrades(url, headers)

    await eventually(connects, "a WebSocket through web's and api's sidecars", WAIT, until=bool)
    assert not await connects({"x-no": "1"}), "a route without websocket let an upgrade through"

    out_before = _rds_updates(mesh.web, OUT)
    in_before = _rds_updates(mesh.api, INBOUND)
    started = time.monotonic()
    async with websockets.connect(url, open_timeout=5) as ws:
        for i in range(MESSAGES):
            sent = f"message {i} " + "x" * (i % 200)
            await ws.send(sent)
            assert await ws.recv() == sent, i
            if i == 0:
                # One connection upgraded on each sidecar: the path is web's outbound
                # listener, then api's inbound listener, not a shortcut to the backend.
                assert await asyncio.to_thread(_upgrades_active, mesh) == (1, 1)
            if i == 100:  # the caller's route edited: its own timeout
                await _put(mesh, "routes/shop/ws", {**WS_ROUTE, "timeout_ms": 4_000})
                await eventually(
                    lambda: _rds_updates(mesh.web, OUT),
                    "the outbound route edit in web's sidecar",
                    WAIT,
                    until=lambda n: n > out_before,
                    blocking=True,
                )
            if i == 200:  # api's inbound route configuration edited: a policy admits web
                await _put(
                    mesh,
                    "policies/shop/allow-web",
                    {"target": "api", "action": "allow", "from": [{"identities": ["shop/web"]}]},
                )
                await eventually(
                    lambda: _rds_updates(mesh.api, INBOUND),
                    "the inbound route edit in api's sidecar",
                    WAIT,
                    until=lambda n: n > in_before,
                    blocking=True,
                )
            # Paced to outlast the outbound route's timeout, before and after its edit: an
            # upgraded stream must not be cut by it.
            await asyncio.sleep(0.016)
        held = time.monotonic() - started
        await ws.ping()
    assert held > 4 + 1, held
    # Both edits took, and the connection outlived them; a new one still upgrades.
    assert _rds_updates(mesh.web, OUT) > out_before
    assert _rds_updates(mesh.api, INBOUND) > in_before
    assert await connects()
