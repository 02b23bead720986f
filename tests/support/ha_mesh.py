"""The high-availability rig: a three-member etcd cluster, a real ``meshd`` process on it,
two Envoy gateways (each with its own listener), two backends, and helpers to change
routes and see what each Envoy serves.

The registry: service ``default/web`` (subsets v1 and v2), listeners ``edge-a`` (nodes of
cluster ``gw-a``) and ``edge-b`` (``gw-b``), route ``default/web`` sending ``/`` to v1.
:meth:`HaMesh.route` adds a route ``/<name>`` to v2: an Envoy answers ``v2`` on that path
once it holds the route, ``v1`` before.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.etcd import EtcdRegistry
from integration.harness import EnvoyProcess, free_port, http_get
from tests.support.etcd_cluster import EtcdCluster
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.metrics import scrape
from tests.support.wait import eventually
from xds_server.cli.bootstrap import bootstrap

_EXE = Path(sys.executable).with_name("meshd")
MESHD = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "xds_server.cli.meshd"]


def route_value(path: str, subset: str) -> dict[str, Any]:
    """A route on every listener sending the prefix ``path`` to ``web``'s ``subset``."""
    return {
        "listener": "*",
        "match": {"prefix": path},
        "destinations": [{"service": "web", "subset": subset, "weight": 100}],
    }


@dataclass
class HaMesh:
    cluster: EtcdCluster
    writer: EtcdRegistry
    """A client of the cluster of the test's own (as etcdctl would be), not meshd's."""
    meshd: subprocess.Popen[bytes]
    log_path: Path
    admin: str
    metrics_port: int
    envoys: dict[str, EnvoyProcess]
    urls: dict[str, str]
    """Envoy name -> base URL of its listener."""
    written: dict[str, float] = field(default_factory=dict)
    """Route name -> time.monotonic() its write succeeded."""

    def log(self) -> str:
        """meshd's output so far."""
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """An unlabelled sample of meshd's /metrics."""
        return scrape(self.metrics_port)[(name, ())]

    async def route(self, name: str, subset: str = "v2") -> float:
        """Write route ``name`` (``/<name>`` to ``subset``); when the write succeeded."""
        await self.writer.put(
            f"/mesh/routes/default/{name}", json.dumps(route_value(f"/{name}", subset)).encode()
        )
        self.written[name] = done = time.monotonic()
        return done

    def serves(self, envoy: str, name: str, subset: str = "v2") -> bool:
        """Does ``envoy`` answer ``subset`` on ``/<name>`` (it holds that route)?"""
        status, body, _ = http_get(self.urls[envoy] + name, timeout=2)
        return status == 200 and body.strip() == subset

    async def wait_served(self, names: list[str], timeout: float) -> float:
        """Until both Envoys serve every route of ``names``; when they did."""

        def missing() -> list[tuple[str, str]]:
            return [(e, n) for n in names for e in self.urls if not self.serves(e, n)]

        await eventually(
            missing,
            f"both Envoys to serve {names}",
            timeout,
            until=lambda m: not m,
            blocking=True,
            interval=0.05,
        )
        return time.monotonic()


async def start_ha_mesh(
    tmp_path: Path,
    envoy_factory: EnvoyFactory,
    backend_factory: BackendFactory,
    *,
    meshd_endpoints: str | None = None,
) -> AsyncIterator[HaMesh]:
    """Start it all (``meshd --etcd meshd_endpoints``, default every member); stop it after."""
    cluster = EtcdCluster(tmp_path / "etcd")
    await cluster.start()
    writer = EtcdRegistry(cluster.endpoints, timeout=1.0)
    meshd: subprocess.Popen[bytes] | None = None
    try:
        v1, v2 = backend_factory("v1"), backend_factory("v2")
        port = {
            name: int(b.url.rstrip("/").rsplit(":", 1)[1]) for name, b in (("v1", v1), ("v2", v2))
        }
        listeners = {"a": free_port(), "b": free_port()}
        entries: dict[str, Any] = {
            "services/default/web": {
                "protocol": "http",
                "port": port["v1"],
                "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}},
            },
            **{
                f"endpoints/default/web/{v}": {
                    "address": "127.0.0.1",
                    "port": port[v],
                    "labels": {"version": v},
                }
                for v in ("v1", "v2")
            },
            **{
                f"listeners/edge-{x}": {"address": "127.0.0.1", "port": p, "nodes": [f"gw-{x}"]}
                for x, p in listeners.items()
            },
            "routes/default/web": route_value("/", "v1"),
        }
        for key, value in entries.items():
            await writer.put("/mesh/" + key, json.dumps(value).encode())
        xds, admin, metrics = free_port(), free_port(), free_port()
        log_path = tmp_path / "meshd.log"
        with log_path.open("wb") as log:
            meshd = subprocess.Popen(
                [
                    *MESHD,
                    "--etcd",
                    meshd_endpoints or cluster.endpoints,
                    "--data-dir",
                    str(tmp_path / "meshd"),
                    "--xds",
                    f"127.0.0.1:{xds}",
                    "--admin",
                    f"127.0.0.1:{admin}",
                    "--metrics",
                    f"127.0.0.1:{metrics}",
                    "--grace",
                    "0.2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            assert meshd is not None and meshd.poll() is None, log_path.read_text()
            return "meshd ready" in log_path.read_text()

        await eventually(ready, "meshd ready", 30, interval=0.1)
        envoys = {}
        urls = {}
        for x, p in listeners.items():
            bs = bootstrap(f"gw-{x}-1", f"gw-{x}", xds_port=xds, admin_port=0)
            envoys[x] = await asyncio.to_thread(envoy_factory, bs, name=f"gw-{x}")
            urls[x] = f"http://127.0.0.1:{p}/"
        mesh = HaMesh(cluster, writer, meshd, log_path, f"127.0.0.1:{admin}", metrics, envoys, urls)

        def answering() -> bool:
            return all(http_get(u, timeout=2)[1].strip() == "v1" for u in urls.values())

        await eventually(answering, "both Envoys to answer v1", 15, blocking=True, interval=0.05)
        yield mesh
    finally:
        if meshd is not None and meshd.poll() is None:
            meshd.terminate()
            try:
                meshd.wait(10)
            except subprocess.TimeoutExpired:
                meshd.kill()
                meshd.wait()
        await writer.close()
        cluster.stop()
