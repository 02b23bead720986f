"""The Envoy test harness and the sample backend, proven with a real Envoy and no control plane.

Envoy here runs from a static bootstrap: one listener routing 90/10 to two clusters, each with
one loopback backend.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from integration.harness import (
    BackendProcess,
    EnvoyProcess,
    count_bodies,
    free_port,
    http_get,
    wait_for,
)
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def static_split_bootstrap(
    listener_port: int, weights: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    """A bootstrap with static resources only: ``weights`` maps cluster -> (port, weight)."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {
                                "weighted_clusters": {
                                    "clusters": [
                                        {"name": name, "weight": weight}
                                        for name, (_, weight) in weights.items()
                                    ]
                                }
                            },
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "node": {"id": "harness-test", "cluster": "harness-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listener_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_cluster(name, port) for name, (port, _) in weights.items()],
        },
    }


def _session_members(sid: int) -> list[int]:
    """Pids of live processes whose session id is ``sid`` (from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def test_weighted_split_and_latency_through_envoy(
    envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> None:
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    port = free_port()
    envoy = envoy_factory(static_split_bootstrap(port, {"v1": (v1.port, 90), "v2": (v2.port, 10)}))
    assert envoy.listener_ready("ingress")
    url = f"http://127.0.0.1:{port}/anything"

    n = 2000
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        status, body, headers = http_get(url)
        latencies.append(time.perf_counter() - start)
        assert status == 200
        assert headers["x-backend"] == body.strip()
        counts[body.strip()] += 1

    median_ms = statistics.median(latencies) * 1000
    p99_ms = statistics.quantiles(latencies, n=100)[98] * 1000
    print(f"\nthrough Envoy: median {median_ms:.2f} ms, p99 {p99_ms:.2f} ms over {n} requests")
    share = counts["v2"] / n
    assert set(counts) == {"v1", "v2"}
    assert 0.075 <= share <= 0.125, counts
    # ~40 ms here would mean Nagle + delayed ACK (backend without TCP_NODELAY).
    assert median_ms < 5.0
    # The backends' and Envoy's own counters agree with what the client saw.
    assert v1.stats()["requests"] == counts["v1"]
    assert v2.stats()["requests"] == counts["v2"]
    assert envoy.stat("cluster.v2.upstream_rq_200") == counts["v2"]
    assert envoy.stats()["cluster.v1.upstream_rq_200"] == counts["v1"]
    assert envoy.stat("cluster.no_such_cluster.upstream_rq_200") is None
    hosts = envoy.clusters_json()["cluster_statuses"]
    assert {c["name"] for c in hosts} == {"v1", "v2"}
    assert "configs" in envoy.config_dump()


def test_envoy_stop_leaves_no_process(tmp_path: Path) -> None:
    port = free_port()
    envoy = EnvoyProcess(static_split_bootstrap(port, {"v1": (free_port(), 1)}), tmp_path)
    with envoy:
        envoy.wait_ready()
        pid = envoy.pid
        assert _session_members(pid) == [pid]
    assert envoy.proc is not None and envoy.proc.returncode is not None
    assert _session_members(pid) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert envoy.stop() == envoy.proc.returncode  # idempotent

    # Restartable: a new process with the same config, found again through its admin file.
    with envoy.start():
        envoy.wait_ready()
        assert envoy.pid != pid
        assert envoy.listener_ready("ingress")
    assert _session_members(envoy.pid) == []


def test_envoy_that_dies_fails_fast_with_its_log(tmp_path: Path) -> None:
    bad = static_split_bootstrap(free_port(), {"v1": (free_port(), 1)})
    bad["static_resources"]["clusters"][0]["connect_timeout"] = "not-a-duration"
    envoy = EnvoyProcess(bad, tmp_path, name="bad").start()
    try:
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="exited") as err:
            envoy.wait_ready(timeout=10)
        assert time.monotonic() - start < 5
        assert "connect_timeout" in str(err.value) or "Duration" in str(err.value)
    finally:
        envoy.stop()


def test_backend_control_surface(backend_factory: BackendFactory) -> None:
    backend = backend_factory("v9")
    status, body, headers = http_get(f"{backend.url}/some/path")
    assert (status, body, headers["x-backend"]) == (200, "v9\n", "v9")

    # Exactly the requested share of 503s, spread evenly.
    assert backend.control(fail_percent=20)["fail_percent"] == 20
    assert count_bodies(f"{backend.url}/", 100) == Counter({"v9": 80, "HTTP 503": 20})
    backend.control(fail_percent=0)

    assert http_get(f"{backend.url}/health")[0] == 200
    backend.control(health="fail")
    assert http_get(f"{backend.url}/health")[0] == 503
    backend.control(health="ok")
    assert http_get(f"{backend.url}/health")[0] == 200

    status, body, _ = http_get(f"{backend.url}/__echo?q=1", headers={"X-Trace": "abc"})
    assert status == 200 and '"x-trace": "abc"' in body and '"/__echo?q=1"' in body

    # Delay plus concurrency: three slow requests in parallel are seen in flight together.
    # (long enough that a loaded machine still starts all three within it)
    backend.control(delay_ms=600)
    threads = [threading.Thread(target=http_get, args=(f"{backend.url}/slow",)) for _ in range(3)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start >= 0.6
    stats = backend.stats()
    # 1 + 100 + 1 (echo) + 3 traffic requests; /health, /__control, /__stats are not counted.
    assert stats == {"requests": 105, "in_flight": 0, "max_in_flight": 3, "health_checks": 3}

    with pytest.raises(ValueError):
        backend.control(health="maybe")


def test_backend_subprocess_serves_and_stops_cleanly() -> None:
    backend = BackendProcess("sub")
    try:
        assert http_get(f"{backend.url}/")[1] == "sub\n"
        assert backend.control(delay_ms=0)["name"] == "sub"
        assert backend.stats()["requests"] == 1
        pid = backend.pid
    finally:
        backend.stop()
    assert backend.proc.returncode == 0  # exited on SIGTERM by itself, not killed
    assert _session_members(pid) == []


def test_stopped_backend_closes_keepalive_connections(backend_factory: BackendFactory) -> None:
    backend = backend_factory("gone")
    assert http_get(f"{backend.url}/")[0] == 200  # leaves a pooled keep-alive connection
    backend.stop()
    # The pooled connection was cut and the port closed: no more answers from a dead backend.
    with pytest.raises(ConnectionRefusedError):
        http_get(f"{backend.url}/")


def test_wait_for_returns_value_or_times_out() -> None:
    assert wait_for(lambda: 42, timeout=0.1) == 42
    with pytest.raises(TimeoutError, match="nothing"):
        wait_for(lambda: None, timeout=0.05, what="nothing")
