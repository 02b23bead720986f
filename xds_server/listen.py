"""Listen addresses of meshd's servers: parsed, range-checked and known to be free.

gRPC binds with ``SO_REUSEPORT`` by default, so a second server on a port in use would
share it silently, and it wraps a port above 65535 into the valid range. meshd asks gRPC
not to (``grpc.so_reuseport`` 0) and checks each address itself first, so a mistake is one
line naming the flag, never a shared, wrapped or traceback-ending start.
"""

from __future__ import annotations

import contextlib
import errno
import socket

import grpc

__all__ = [
    "ListenError",
    "bind_grpc",
    "check_free",
    "listen_reason",
    "parse_listen",
    "split_hostport",
]


class ListenError(OSError):
    """A server cannot listen where it was told; ``flag`` names meshd's option."""

    def __init__(self, flag: str, address: str, reason: str) -> None:
        super().__init__(f"{flag} {address}: {reason}")
        self.flag = flag
        self.address = address
        self.reason = reason


def parse_listen(flag: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``) as host and port 0..65535 (0: any free port).

    An empty host means loopback. Raises ListenError naming ``flag`` otherwise.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ListenError(flag, repr(value), "must be HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ListenError(flag, repr(value), f"port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ListenError(flag, repr(value), f"port {port} is not in 0..65535 (0: any free port)")
    return host.strip("[]") or "127.0.0.1", port


def split_hostport(value: str) -> tuple[str, int]:
    """``HOST:PORT`` as host and port (ValueError when the port is not 0..65535); for
    clients such as meshctl, which name no flag of meshd."""
    try:
        return parse_listen("", value)
    except ListenError as exc:
        raise ValueError(str(exc).strip()) from None


def check_free(flag: str, value: str) -> None:
    """Raise ListenError when another socket already listens on ``value``'s port.

    Port 0 is always free. The probe binds like a server that does not share ports
    (``SO_REUSEADDR``, so connections of an earlier run in TIME_WAIT do not count, and no
    ``SO_REUSEPORT``, so any listener on the port does) and closes at once.
    """
    host, port = parse_listen(flag, value)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(flag, value, f"cannot resolve {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, sockaddr in infos:
        with contextlib.closing(socket.socket(family, kind, proto)) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                raise ListenError(flag, value, listen_reason(exc)) from None


def listen_reason(exc: OSError) -> str:
    """The words for a failed bind (``address already in use`` for EADDRINUSE)."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (is another meshd running?)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "not an address of this host"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)


def bind_grpc(
    server: grpc.aio.Server,
    flag: str,
    value: str,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """``server.add_insecure_port(value)`` (``add_secure_port`` with ``credentials``), its
    failure as a ListenError naming ``flag``."""
    parse_listen(flag, value)  # gRPC would wrap a port above 65535
    try:
        if credentials is not None:
            port: int = server.add_secure_port(value, credentials)
        else:
            port = server.add_insecure_port(value)
    except RuntimeError:  # grpcio raises this when no address could be bound
        port = 0
    if port == 0:
        raise ListenError(flag, value, "cannot listen there (address in use or not local)")
    return port
