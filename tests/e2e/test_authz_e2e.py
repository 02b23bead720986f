"""Authorization policies on real traffic: real etcd, meshd, Envoy sidecars and a gateway
with mesh certificates over SDS (the rig of :mod:`tests.support.mtls_mesh`).

Two callers, the gateway (``edge``) and the sidecar of ``shop/web``, call ``shop/api``
(strict mTLS, with a sidecar). Checked by what the callers and api's Envoy see:

- with no policy both get 200;
- a ``deny`` policy naming ``shop/web`` written to etcd: web gets Envoy's 403 (within a
  bounded wait), the gateway keeps its 200s, and api's ``rbac.denied`` stat rises;
- the deny replaced by an ``allow`` policy naming only ``gateway:edge``: the gateway keeps
  its 200s, web still gets 403;
- ``meshctl policy check`` agrees with the traffic: deny for ``shop/web``, allow for
  ``gateway:edge``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.meshctl import meshctl
from tests.support.mtls_mesh import Mesh, start_mtls_mesh
from tests.support.wait import eventually

POLICY_WAIT = 10.0  # seconds for a policy edit to reach api's sidecar and hold on traffic
DENIED = "http.inbound|api.shop.rbac.denied"


@pytest.fixture
async def mesh(
    tmp_path: Path, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> AsyncIterator[Mesh]:
    async with start_mtls_mesh(tmp_path, envoy_factory, backend_factory, admin="127.0.0.1:0") as m:
        yield m


async def _put_policy(mesh: Mesh, name: str, value: dict[str, Any]) -> None:
    key = f"{mesh.registry.prefix}policies/shop/{name}"
    await mesh.registry.put(key, json.dumps(value).encode())


async def _status(mesh: Mesh, proxy: str) -> int:
    status, _ = await asyncio.to_thread(mesh.via, proxy, "api.shop")
    return status


async def _until(mesh: Mesh, proxy: str, want: int) -> None:
    """Poll ``proxy -> api.shop`` until it answers ``want``, at most POLICY_WAIT seconds."""
    await eventually(
        lambda: mesh.via(proxy, "api.shop"),
        f"{proxy} -> api.shop answers {want}",
        POLICY_WAIT,
        until=lambda r: r[0] == want,
        blocking=True,
        context=mesh.context,
    )


async def _steady(mesh: Mesh, proxy: str, want: int, n: int = 5) -> None:
    """``n`` requests in a row all answer ``want`` (new connections and pooled ones alike)."""
    statuses = [await _status(mesh, proxy) for _ in range(n)]
    assert statuses == [want] * n, f"{proxy} -> api.shop: {statuses}"


def _rbac_actions(mesh: Mesh) -> list[str]:
    """The RBAC actions (``DENY``, ``ALLOW``) in force on api's inbound routes, in filter
    order: the per-route overrides of its listener's two RBAC filters (the listener itself
    never changes with a policy)."""
    dump = mesh.api.config_dump("dynamic_route_configs")
    overrides: dict[str, Any] = {}
    for entry in dump.get("configs", []):
        config = entry.get("route_config", {})
        if config.get("name") == "inbound|api.shop":
            overrides = config["virtual_hosts"][0].get("typed_per_filter_config", {})
    actions = []
    for name in ("envoy.filters.http.rbac.deny", "envoy.filters.http.rbac.allow"):
        if name in overrides:
            # ALLOW is the enum's default: the JSON dump leaves it out.
            rules = overrides[name].get("rbac", {}).get("rules", {})
            actions.append(rules.get("action", "ALLOW"))
    return actions


def _denied(mesh: Mesh) -> int:
    return mesh.api.stat(DENIED) or 0


async def _check(mesh: Mesh, source: str) -> str:
    """``meshctl policy check --from source --to shop/api``: its first line."""
    code, out, err = await meshctl(
        "policy",
        "check",
        "--from",
        source,
        "--to",
        "shop/api",
        "--admin",
        f"127.0.0.1:{mesh.app.admin_port}",
    )
    assert code == 0, err
    return out.splitlines()[0]


async def test_deny_then_allow_policies_decide_real_traffic_and_meshctl_agrees(
    mesh: Mesh,
) -> None:
    # No policy: both callers get through.
    await mesh.reach("gateway", "api.shop")
    await mesh.reach("web", "api.shop")
    await _steady(mesh, "gateway", 200)
    await _steady(mesh, "web", 200)
    assert await _check(mesh, "shop/web") == "allow"
    denied = _denied(mesh)

    # A deny policy for shop/web: web is refused by api's sidecar, the gateway is not.
    await _put_policy(
        mesh,
        "deny-web",
        {"target": "api", "action": "deny", "from": [{"identities": ["shop/web"]}]},
    )
    await _until(mesh, "web", 403)
    status, body = await asyncio.to_thread(mesh.via, "web", "api.shop")
    assert (status, body) == (403, "RBAC: access denied")
    await _steady(mesh, "web", 403)
    await _steady(mesh, "gateway", 200)
    assert _denied(mesh) > denied, mesh.api.stats("rbac")
    assert _rbac_actions(mesh) == ["DENY"]
    assert await _check(mesh, "shop/web") == "deny"
    assert await _check(mesh, "gateway:edge") == "allow"

    # Replaced by an allow-only policy naming the gateway: still only the gateway passes.
    await _put_policy(
        mesh,
        "allow-gateway",
        {"target": "api", "action": "allow", "from": [{"identities": ["gateway:edge"]}]},
    )
    await mesh.registry.delete(f"{mesh.registry.prefix}policies/shop/deny-web")
    # The deny is gone from api's sidecar: a 403 from now on comes from the allow policy.
    await eventually(
        lambda: _rbac_actions(mesh),
        "api's inbound routes with only the ALLOW override",
        POLICY_WAIT,
        until=lambda a: a == ["ALLOW"],
        blocking=True,
        context=mesh.context,
    )
    denied = _denied(mesh)
    await _until(mesh, "gateway", 200)
    await _steady(mesh, "gateway", 200)
    await _steady(mesh, "web", 403)
    assert _denied(mesh) >= denied + 5, mesh.api.stats("rbac")
    assert await _check(mesh, "shop/web") == "deny"
    assert await _check(mesh, "gateway:edge") == "allow"
