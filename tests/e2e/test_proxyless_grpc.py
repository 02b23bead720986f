"""A real grpcio client dialing ``xds:///echo.default`` through meshd (xds.md point 6)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator

import pytest

from adapters.memory import MemoryRegistry
from integration.grpc_backend import serve
from tests.support.wait import eventually
from tests.support.xds_client import running_meshd
from xds_server.app import MeshApp

CLIENT = textwrap.dedent(
    """
    import collections, sys, grpc
    n = int(sys.argv[1])
    with grpc.insecure_channel("xds:///echo.default") as ch:
        who = ch.unary_unary("/apg.test.Who/Who")
        calls = (who(b"", timeout=10, wait_for_ready=True) for _ in range(n))
        got = collections.Counter(reply.decode() for reply in calls)
    print(dict(got))
    """
)


def run_client(xds_port: int, n: int) -> Counter[str]:
    """Run the grpcio xDS client in its own process (grpc reads its bootstrap once)."""
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": f"127.0.0.1:{xds_port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": "grpc-client-1", "cluster": "proxyless", "locality": {"zone": "z"}},
    }
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(bootstrap)}
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, str(n)], capture_output=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return Counter(json.loads(out.stdout.decode().strip().replace("'", '"')))


@pytest.fixture
def backends() -> Iterator[dict[str, int]]:
    servers = {name: serve(name) for name in ("v1", "v2")}
    yield {name: port for name, (_, port) in servers.items()}
    for server, _ in servers.values():
        server.stop(0)


async def test_proxyless_grpc_client_splits_90_10(backends: dict[str, int]) -> None:
    entries = {
        "services/default/echo": {
            "protocol": "grpc",
            "port": backends["v1"],
            "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}},
        },
        "endpoints/default/echo/v1": {
            "address": "127.0.0.1",
            "port": backends["v1"],
            "labels": {"version": "v1"},
            "zone": "z",
        },
        "endpoints/default/echo/v2": {
            "address": "127.0.0.1",
            "port": backends["v2"],
            "labels": {"version": "v2"},
        },
        "routes/default/echo-split": {
            "listener": "*",
            "hosts": ["echo.default"],
            "destinations": [
                {"service": "echo", "subset": "v1", "weight": 90},
                {"service": "echo", "subset": "v2", "weight": 10},
            ],
        },
    }
    async with running_meshd(entries) as (_, app):
        counts = await asyncio.to_thread(run_client, app.xds_port, 600)
        assert set(counts) == {"v1", "v2"}, counts
        share = counts["v2"] / 600
        assert 0.05 <= share <= 0.16, counts
        # The client accepted everything it was sent (and it asked for all four types).
        sample = app.metrics.registry.get_sample_value
        for short in ("LDS", "RDS", "CDS", "EDS"):
            assert sample("meshd_xds_nacks_total", {"type": short}) in (None, 0.0)
            acks = sample("meshd_xds_requests_total", {"type": short, "kind": "ack"})
            assert acks is not None and acks >= 1, short


OUTCOMES = textwrap.dedent(
    """
    import collections, sys, grpc
    n, target = int(sys.argv[1]), sys.argv[2]
    got = collections.Counter()
    with grpc.insecure_channel(target) as ch:
        who = ch.unary_unary("/apg.test.Who/Who")
        for _ in range(n):
            try:
                got[who(b"", timeout=float(sys.argv[3])).decode()] += 1
            except grpc.RpcError as exc:
                got[exc.code().name] += 1
    print(dict(got))
    """
)


def run_outcomes(
    xds_port: int, n: int, target: str = "xds:///echo.default", timeout: float = 10
) -> Counter[str]:
    """``n`` calls from a grpcio xDS client: reply bodies, or status code names."""
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": f"127.0.0.1:{xds_port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": "grpc-client-2", "cluster": "proxyless", "locality": {"zone": "z"}},
    }
    env = {**os.environ, "GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(bootstrap)}
    out = subprocess.run(
        [sys.executable, "-c", OUTCOMES, str(n), target, str(timeout)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return Counter(json.loads(out.stdout.decode().strip().replace("'", '"')))


def _nacks(app: MeshApp) -> dict[str, float | None]:
    sample = app.metrics.registry.get_sample_value
    return {t: sample("meshd_xds_nacks_total", {"type": t}) for t in ("LDS", "RDS", "CDS", "EDS")}


async def _status_error(registry: MemoryRegistry, key: str) -> dict[str, object]:
    """The status key meshd writes for ``key`` (waited for: it is written off the push path)."""
    stored = await eventually(
        lambda: registry.get(f"{registry.prefix}status/errors/{key}"),
        f"a status error for {key}",
        5.0,
        interval=0.02,
    )
    assert stored is not None
    value: dict[str, object] = json.loads(stored.value)
    return value


async def test_proxyless_client_runs_route_fault_and_is_told_of_rate_limit(
    backends: dict[str, int],
) -> None:
    entries = {
        "services/default/echo": {"protocol": "grpc", "port": backends["v1"]},
        "endpoints/default/echo/v1": {"address": "127.0.0.1", "port": backends["v1"], "zone": "z"},
        "routes/default/echo-fault": {
            "listener": "*",
            "hosts": ["echo.default"],
            "destinations": [{"service": "echo"}],
            "fault": {"abort_percent": 100, "abort_status": 503},
            "rate_limit": {"requests_per_minute": 6000, "burst": 100},
        },
    }
    async with running_meshd(entries) as (registry, app):
        counts = await asyncio.to_thread(run_outcomes, app.xds_port, 20)
        # 503 is UNAVAILABLE in gRPC's HTTP status mapping: every call aborted by the fault.
        assert counts == {"UNAVAILABLE": 20}, counts
        assert all(v in (None, 0.0) for v in _nacks(app).values()), _nacks(app)
        # The rate limit cannot run in a gRPC client: said on the route's key, not dropped.
        error = await _status_error(registry, "routes/default/echo-fault")
        assert error["field"] == "rate_limit", error
        assert "xds:///echo.default" in str(error["error"]), error
        problem = app.controller.state.problems[f"{registry.prefix}routes/default/echo-fault"]
        assert problem.field == "rate_limit"


@pytest.mark.parametrize("algorithm", ["maglev", "random", "least_request"])
async def test_unsupported_algorithm_is_a_clear_error_not_a_nack(
    backends: dict[str, int], algorithm: str
) -> None:
    entries = {
        "services/default/echo": {
            "protocol": "grpc",
            "port": backends["v1"],
            "load_balancer": {"algorithm": algorithm},
        },
        "endpoints/default/echo/v1": {"address": "127.0.0.1", "port": backends["v1"], "zone": "z"},
        "services/default/fine": {"protocol": "grpc", "port": backends["v2"]},
        "endpoints/default/fine/v2": {"address": "127.0.0.1", "port": backends["v2"], "zone": "z"},
    }
    async with running_meshd(entries) as (registry, app):
        counts = await asyncio.to_thread(run_outcomes, app.xds_port, 2, timeout=3)
        # Not served: the listener is missing for the client (it fails its calls until
        # it gives the name up as nonexistent), and nothing was NACKed.
        assert set(counts) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, counts
        assert all(v in (None, 0.0) for v in _nacks(app).values()), _nacks(app)
        error = await _status_error(registry, "services/default/echo")
        assert error["field"] == "load_balancer.algorithm", error
        assert algorithm in str(error["error"]) and "xds:///echo.default" in str(error["error"])
        # The rest is served to proxyless clients as before.
        fine = await asyncio.to_thread(run_outcomes, app.xds_port, 3, "xds:///fine.default")
        assert fine == {"v2": 3}, fine
        assert all(v in (None, 0.0) for v in _nacks(app).values()), _nacks(app)
        # Fixed: served again, and the error is gone.
        await registry.put(
            f"{registry.prefix}services/default/echo",
            json.dumps({"protocol": "grpc", "port": backends["v1"]}).encode(),
        )
        await eventually(
            lambda: registry.get(f"{registry.prefix}status/errors/services/default/echo"),
            "the status error to go",
            5.0,
            until=lambda stored: stored is None,
            interval=0.02,
        )
        assert await asyncio.to_thread(run_outcomes, app.xds_port, 2) == {"v1": 2}


async def test_a_route_to_a_service_grpc_cannot_balance_withholds_the_name(
    backends: dict[str, int],
) -> None:
    """The algorithm of a route's destination counts too: a proxyless client of the name
    the route is on would be sent that cluster."""
    entries = {
        "services/default/echo": {"protocol": "grpc", "port": backends["v1"]},
        "endpoints/default/echo/v1": {"address": "127.0.0.1", "port": backends["v1"], "zone": "z"},
        "services/default/hashed": {
            "protocol": "http2",
            "port": backends["v2"],
            "load_balancer": {"algorithm": "maglev"},
        },
        "endpoints/default/hashed/v2": {"address": "127.0.0.1", "port": backends["v2"]},
        "routes/default/to-hashed": {
            "listener": "*",
            "hosts": ["echo.default"],
            "destinations": [{"service": "hashed"}],
        },
    }
    async with running_meshd(entries) as (registry, app):
        counts = await asyncio.to_thread(run_outcomes, app.xds_port, 1, timeout=3)
        assert set(counts) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, counts
        assert all(v in (None, 0.0) for v in _nacks(app).values()), _nacks(app)
        error = await _status_error(registry, "services/default/hashed")
        assert error["field"] == "load_balancer.algorithm", error
        assert "maglev" in str(error["error"]) and "xds:///echo.default" in str(error["error"])
        # The route goes: the name is served again, and the error is gone.
        await registry.delete(f"{registry.prefix}routes/default/to-hashed")
        assert await asyncio.to_thread(run_outcomes, app.xds_port, 2) == {"v1": 2}
        assert await registry.get(f"{registry.prefix}status/errors/services/default/hashed") is None
