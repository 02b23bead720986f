"""A raw TCP echo backend for tests of ``protocol: tcp`` listeners.

Every connection first receives the greeting ``"<name>\\n"`` (so a test can tell which
endpoint it reached), then every byte it sends comes back unchanged until it closes.
Run in-process with :class:`TcpEcho` (a daemon thread per connection)::

    with TcpEcho("raw-1") as echo:
        ...  # connect to ("127.0.0.1", echo.port)

or as a program: ``python -m integration.tcp_echo --name raw-1 [--port 0]`` (prints
``listening on HOST:PORT`` first).
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from contextlib import suppress

__all__ = ["TcpEcho", "main"]


class TcpEcho:
    """TCP echo server on loopback; counts connections and echoed bytes."""

    def __init__(self, name: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self._sock = socket.create_server((host, port), backlog=128)
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self.bytes_echoed = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> TcpEcho:
        """Accept connections on a daemon thread; return self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._accept_loop, name=f"tcp-echo-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # the listening socket was closed by stop()
            with self._lock:
                self.connections += 1
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.sendall(f"{self.name}\n".encode())
            while data := conn.recv(65536):
                conn.sendall(data)
                with self._lock:
                    self.bytes_echoed += len(data)
        except OSError:
            pass  # the peer (Envoy) went away: routine
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def stats(self) -> dict[str, int]:
        """``{"connections", "bytes_echoed"}``."""
        with self._lock:
            return {"connections": self.connections, "bytes_echoed": self.bytes_echoed}

    def stop(self) -> None:
        """Stop accepting and cut every open connection."""
        self._stopping.set()
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> TcpEcho:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: serve until interrupted."""
    parser = argparse.ArgumentParser(description="Raw TCP echo backend (greets with its name).")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    echo = TcpEcho(args.name, args.port, args.host).start()
    print(f"listening on {echo.host}:{echo.port}", flush=True)
    with suppress(KeyboardInterrupt):
        threading.Event().wait()
    echo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
