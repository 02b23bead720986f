"""The mTLS rig of the e2e tests: real etcd, meshd with its own CA, and Envoy sidecars of
``shop/api``, ``shop/web`` and ``shop/legacy`` (permissive) plus a gateway (``edge``) on one
loopback host, the namespace ``shop`` strict by default, certificates over SDS.

Used by ``tests/e2e/test_mtls_e2e.py`` and ``tests/e2e/test_authz_e2e.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.etcd import EtcdRegistry
from integration.harness import EnvoyProcess, free_port, http_get
from integration.scenario import seed
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.fixtures_etcd import start_test_etcd
from tests.support.wait import eventually
from xds_server.app import MeshApp, MeshConfig
from xds_server.cli.bootstrap import bootstrap

TD = "mesh.local"
WAIT = 20.0  # seconds: certificates issued, pushed and the listeners warmed, on a busy box


@dataclass
class Mesh:
    gateway: EnvoyProcess
    api: EnvoyProcess
    web: EnvoyProcess
    legacy: EnvoyProcess
    ports: dict[str, int]
    app: MeshApp
    registry: EtcdRegistry

    def via(self, proxy: str, host: str, path: str = "/__echo") -> tuple[int, str]:
        """GET through ``proxy``'s outbound listener with ``Host: host``."""
        port = self.ports[f"{proxy}_out"]
        status, body, _ = http_get(f"http://127.0.0.1:{port}{path}", headers={"host": host})
        return status, body

    async def reach(self, proxy: str, host: str) -> str:
        """Wait until ``proxy`` gets a 200 from ``host``; return the body."""
        _, body = await eventually(
            lambda: self.via(proxy, host),
            f"{proxy} -> {host} over mTLS",
            WAIT,
            until=lambda r: r[0] == 200,
            blocking=True,
            context=self.context,
        )
        return body

    def context(self) -> str:
        """What the proxies hold, for a failure message: secrets and listeners in force."""
        out = []
        for envoy in (self.gateway, self.api, self.web, self.legacy):
            dump = envoy.config_dump()
            secrets = [
                s.get("name")
                for c in dump.get("configs", [])
                for s in c.get("dynamic_active_secrets", [])
            ]
            warming = [
                w.get("name")
                for c in dump.get("configs", [])
                for w in c.get("dynamic_listeners", [])
                if "warming_state" in w
            ]
            out.append(f"{envoy.name}: secrets {secrets}, warming listeners {warming}")
        return "; ".join(out)


@asynccontextmanager
async def start_mtls_mesh(
    tmp_path: Path,
    envoy_factory: EnvoyFactory,
    backend_factory: BackendFactory,
    *,
    admin: str | None = None,
) -> AsyncIterator[Mesh]:
    """The rig, torn down on exit; ``admin`` (e.g. ``127.0.0.1:0``) also serves meshd's
    admin API (``mesh.app.admin_port``)."""
    etcd = start_test_etcd(tmp_path / "etcd")
    registry = EtcdRegistry(etcd.endpoint)
    api_app, web_app, legacy_app = (backend_factory(n) for n in ("api", "web", "legacy"))

    def port_of(url: str) -> int:
        return int(url.rstrip("/").rsplit(":", 1)[1])

    ports = {
        "api_in": free_port(),
        "web_in": free_port(),
        "legacy_in": free_port(),
        "gateway_out": free_port(),
        "web_out": free_port(),
        "api_app": port_of(api_app.url),
    }
    entries: dict[str, dict[str, Any]] = {
        "namespaces/shop": {"mtls": "strict"},
        "services/shop/api": {
            "port": ports["api_in"],
            "sidecar": {"inbound_port": ports["api_in"], "app_port": port_of(api_app.url)},
        },
        "endpoints/shop/api/a1": {"address": "127.0.0.1"},
        "services/shop/web": {
            "port": ports["web_in"],
            "sidecar": {"inbound_port": ports["web_in"], "app_port": port_of(web_app.url)},
        },
        "endpoints/shop/web/w1": {"address": "127.0.0.1"},
        "services/shop/legacy": {
            "port": ports["legacy_in"],
            "mtls": "permissive",
            "sidecar": {"inbound_port": ports["legacy_in"], "app_port": port_of(legacy_app.url)},
        },
        "endpoints/shop/legacy/l1": {"address": "127.0.0.1"},
        # An impostor: "pay" resolves to web's sidecar, which holds web's certificate.
        "services/shop/pay": {"port": ports["web_in"]},
        "endpoints/shop/pay/p1": {"address": "127.0.0.1"},
        "listeners/edge": {"port": ports["gateway_out"], "nodes": ["edge"]},
        "listeners/web-out": {"port": ports["web_out"], "nodes": ["web.shop"]},
    }
    await seed(registry, entries)
    xds_port = free_port()
    app = MeshApp(
        registry,
        MeshConfig(
            xds=f"127.0.0.1:{xds_port}",
            metrics=None,
            data_dir=str(tmp_path / "data"),
            admin=admin,
        ),
    )
    await app.start()
    try:
        started: list[EnvoyProcess] = []
        proxies = (
            ("gateway", "edge"),
            ("api", "api.shop"),
            ("web", "web.shop"),
            ("legacy", "legacy.shop"),
        )
        for name, cluster in proxies:
            bs = bootstrap(f"{name}-1", cluster, xds_port=xds_port, admin_port=0)
            started.append(await asyncio.to_thread(envoy_factory, bs, name=name, timeout=WAIT))
        gateway, api, web, legacy = started
        yield Mesh(gateway, api, web, legacy, ports=ports, app=app, registry=registry)
    finally:
        await app.stop(grace=0.2)
        await registry.close()
        etcd.stop()
