"""Rig for the behaviour tests: real etcd, meshd, a real Envoy per test, our own backends.

One etcd (the session's ``etcd_shared``) and one meshd (in a background event loop) serve
every behaviour test; each test gets a :class:`Mesh`: its own namespace, listener name and
Envoy node cluster (the listener's ``nodes`` is that cluster alone, so the test's Envoy
gets only its own listener and routes), and its own backends. Everything the test wrote is
deleted at teardown, so tests do not see each other.

Requests go through the real Envoy on a free loopback port; backends are
:class:`~integration.backend.Backend` threads whose behaviour the test controls.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.backend import Backend
from integration.harness import EnvoyProcess, free_port, http_get
from tests.support.fixtures_envoy import EnvoyFactory
from xds_server.app import MeshApp, MeshConfig
from xds_server.cli.bootstrap import bootstrap

T = TypeVar("T")
PREFIX = "/behaviour/"
_numbers = itertools.count(1)


class MeshServer:
    """etcd registry + meshd running in an event loop of their own thread."""

    def __init__(self, etcd: EmbeddedEtcd) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.registry = EtcdRegistry(etcd.endpoint, prefix=PREFIX)
        self.xds_port = free_port()
        self.app = MeshApp(
            self.registry, MeshConfig(xds=f"127.0.0.1:{self.xds_port}", metrics=None)
        )
        self.run(self.app.start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        self.run(self.registry.put(PREFIX + key, json.dumps(value).encode()))

    def delete(self, key: str) -> None:
        self.run(self.registry.delete(PREFIX + key))

    def close(self) -> None:
        self.run(self.app.stop(grace=0.2))
        self.run(self.registry.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="session")
def mesh_server(etcd_shared: EmbeddedEtcd) -> Iterator[MeshServer]:
    """The meshd shared by every behaviour test (on the session's etcd)."""
    server = MeshServer(etcd_shared)
    try:
        yield server
    finally:
        server.close()


@dataclass
class Mesh:
    """One test's slice of the mesh: namespace, listener, Envoy, backends."""

    server: MeshServer
    envoy_factory: EnvoyFactory
    ns: str
    listener: str
    port: int = field(default_factory=free_port)
    envoy: EnvoyProcess | None = None
    keys: list[str] = field(default_factory=list)
    backends: list[Backend] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- registry ------------------------------------------------------------------------

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Write a registry value (key without prefix); deleted at teardown."""
        if key not in self.keys:
            self.keys.append(key)
        self.server.put(key, value)

    def service(self, name: str, **spec: Any) -> None:
        self.put(f"services/{self.ns}/{name}", spec)

    def endpoint(self, service: str, ep_id: str, port: int, **spec: Any) -> None:
        self.put(
            f"endpoints/{self.ns}/{service}/{ep_id}", {"address": "127.0.0.1", "port": port, **spec}
        )

    def route(self, name: str, destinations: list[dict[str, Any]], **spec: Any) -> None:
        self.put(
            f"routes/{self.ns}/{name}",
            {"listener": self.listener, "destinations": destinations, **spec},
        )

    def http_listener(self) -> None:
        self.put(
            f"listeners/{self.listener}",
            {"address": "127.0.0.1", "port": self.port, "nodes": [self.listener]},
        )

    def tcp_listener(self, service: str) -> None:
        self.put(
            f"listeners/{self.listener}",
            {
                "address": "127.0.0.1",
                "port": self.port,
                "protocol": "tcp",
                "service": f"{self.ns}/{service}",
                "nodes": [self.listener],
            },
        )

    # -- processes -----------------------------------------------------------------------

    def backend(self, name: str) -> Backend:
        """A loopback HTTP backend answering ``name`` (stopped at teardown)."""
        b = Backend(name).start()
        self.backends.append(b)
        return b

    def backend_service(self, name: str, count: int = 1, **spec: Any) -> list[Backend]:
        """A service with ``count`` backends ``<name>-<i>`` as its endpoints."""
        backends = [self.backend(f"{name}-{i}") for i in range(count)]
        self.service(name, port=backends[0].port, **spec)
        for i, b in enumerate(backends):
            self.endpoint(name, f"{name}-{i}", b.port)
        return backends

    def start_envoy(self) -> EnvoyProcess:
        """Start this test's Envoy (node cluster = listener name) and wait for its listener."""
        bs = bootstrap(
            f"{self.listener}-node", self.listener, xds_port=self.server.xds_port, admin_port=0
        )
        self.envoy = self.envoy_factory(bs, name=self.listener)
        self.envoy.wait_for(
            lambda: self.envoy is not None and self.envoy.listener_ready(self.listener),
            10.0,
            what="listener",
        )
        return self.envoy

    # -- traffic -------------------------------------------------------------------------

    def get(
        self, path: str = "/", headers: Mapping[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, str, dict[str, str]]:
        """One GET through Envoy: (status, stripped body, headers)."""
        status, body, hdrs = http_get(self.url + path, headers, timeout)
        return status, body.strip(), hdrs

    def request(
        self, method: str, path: str = "/", headers: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        """One request of any method on a fresh connection: (status, stripped body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
        try:
            body = b"" if method in ("POST", "PUT") else None
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace").strip()
        finally:
            conn.close()

    def counts(
        self, n: int, path: str = "/", headers: Mapping[str, str] | None = None
    ) -> Counter[str]:
        """``n`` sequential GETs; count bodies (``HTTP <status>`` for non-200 answers)."""
        out: Counter[str] = Counter()
        for _ in range(n):
            status, body, _ = self.get(path, headers)
            out[body if status == 200 else f"HTTP {status}"] += 1
        return out

    def parallel(self, n: int, workers: int, fn: Callable[[int], T]) -> list[T]:
        """Run ``fn(i)`` for i in range(n) on ``workers`` threads (each its own connection)."""
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, range(n)))

    def wait_answer(self, predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        """Poll until ``predicate`` holds (config pushed, endpoints warmed, ...)."""
        assert self.envoy is not None
        self.envoy.wait_for(predicate, timeout, what=what)

    def wait_body(
        self,
        body: str,
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Until ``path`` answers 200 with ``body``."""

        def ok() -> bool:
            try:
                status, got, _ = self.get(path, headers, timeout=2.0)
            except OSError:
                return False
            return status == 200 and got == body

        self.wait_answer(ok, f"{path} answering {body!r}", timeout)

    def healthy_hosts(self, cluster: str) -> list[int]:
        """Ports of the hosts of ``cluster`` that Envoy would balance to now (healthy per
        EDS, not failing active checks, not ejected)."""
        assert self.envoy is not None
        out = []
        for c in self.envoy.clusters_json().get("cluster_statuses", []):
            if c.get("name") != cluster:
                continue
            for h in c.get("host_statuses", []):
                health = dict(h.get("health_status", {}))
                eds = health.pop("eds_health_status", "HEALTHY")
                if eds == "HEALTHY" and not any(health.values()):
                    out.append(int(h["address"]["socket_address"]["port_value"]))
        return sorted(out)

    def cleanup(self) -> None:
        for key in reversed(self.keys):
            self.server.delete(key)
        for b in self.backends:
            b.stop()


@pytest.fixture
def mesh(
    mesh_server: MeshServer, envoy_factory: EnvoyFactory, request: pytest.FixtureRequest
) -> Iterator[Mesh]:
    """This test's namespace, listener and Envoy on the shared meshd; cleaned up after."""
    n = next(_numbers)
    m = Mesh(mesh_server, envoy_factory, ns=f"b{n}", listener=f"beh{n}")
    try:
        yield m
    finally:
        m.cleanup()


def settle(seconds: float) -> None:
    """Sleep; named so tests say why they wait (an ejection or health interval to pass)."""
    time.sleep(seconds)
