"""Fixtures that start a real Envoy and loopback backends; everything is stopped at teardown.

- ``envoy_factory(bootstrap, *, name=None, wait="ready", timeout=10.0, log_level="warn")``
  starts an :class:`~integration.harness.EnvoyProcess` from a bootstrap dict (or file) with
  its config and log in ``tmp_path``. ``wait``: ``"ready"`` (``/ready`` answers 200: static
  config loaded, or the first ADS config received), ``"admin"`` (admin interface up, e.g. for
  an Envoy whose control plane is not running yet) or ``"none"``.
- ``backend_factory(name, *, port=0, subprocess=False)`` starts the sample HTTP backend,
  in a thread (cheap) or as a subprocess (when a test must kill it like a real process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest

from integration.harness import (
    BackendHandle,
    EnvoyProcess,
    close_http_connections,
    start_backend,
)

EnvoyFactory = Callable[..., EnvoyProcess]
BackendFactory = Callable[..., BackendHandle]


@pytest.fixture
def envoy_factory(tmp_path: Path) -> Iterator[EnvoyFactory]:
    """Factory starting real Envoys from bootstrap dicts; all stopped at teardown."""
    started: list[EnvoyProcess] = []

    def start(
        bootstrap: Mapping[str, Any] | str | Path,
        *,
        name: str | None = None,
        wait: Literal["ready", "admin", "none"] = "ready",
        timeout: float = 10.0,
        log_level: str = "warn",
    ) -> EnvoyProcess:
        envoy = EnvoyProcess(
            bootstrap, tmp_path, name=name or f"envoy{len(started)}", log_level=log_level
        )
        started.append(envoy)
        envoy.start()
        if wait == "ready":
            envoy.wait_ready(timeout)
        elif wait == "admin":
            envoy.wait_admin(timeout)
        return envoy

    yield start
    for envoy in reversed(started):
        envoy.stop()
    # Pooled keep-alive connections to stopped Envoys would be dead in the next test.
    close_http_connections()


@pytest.fixture
def backend_factory() -> Iterator[BackendFactory]:
    """Factory starting sample HTTP backends by name; all stopped at teardown."""
    started: list[BackendHandle] = []

    def start(name: str, *, port: int = 0, subprocess: bool = False) -> BackendHandle:
        backend = start_backend(name, port=port, subprocess=subprocess)
        started.append(backend)
        return backend

    yield start
    for backend in reversed(started):
        backend.stop()
