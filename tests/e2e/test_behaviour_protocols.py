"""Protocol behaviour through real Envoy: gRPC / HTTP/2 upstreams behind a weighted split,
and raw TCP proxied by a ``protocol: tcp`` listener."""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest

from integration.grpc_backend import WHO_METHOD, serve
from integration.tcp_echo import TcpEcho
from tests.support.behaviour_mesh import Mesh


@pytest.fixture
def grpc_backends() -> Iterator[dict[str, int]]:
    """Two gRPC backends answering their names: name -> port."""
    servers = {name: serve(name) for name in ("blue", "green")}
    yield {name: port for name, (_, port) in servers.items()}
    for server, _ in servers.values():
        server.stop(0)


@pytest.mark.parametrize("protocol", ["grpc", "http2"])
def test_grpc_backend_behind_a_weighted_split(
    mesh: Mesh, grpc_backends: dict[str, int], protocol: str
) -> None:
    mesh.service(
        "who",
        protocol=protocol,
        port=grpc_backends["blue"],
        subsets={name: {"color": name} for name in grpc_backends},
    )
    for name, port in grpc_backends.items():
        mesh.endpoint("who", name, port, labels={"color": name})
    mesh.route(
        "who",
        [
            {"service": "who", "subset": "blue", "weight": 75},
            {"service": "who", "subset": "green", "weight": 25},
        ],
    )
    mesh.http_listener()
    mesh.start_envoy()
    with grpc.insecure_channel(f"127.0.0.1:{mesh.port}") as channel:
        who = channel.unary_unary(WHO_METHOD)

        def call() -> str:
            answer: bytes = who(b"", timeout=5)
            return answer.decode()

        def reachable() -> bool:
            try:
                return call() in grpc_backends
            except grpc.RpcError:
                return False

        mesh.wait_answer(reachable, "a gRPC call through Envoy")
        n = 400
        counts = Counter(call() for _ in range(n))
    # Binomial(400, 0.25): sd 0.022 of the share; +-0.1 is over 4.5 sd.
    assert set(counts) == {"blue", "green"}, counts
    assert abs(counts["green"] / n - 0.25) < 0.1, counts


def _exchange(port: int, payload: bytes) -> tuple[str, bytes]:
    """Connect, read the echo server's greeting, send ``payload``, read it back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed before the greeting: {buf!r}"
            buf += chunk
        greeting, _, rest = buf.partition(b"\n")
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray(rest)
        while chunk := sock.recv(65536):
            received += chunk
        return greeting.decode(), bytes(received)


def test_tcp_listener_proxies_raw_bytes_to_the_service(mesh: Mesh) -> None:
    echoes = [TcpEcho(f"raw-{i}").start() for i in range(2)]
    try:
        mesh.service("raw", protocol="tcp", port=echoes[0].port)
        for i, echo in enumerate(echoes):
            mesh.endpoint("raw", f"raw-{i}", echo.port)
        mesh.tcp_listener("raw")
        mesh.start_envoy()

        def connected() -> bool:
            try:
                return _exchange(mesh.port, b"ping")[1] == b"ping"
            except (OSError, AssertionError):
                return False

        mesh.wait_answer(connected, "bytes through the TCP listener")
        # Binary, not text: every byte value, and more than one socket buffer.
        payload = os.urandom(1 << 20) + bytes(range(256))
        greeting, received = _exchange(mesh.port, payload)
        assert received == payload
        assert greeting in {"raw-0", "raw-1"}
        # Connections are balanced over the service's endpoints.
        greetings = Counter(_exchange(mesh.port, b"x")[0] for _ in range(10))
        assert set(greetings) == {"raw-0", "raw-1"}, greetings
        assert sum(e.stats()["bytes_echoed"] for e in echoes) >= len(payload)
    finally:
        for echo in echoes:
            echo.stop()
