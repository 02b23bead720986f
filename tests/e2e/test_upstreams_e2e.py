"""A sidecar whose service declares ``upstreams``, through real etcd, meshd and a real Envoy
(ADS state-of-the-world, then Delta): it reaches its upstreams and gets 404 for every other
service, its clusters are only what it needs (the upstreams', and what a route on its
listener sends to), and an edit of the declaration moves both within seconds. A gateway
beside it still reaches every service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import EnvoyProcess, free_port, http_get
from integration.scenario import seed
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.wait import eventually
from xds_server.app import MeshApp, MeshConfig
from xds_server.cli.bootstrap import bootstrap

SERVICES = ("cart", "stock", "search")  # in shop; card in pay


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def _clusters(envoy: EnvoyProcess) -> set[str]:
    """The clusters Envoy holds from meshd (CDS), by name."""
    statuses = envoy.clusters_json().get("cluster_statuses", [])
    return {str(c["name"]) for c in statuses if c.get("added_via_api")}


def _get(envoy_port: int, host: str) -> tuple[int, str]:
    status, body, _ = http_get(f"http://127.0.0.1:{envoy_port}/", {"Host": host})
    return status, body.strip()


class Mesh:
    def __init__(self, registry: EtcdRegistry, ports: dict[str, int]) -> None:
        self.registry, self.ports = registry, ports

    async def put(self, key: str, value: dict[str, Any]) -> None:
        await seed(self.registry, {key: value})


@pytest.fixture(params=["sotw", "delta"])
async def mesh(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    envoy_factory: EnvoyFactory,
    backend_factory: BackendFactory,
) -> AsyncIterator[tuple[Mesh, EnvoyProcess, EnvoyProcess]]:
    etcd = EmbeddedEtcd(tmp_path / "etcd", unsafe_no_fsync=True, auto_compaction_retention=None)
    await etcd.start()
    registry = EtcdRegistry(etcd.endpoint)
    backends = {name: backend_factory(name) for name in (*SERVICES, "card")}
    ports = {"out": free_port(), "public": free_port(), "xds": free_port()}
    entries: dict[str, dict[str, Any]] = {
        "services/shop/front": {"port": 8080, "upstreams": ["cart", "pay/*"]},
        "listeners/out": {"address": "127.0.0.1", "port": ports["out"], "nodes": ["*.shop"]},
        "listeners/public": {
            "address": "127.0.0.1",
            "port": ports["public"],
            "nodes": ["gateway"],
        },
        # A route on the sidecar's listener to a service it does not declare: the route
        # works, and that service's cluster comes with it (its default host does not).
        "routes/shop/find": {
            "listener": "out",
            "hosts": ["find.local"],
            "destinations": [{"service": "search"}],
        },
    }
    for name, backend in backends.items():
        ns = "pay" if name == "card" else "shop"
        entries[f"services/{ns}/{name}"] = {"port": _port(backend.url)}
        entries[f"endpoints/{ns}/{name}/e1"] = {"address": "127.0.0.1"}
    await seed(registry, entries)
    app = MeshApp(registry, MeshConfig(xds=f"127.0.0.1:{ports['xds']}", metrics=None))
    await app.start()
    delta = request.param == "delta"
    sidecar_bs = bootstrap(
        "front-1", "front.shop", xds_port=ports["xds"], admin_port=0, delta=delta
    )
    gateway_bs = bootstrap("gw-1", "gateway", xds_port=ports["xds"], admin_port=0, delta=delta)
    sidecar = await asyncio.to_thread(envoy_factory, sidecar_bs, name="front")
    gateway = await asyncio.to_thread(envoy_factory, gateway_bs, name="gateway")
    try:
        yield Mesh(registry, ports), sidecar, gateway
    finally:
        await app.stop(grace=0.2)
        await registry.close()
        etcd.stop()


async def _answers(port: int, host: str, want: tuple[int, str], what: str) -> None:
    async def check() -> bool:
        return await asyncio.to_thread(_get, port, host) == want

    await eventually(check, what, 10, interval=0.1)


async def test_a_sidecar_reaches_its_upstreams_only(
    mesh: tuple[Mesh, EnvoyProcess, EnvoyProcess],
) -> None:
    m, sidecar, gateway = mesh
    out = m.ports["out"]
    await _answers(out, "cart.shop", (200, "cart"), "the sidecar's upstream")
    assert await asyncio.to_thread(_get, out, "card.pay") == (200, "card")  # (ns/*)
    assert await asyncio.to_thread(_get, out, "find.local") == (200, "search")  # (a route)
    for host in ("stock.shop", "search.shop", "front.shop"):
        status, _ = await asyncio.to_thread(_get, out, host)
        assert status == 404, host
    # Its CDS holds what it needs and nothing else.
    assert await asyncio.to_thread(_clusters, sidecar) == {"cart.shop", "card.pay", "search.shop"}
    # A gateway sees every service, as before.
    public = m.ports["public"]
    await _answers(public, "stock.shop", (200, "stock"), "the gateway's default host")
    assert {"cart.shop", "stock.shop", "search.shop", "card.pay", "front.shop"} <= (
        await asyncio.to_thread(_clusters, gateway)
    )

    # The declaration edited: the sidecar follows (same route configuration name on the
    # wire, another content), and a new service of a declared namespace comes by itself.
    await m.put("services/shop/front", {"port": 8080, "upstreams": ["stock", "pay/*"]})
    await _answers(out, "stock.shop", (200, "stock"), "the new upstream")
    await _answers(out, "cart.shop", (404, ""), "the dropped upstream refused")

    async def cds_follows() -> bool:
        return await asyncio.to_thread(_clusters, sidecar) == {
            "stock.shop",
            "card.pay",
            "search.shop",
        }

    await eventually(cds_follows, "its CDS without cart", 10, interval=0.1)
    await m.put("services/pay/bank", {"port": 8080})
    await eventually(
        lambda: "bank.pay" in _clusters(sidecar), "a new service of pay/*", 10, blocking=True
    )
    # Envoy took everything it was sent.
    for envoy in (sidecar, gateway):
        rejected = {k: v for k, v in envoy.stats(r"update_rejected$").items() if v}
        assert rejected == {}, rejected
