"""A meshd process under abuse of its metrics: what the process holds (threads, open
files, resident memory), read from ``/proc``.

- Half-open connections to the metrics port (request headers never finished) cost no
  thread each and are closed by meshd after the header timeout; a scraper is served
  meanwhile.
- Streams naming a 1 MB ``node.cluster`` are refused, and leave nothing in ``/metrics``
  nor in meshd's memory, even with concurrent scrapes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from adapters.etcd import EmbeddedEtcd
from integration.harness import free_port
from tests.support.paths import REPO_ROOT
from tests.support.wait import wait_until
from xds_server.resources import CLUSTER

MB = 1024 * 1024
HEADER_TIMEOUT_S = 5.0  # meshd's defaults (docs/observability.md)
MAX_CONNECTIONS = 64


@dataclass
class Meshd:
    proc: subprocess.Popen[bytes]
    xds: int
    metrics: int
    log: Path

    def status(self, field: str) -> int:
        """A ``/proc/<pid>/status`` figure (kB for memory)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def get(self, path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.metrics), timeout=20) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: meshd\r\n\r\n".encode())
            chunks = []
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def meshd(etcd: EmbeddedEtcd, tmp_path: Path) -> Iterator[Meshd]:
    xds, metrics = free_port(), free_port()
    log = tmp_path / "meshd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "xds_server.cli.meshd", "--etcd", etcd.endpoint),
                *("--xds", f"127.0.0.1:{xds}", "--metrics", f"127.0.0.1:{metrics}"),
                *("--admin", "", "--data-dir", str(tmp_path / "data"), "--grace", "0.2"),
            ],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    m = Meshd(proc, xds, metrics, log)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return b"meshd ready" in log.read_bytes()

        wait_until(ready, "meshd ready", 60, interval=0.1)
        m.get("/metrics")  # (whatever a first page costs is part of the baseline)
        yield m
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_half_open_connections_hold_no_thread_and_are_closed_after_the_timeout(
    meshd: Meshd,
) -> None:
    threads, fds = meshd.status("Threads"), meshd.fds()
    socks = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", meshd.metrics), timeout=10)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: meshd\r\n")  # never ends its headers
            socks.append(s)
        time.sleep(0.5)
        held_threads, held_fds = meshd.status("Threads"), meshd.fds()
        # A scraper still gets its page: the oldest silent connection makes room for it.
        page = meshd.get("/metrics")
        assert page.startswith(b"HTTP/1.1 200") and b"meshd_registry_revision" in page
        # meshd ends every one of them: over the limit at once, the rest after the timeout.
        started = time.monotonic()
        for s in socks:
            s.settimeout(HEADER_TIMEOUT_S + 10 - (time.monotonic() - started))
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            assert data == b"" or data.startswith(b"HTTP/1.1 503"), data
        closed_after = time.monotonic() - started
    finally:
        for s in socks:
            s.close()
    assert held_threads <= threads + 3, (threads, held_threads)
    assert held_fds <= fds + MAX_CONNECTIONS + 10, (fds, held_fds)
    assert closed_after < HEADER_TIMEOUT_S + 3, closed_after
    wait_until(meshd.fds, "meshd's sockets closed", 10, until=lambda n: n <= fds + 5)
    text = meshd.get("/metrics").decode()
    assert 'meshd_metrics_http_refused_total{reason="timeout"}' in text
    timeouts = next(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('meshd_metrics_http_refused_total{reason="timeout"}')
    )
    assert timeouts >= 1


def _long_cluster_stream(port: int, i: int) -> grpc.StatusCode | None:
    """One short stream naming a 1 MB node cluster: the status it ended with (None: it was
    served)."""
    req = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    req.node.id, req.node.cluster = f"long-{i}", f"{i}-" + "x" * MB
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources(iter([req]), timeout=20)
        try:
            next(call)
        except grpc.RpcError as err:
            return err.code()  # type: ignore[attr-defined, no-any-return]
        finally:
            with contextlib.suppress(Exception):
                call.cancel()
    return None


def test_long_node_clusters_and_concurrent_scrapes_leave_meshd_small(meshd: Meshd) -> None:
    baseline = meshd.status("VmRSS")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda i: _long_cluster_stream(meshd.xds, i), range(100)))
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}, set(codes)
    # The refused streams' requests (100 MB in all) are given back, not held by the ended
    # RPCs (gRPC leaves each in a reference cycle that meshd's collector settings would
    # otherwise keep for a long time).
    deadline = time.monotonic() + 10
    while (meshd.status("VmRSS") - baseline) / 1024 > 20 and time.monotonic() < deadline:
        time.sleep(0.25)
    kept_mb = (meshd.status("VmRSS") - baseline) / 1024
    assert kept_mb < 20, f"meshd still holds {kept_mb:.0f} MB after 100 refused 1 MB requests"
    # Four concurrent scrapes: what they cost at their peak (VmHWM, reset first).
    Path(f"/proc/{meshd.proc.pid}/clear_refs").write_text("5")
    before = meshd.status("VmRSS")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pages = list(pool.map(lambda _: meshd.get("/metrics"), range(4)))
    peak_mb = (meshd.status("VmHWM") - before) / 1024
    assert all(p.startswith(b"HTTP/1.1 200") for p in pages)
    assert max(len(p) for p in pages) < 512 * 1024, [len(p) for p in pages]
    assert all(b"x" * 200 not in p and b"long-" not in p for p in pages)
    assert peak_mb < 30, f"four scrapes took meshd's RSS {peak_mb:.0f} MB higher"
