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

from integration.grpc_backend import serve
from tests.xds_client import running_meshd

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
