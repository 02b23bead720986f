"""Endpoints given as DNS names: resolved by meshd, published as addresses, errors reported."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from envoy.config.endpoint.v3 import endpoint_pb2

from adapters.dns import DnsCache, ResolveFn, system_resolve
from adapters.memory import MemoryRegistry
from xds_server.cache import ConfigCache
from xds_server.ingest.controller import Controller
from xds_server.ingest.inputs import DnsAnswers
from xds_server.metrics import Metrics
from xds_server.resources import ENDPOINT


def _addresses(cache: ConfigCache, name: str) -> list[str]:
    res = cache.get(ENDPOINT, name)
    assert res is not None
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(res.any.value)
    return sorted(
        lb.endpoint.address.socket_address.address for g in cla.endpoints for lb in g.lb_endpoints
    )


async def _until(predicate: Callable[[], object], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def _status(registry: MemoryRegistry, key: str, present: bool) -> dict[str, object]:
    for _ in range(300):
        entry = await registry.get(key)
        if (entry is not None) == present:
            return json.loads(entry.value) if entry else {}
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} never became present={present}")


def _controller(
    registry: MemoryRegistry, cache: ConfigCache, resolve: ResolveFn = system_resolve
) -> tuple[Controller, DnsCache]:
    """A controller fed by a resolver, wired as meshd's composition root does."""
    dns = DnsCache(lambda names: ctl.submit(DnsAnswers(names)), resolve=resolve)
    ctl = Controller(registry, cache, Metrics(), dns=dns)
    return ctl, dns


async def test_names_resolve_and_unresolvable_names_are_reported() -> None:
    table: dict[str, tuple[str, ...]] = {"web.internal": ("10.1.0.1", "10.1.0.2")}

    async def resolve(name: str) -> tuple[str, ...]:
        if name not in table:
            raise OSError(f"[Errno -2] Name or service not known: {name}")
        return table[name]

    registry = MemoryRegistry()
    cache = ConfigCache()
    ctl, dns = _controller(registry, cache, resolve)
    await registry.put("/mesh/services/default/web", json.dumps({"port": 80}).encode())
    await registry.put(
        "/mesh/endpoints/default/web/a", json.dumps({"address": "web.internal"}).encode()
    )
    await registry.put(
        "/mesh/endpoints/default/web/b", json.dumps({"address": "gone.internal"}).encode()
    )
    task = asyncio.create_task(ctl.run())
    resolver = asyncio.create_task(dns.run())
    try:
        await _until(lambda: _addresses_or_none(cache) == ["10.1.0.1", "10.1.0.2"])
        status_key = "/mesh/status/errors/endpoints/default/web/b"
        status = await _status(registry, status_key, present=True)
        assert status["field"] == "address"
        assert "gone.internal does not resolve" in status["error"]
        # The name starts resolving: its address is published and the error clears.
        table["gone.internal"] = ("10.2.0.9",)
        dns.refresh_s = 0.05
        dns._wake.set()
        await _until(lambda: "10.2.0.9" in (_addresses_or_none(cache) or []))
        await _status(registry, status_key, present=False)
    finally:
        task.cancel()
        resolver.cancel()


def _addresses_or_none(cache: ConfigCache) -> list[str] | None:
    return _addresses(cache, "web.default") if cache.get(ENDPOINT, "web.default") else None


async def test_localhost_resolves_with_the_system_resolver() -> None:
    registry = MemoryRegistry()
    cache = ConfigCache()
    ctl, dns = _controller(registry, cache)
    await registry.put("/mesh/services/default/web", json.dumps({"port": 80}).encode())
    await registry.put(
        "/mesh/endpoints/default/web/a", json.dumps({"address": "localhost"}).encode()
    )
    task = asyncio.create_task(ctl.run())
    resolver = asyncio.create_task(dns.run())
    try:
        await _until(lambda: "127.0.0.1" in (_addresses_or_none(cache) or []))
    finally:
        task.cancel()
        resolver.cancel()
