"""End-to-end rig: real etcd + in-process meshd + real Envoy gateway + two backends."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.etcd import EmbeddedEtcd, EtcdRegistry, find_etcd_binary
from integration.harness import EnvoyProcess, count_bodies, free_port, http_get
from integration.scenario import seed, split_entries
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.wait import eventually
from xds_server.app import MeshApp, MeshConfig
from xds_server.cli.bootstrap import bootstrap


@dataclass
class Rig:
    etcd: EmbeddedEtcd
    registry: EtcdRegistry
    app: MeshApp
    xds_port: int
    envoy: EnvoyProcess
    url: str
    ports: dict[str, int]
    tmp: Path
    prefix: str = "/mesh/"

    def etcdctl(self, *args: str, stdin: bytes | None = None) -> str:
        """Run the real etcdctl against the rig's etcd (values via stdin: no argv limit)."""
        binary = str(Path(find_etcd_binary()).with_name("etcdctl"))
        env = {**os.environ, "ETCDCTL_API": "3"}
        out = subprocess.run(
            [binary, f"--endpoints={self.etcd.endpoint}", *args],
            input=stdin,
            capture_output=True,
            env=env,
            timeout=20,
            check=True,
        )
        return out.stdout.decode()

    def put(self, key: str, value: dict[str, Any] | bytes) -> None:
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.etcdctl("put", self.prefix + key, stdin=data)

    async def restart_meshd(self, down_for: float = 0.0) -> None:
        await self.app.stop(grace=0.5)
        await asyncio.sleep(down_for)
        self.app = MeshApp(
            self.registry, MeshConfig(xds=f"127.0.0.1:{self.xds_port}", metrics=None)
        )
        await self.app.start()

    def counts(self, n: int) -> dict[str, int]:
        return dict(count_bodies(self.url, n))

    def rejected(self) -> dict[str, int]:
        """Every non-zero ``*update_rejected`` stat of the Envoy (NACKs)."""
        return {k: v for k, v in self.envoy.stats().items() if k.endswith("update_rejected") and v}

    async def wait_body(self, body: str, timeout: float = 10.0) -> float:
        """Seconds until the gateway answers ``body`` 20 times in a row."""
        start = time.monotonic()

        def ok() -> bool:
            return all(http_get(self.url)[1].strip() == body for _ in range(20))

        what = f"the gateway to answer {body!r} 20 times in a row"
        await eventually(ok, what, timeout, interval=0.02, blocking=True)
        return time.monotonic() - start

    def status(self, key: str) -> dict[str, Any] | None:
        """meshd's status entry for ``key`` (``<prefix>status/errors/<key>``), read with etcdctl."""
        out = self.etcdctl("get", "--print-value-only", f"{self.prefix}status/errors/{key}")
        return json.loads(out) if out.strip() else None

    async def wait_status(self, key: str, present: bool, timeout: float) -> dict[str, Any]:
        """Until ``key``'s status entry is there (``present``) or gone; the entry or ``{}``."""
        value = await eventually(
            lambda: self.status(key),
            f"the status of {key} to be {'present' if present else 'gone'}",
            timeout,
            until=lambda status: (status is not None) == present,
            blocking=True,
        )
        return value or {}


@dataclass
class Load:
    """A steady stream of requests in a thread, counting failures: back to back (2 ms
    apart), or paced at ``rate`` requests per second."""

    url: str
    rate: float | None = None
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        def run() -> None:
            next_at = time.monotonic()
            while not self._stop.is_set():
                try:
                    status, _, _ = http_get(self.url, timeout=5)
                except OSError as exc:
                    self.failed.append(repr(exc))
                    status = 0
                if status == 200:
                    self.ok += 1
                elif status:
                    self.failed.append(f"HTTP {status}")
                if self.rate is None:
                    time.sleep(0.002)
                else:
                    next_at += 1 / self.rate
                    time.sleep(max(0.0, next_at - time.monotonic()))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)


async def make_rig(
    tmp_path: Path,
    envoy_factory: EnvoyFactory,
    backend_factory: BackendFactory,
    *,
    delta: bool = False,
    admin: str | None = None,
) -> AsyncIterator[Rig]:
    etcd = EmbeddedEtcd(tmp_path / "etcd", unsafe_no_fsync=True, auto_compaction_retention=None)
    await etcd.start()
    registry = EtcdRegistry(etcd.endpoint)
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    ports = {
        "v1": int(v1.url.rstrip("/").rsplit(":", 1)[1]),
        "v2": int(v2.url.rstrip("/").rsplit(":", 1)[1]),
        "listener": free_port(),
    }
    await seed(registry, split_entries(ports["v1"], ports["v2"], ports["listener"]))
    xds_port = free_port()
    app = MeshApp(registry, MeshConfig(xds=f"127.0.0.1:{xds_port}", metrics=None, admin=admin))
    await app.start()
    bs = bootstrap("gw-1", "gateway", xds_port=xds_port, admin_port=0, delta=delta)
    envoy = await asyncio.to_thread(envoy_factory, bs, name="gateway")
    url = f"http://127.0.0.1:{ports['listener']}/"
    rig = Rig(etcd, registry, app, xds_port, envoy, url, ports, tmp_path)
    try:
        yield rig
    finally:
        await rig.app.stop(grace=0.2)
        await registry.close()
        etcd.stop()


RigFactory = Callable[..., AsyncIterator[Rig]]


@pytest.fixture(params=["sotw", "delta"])
async def rig(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    envoy_factory: EnvoyFactory,
    backend_factory: BackendFactory,
) -> AsyncIterator[Rig]:
    """The rig with Envoy on ADS state-of-the-world, then on Delta."""
    delta = request.param == "delta"
    async for r in make_rig(tmp_path, envoy_factory, backend_factory, delta=delta):
        yield r
