"""Endpoints given as DNS names: resolved by meshd, published as addresses, errors reported."""

from __future__ import annotations

import asyncio
import json

from envoy.config.endpoint.v3 import endpoint_pb2

from adapters.dns import DnsCache, ResolveFn, system_resolve
from adapters.memory import MemoryRegistry
from tests.support.wait import eventually
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


async def _status(registry: MemoryRegistry, key: str, present: bool) -> dict[str, object]:
    entry = await eventually(
        lambda: registry.get(key),
        f"{key} to be {'present' if present else 'gone'}",
        3.0,
        until=lambda entry: (entry is not None) == present,
        interval=0.01,
    )
    return json.loads(entry.value) if entry else {}


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
        await eventually(
            lambda: _addresses_or_none(cache),
            "web's addresses in EDS",
            3.0,
            until=lambda got: got == ["10.1.0.1", "10.1.0.2"],
            interval=0.01,
        )
        status_key = "/mesh/status/errors/endpoints/default/web/b"
        status = await _status(registry, status_key, present=True)
        assert status["field"] == "address"
        assert "gone.internal does not resolve" in status["error"]
        # The name starts resolving: its address is published and the error clears.
        table["gone.internal"] = ("10.2.0.9",)
        dns.refresh_s = 0.05
        dns._wake.set()
        await eventually(
            lambda: _addresses_or_none(cache),
            "10.2.0.9 in EDS",
            3.0,
            until=lambda got: "10.2.0.9" in (got or []),
            interval=0.01,
        )
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
        await eventually(
            lambda: _addresses_or_none(cache),
            "127.0.0.1 in EDS",
            3.0,
            until=lambda got: "127.0.0.1" in (got or []),
            interval=0.01,
        )
    finally:
        task.cancel()
        resolver.cancel()
