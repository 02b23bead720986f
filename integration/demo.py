"""``make demo``: a whole mesh on this machine in a few seconds, and what to try with it.

It starts, in this order, and stops in the reverse order on Ctrl-C (SIGINT) or SIGTERM:

1. an embedded etcd (the registry), data in ``<data-dir>/etcd`` (wiped at every start, so
   the printed commands always apply to the same registry);
2. ``meshd`` (the real console script of this virtualenv) as a subprocess, its log in
   ``<data-dir>/meshd.log`` (warnings and errors are also echoed here);
3. two sample HTTP backends, ``v1`` and ``v2`` (:mod:`integration.backend` subprocesses);
4. the registry entries: service ``default/web`` with subsets ``v1``/``v2``, its two
   endpoints, listener ``public`` and route ``default/web-split`` (90/10);
5. one Envoy gateway (node ``gateway-1``, cluster ``gateway``) from a bootstrap made by
   :mod:`xds_server.cli.bootstrap`, written to ``<data-dir>/gateway.yaml``;
6. identity at work: a third backend, ``api``, behind a sidecar Envoy of service
   ``shop/api`` (namespace ``shop`` is ``mtls: strict``, certificates over SDS), which the
   gateway reaches on ``/api`` over mTLS (route ``shop/api-path``); and the sidecar Envoy of
   a second service, ``shop/reports``, whose calls to ``shop/api`` policy
   ``shop/deny-reports`` refuses (403). Their bootstraps are ``<data-dir>/sidecar-*.yaml``.

Once a request through the gateway answers, it prints a banner with what runs where and the
exact commands to try next, and waits for Ctrl-C.

Flags (and env):

- ``--ports fixed|auto`` (``DEMO_PORTS``): ``fixed`` (default) uses the documented ports:
  gateway 10000 and xDS 18000 (the demo refuses to start when either is taken), and meshd
  admin 18001, metrics 9102, Envoy admin 9901, etcd 2379, shop/api's inbound 15006 and
  shop/reports' outbound 10001 when free (else free ones; the sidecars' admin ports are free
  ones).
  ``auto`` uses free ports for everything, so tests can run next to a user's demo.
- ``--check`` (``DEMO_CHECK=1``): run the scenario non-interactively instead of waiting:
  measure the 90/10 split, run the banner's own ``etcdctl`` commands (50/50, then the typo
  and the error report, then the fix), then its identity commands (200 over mTLS through
  the gateway, 403 for the denied caller, the sidecar's handshake and RBAC stats, ``meshctl
  policy check`` saying deny), and check each effect in real traffic; exit 0 if all holds,
  1 otherwise. Everything is stopped either way.
- ``--data-dir DIR`` (``DEMO_DATA_DIR``, default ``.meshd/demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, TextIO

from integration.harness import (
    BackendProcess,
    EnvoyProcess,
    close_http_connections,
    count_bodies,
    free_port,
    http_get,
)

if TYPE_CHECKING:
    from adapters.etcd import EmbeddedEtcd

__all__ = ["DemoError", "DemoPorts", "demo_processes", "main"]

HOST = "127.0.0.1"
PREFIX = "/mesh/"
NODE_ID = "gateway-1"
NODE_CLUSTER = "gateway"
ROUTE_KEY = f"{PREFIX}routes/default/web-split"
#: Identity: the sidecars of shop/api (the callee) and shop/reports (the denied caller).
API_NODE, API_CLUSTER = "api-1", "api.shop"
CALLER_NODE, CALLER_CLUSTER = "reports-1", "reports.shop"
POLICY_KEY = f"{PREFIX}policies/shop/deny-reports"
#: The demo's Envoys: name -> bootstrap file ``<data-dir>/<name>.yaml`` (log ``<name>.log``).
ENVOY_CONFIGS = ("gateway", "sidecar-api", "sidecar-reports")

#: Ports of the README and the user stories. The gateway and xDS ports are the contract
#: (bootstraps and curl commands name them), so a taken one is an error, not a fallback.
FIXED_REQUIRED = {"gateway": 10000, "xds": 18000}
#: Ports that are nice to have: another one is picked, and printed, when taken.
FIXED_PREFERRED = {
    "admin": 18001,
    "console": 18002,
    "metrics": 9102,
    "envoy_admin": 9901,
    "etcd": 2379,
    "sidecar": 15006,
    "caller": 10001,
}

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_POLL = 0.02
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\S* (\w+) ")
_ECHO_LEVELS = {"WARNING", "ERROR", "CRITICAL"}


class DemoError(Exception):
    """The demo cannot start or a ``--check`` expectation failed (the message says why)."""


class _Interrupted(Exception):
    """SIGINT/SIGTERM arrived while starting: stop what is up, quietly."""


# --------------------------------------------------------------------------- ports


@dataclass(frozen=True)
class DemoPorts:
    """Every port the demo uses (all on 127.0.0.1); ``etcd`` 0 means "any free one"."""

    gateway: int
    xds: int
    admin: int
    console: int
    metrics: int
    envoy_admin: int
    etcd: int
    sidecar: int  # shop/api's inbound (mTLS) listener
    caller: int  # shop/reports' outbound listener
    notes: tuple[str, ...] = ()


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether binding ``host:port`` fails because someone listens there.

    SO_REUSEADDR, as the servers themselves set it, so that sockets of a previous run still
    in TIME_WAIT do not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def choose_ports(mode: str) -> DemoPorts:
    """Fixed ports (failing fast on a taken required one) or free ones (``auto``)."""
    if mode == "auto":
        return DemoPorts(
            gateway=free_port(),
            xds=free_port(),
            admin=free_port(),
            console=free_port(),
            metrics=free_port(),
            envoy_admin=free_port(),
            etcd=0,
            sidecar=free_port(),
            caller=free_port(),
        )
    if mode != "fixed":
        raise DemoError(f"--ports must be 'fixed' or 'auto', not {mode!r}")
    taken = [f"{port} ({what})" for what, port in FIXED_REQUIRED.items() if port_in_use(port)]
    if taken:
        raise DemoError(
            f"port {', '.join(taken)} on {HOST} is already in use; is another demo or meshd "
            f"running? See who holds it with `ss -ltnp 'sport = :{taken[0].split()[0]}'`, "
            "or run the demo on free ports with `--ports auto` (env DEMO_PORTS=auto)."
        )
    chosen: dict[str, int] = {}
    notes: list[str] = []
    for what, port in FIXED_PREFERRED.items():
        if port_in_use(port):
            # etcd picks its own free port (0); the others need a number now.
            chosen[what] = 0 if what == "etcd" else free_port()
            notes.append(f"port {port} ({what}) was taken: using another one")
        else:
            chosen[what] = port
    return DemoPorts(**FIXED_REQUIRED, **chosen, notes=tuple(notes))


# --------------------------------------------------------------------------- helpers


def console_script(name: str) -> str:
    """A console script of this virtualenv (next to ``sys.executable``), else from PATH.

    Next to ``sys.executable`` first: ``make demo`` runs ``.venv/bin/python`` without
    activating the venv, so PATH may hold another (or no) ``meshd``.
    """
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise DemoError(f"`{name}` not found next to {sys.executable} nor on PATH: pip install -e .")


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a user types it from here: relative when under the cwd, shell-quoted."""
    p = Path(path)
    with contextlib.suppress(ValueError):
        p = p.absolute().relative_to(Path.cwd())
    return shlex.quote(str(p))


def demo_processes(data_dir: Path, exclude: Sequence[int] = ()) -> list[int]:
    """Pids of etcd, meshd and Envoy processes started by a demo on ``data_dir``.

    Matched on the exact arguments the demo gives them (from ``/proc/<pid>/cmdline``, whose
    arguments end in NUL), so that e.g. a ``tail -f`` of a log there does not count.
    """
    d = str(data_dir).encode()
    needles = (
        b"--data-dir=" + d + b"/etcd/data\0",  # etcd
        b"--data-dir\0" + d + b"\0",  # meshd
        # the Envoys
        *(b"-c\0" + d + f"/{name}.yaml\0".encode() for name in ENVOY_CONFIGS),
    )
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if any(needle in cmdline for needle in needles):
            found.append(int(entry.name))
    return sorted(found)


def _ancestors() -> list[int]:
    """This process and its parents (``--data-dir DIR`` in ours looks like meshd's)."""
    pids = [os.getpid()]
    pid = os.getppid()
    while pid > 1:
        pids.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        # Field 4 is the parent pid; field 2 (the name) may contain spaces, hence rsplit on ")".
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _share(counts: Counter[str], name: str) -> float:
    total = sum(counts.values())
    return 100.0 * counts[name] / total if total else 0.0


def _format_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))


# --------------------------------------------------------------------------- registry values


def route_value(weights: dict[str, int], weight_field: str = "weight") -> dict[str, Any]:
    """Route ``default/web-split`` on listener ``public``: subset -> weight.

    ``weight_field`` exists for the typo example only (``"wieght"``).
    """
    return {
        "listener": "public",
        "match": {"prefix": "/"},
        "destinations": [
            {"service": "default/web", "subset": subset, weight_field: weight}
            for subset, weight in weights.items()
        ],
    }


def seed_values(ports: DemoPorts, backends: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Every registry entry of the demo, keyed by etcd key (values as in registry.md)."""
    values: dict[str, dict[str, Any]] = {
        f"{PREFIX}services/default/web": {
            "protocol": "http",
            "port": 8080,  # a default only: each endpoint below names its own port
            "subsets": {name: {"version": name} for name in backends},
        },
        f"{PREFIX}listeners/public": {
            "address": HOST,
            "port": ports.gateway,
            "protocol": "http",
            "nodes": [NODE_CLUSTER],
        },
        ROUTE_KEY: route_value({"v1": 90, "v2": 10}),
    }
    for name, port in backends.items():
        values[f"{PREFIX}endpoints/default/web/web-{name}"] = {
            "address": HOST,
            "port": port,
            "labels": {"version": name},
        }
    return values


def identity_values(ports: DemoPorts, api_port: int) -> dict[str, dict[str, Any]]:
    """The identity part of the registry: namespace ``shop`` strict, ``shop/api`` behind a
    sidecar (inbound ``ports.sidecar`` -> the backend on ``api_port``), ``shop/reports``
    with an outbound listener for its sidecar, ``/api`` on the gateway, and the deny policy."""
    return {
        f"{PREFIX}namespaces/shop": {"mtls": "strict"},
        f"{PREFIX}services/shop/api": {
            "port": ports.sidecar,
            "sidecar": {"inbound_port": ports.sidecar, "app_port": api_port},
        },
        f"{PREFIX}endpoints/shop/api/api-1": {"address": HOST},
        f"{PREFIX}services/shop/reports": {"port": 8080},
        f"{PREFIX}listeners/reports-out": {
            "address": HOST,
            "port": ports.caller,
            "protocol": "http",
            "nodes": [CALLER_CLUSTER],
        },
        f"{PREFIX}routes/shop/api-path": {
            "listener": "public",
            "match": {"prefix": "/api"},
            "destinations": [{"service": "shop/api"}],
        },
        POLICY_KEY: {
            "target": "api",
            "action": "deny",
            "from": [{"identities": ["shop/reports"]}],
        },
    }


def _compact(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _seed(endpoint: str, values: dict[str, dict[str, Any]]) -> int:
    # Imported here: the etcd client pulls in grpc, which the --help path does not need.
    from adapters.etcd import EtcdRegistry

    registry = EtcdRegistry(endpoint, PREFIX)
    try:
        # One transaction: meshd sees the whole demo registry at one revision.
        return await registry.txn(puts={k: _compact(v).encode() for k, v in values.items()})
    finally:
        await registry.close()


# --------------------------------------------------------------------------- meshd


class MeshdProcess:
    """``meshd`` as a subprocess in its own session; its output goes to a log file.

    A reader thread copies every line to the log, echoes warnings and errors (with their
    continuation lines) to ``echo``, and notices the "meshd ready" line.
    """

    def __init__(self, cmd: Sequence[str], log_path: Path, echo: TextIO) -> None:
        self.log_path = log_path
        self.ready_line: str | None = None
        self._ready = threading.Event()
        self._echo = echo
        # If the demo is killed without a chance to clean up, the kernel sends meshd SIGTERM
        # (only from the main thread: "parent death" is the death of the forking thread).
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        self._log: IO[str] = log_path.open("a", encoding="utf-8")
        self._log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {list(cmd)}\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Own session: Ctrl-C reaches only the demo, which then stops everything in order.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="meshd-log", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """Process id (of meshd itself: setpriv execs it)."""
        return self.proc.pid

    def running(self) -> bool:
        """Whether meshd is alive."""
        return self.proc.poll() is None

    def is_ready(self) -> bool:
        """Whether meshd logged its ready line."""
        return self._ready.is_set()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        echoing = False
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            level = _LOG_LINE.match(line)
            if level:
                echoing = level.group(1) in _ECHO_LEVELS
            if echoing:
                self._echo.write(f"meshd | {line}")
                self._echo.flush()
            if not self._ready.is_set() and "meshd ready" in line:
                self.ready_line = line.strip()
                self._ready.set()

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of meshd's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = _STOP_TIMEOUT) -> int | None:
        """SIGTERM (meshd closes streams and exits 0), SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._reader.join(2.0)
        self._log.close()
        return self.proc.returncode


# --------------------------------------------------------------------------- the demo


class Demo:
    """Start everything, print the banner, then wait (or ``--check``); always clean up."""

    def __init__(self, data_dir: Path, ports_mode: str, check: bool, requests: int) -> None:
        self.data_dir = data_dir.absolute()
        self.ports_mode = ports_mode
        self.check = check
        self.requests = requests
        self.stop_requested = threading.Event()
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self._t0 = time.monotonic()
        # Filled while starting; everything here is stopped by _cleanup, in reverse.
        self.ports: DemoPorts | None = None
        self.etcd: EmbeddedEtcd | None = None
        self.meshd: MeshdProcess | None = None
        self.backends: dict[str, BackendProcess] = {}
        self.envoy: EnvoyProcess | None = None
        self.api_backend: BackendProcess | None = None
        #: The sidecar Envoys: "api" (of shop/api) and "reports" (of shop/reports).
        self.sidecars: dict[str, EnvoyProcess] = {}
        self._cleanups: list[tuple[str, Callable[[], object]]] = []
        self._reported_exits: set[str] = set()
        self.etcdctl = shown_path(console_script("etcdctl"))
        self.meshctl = shown_path(console_script("meshctl"))
        self.envoy_cmd = shown_path(console_script("envoy"))

    # ---- signals

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stop_requested.is_set():
            self.err.write(f"\n{signal.Signals(signum).name}: stopping everything ...\n")
            self.err.flush()
        self.stop_requested.set()

    def _check_stop(self) -> None:
        if self.stop_requested.is_set():
            raise _Interrupted

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll until ``predicate``; return the seconds it took. Stops early on a signal."""
        start = time.monotonic()
        while not predicate():
            self._check_stop()
            self._check_children()
            if time.monotonic() - start > timeout:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(_POLL)
        return time.monotonic() - start

    def _exited(self) -> dict[str, str]:
        """Children that died on their own: name -> what to tell (exit code, log tail)."""
        exited: dict[str, str] = {}
        if self.etcd is not None and not self.etcd.running:
            exited["etcd"] = f"etcd exited; log {shown_path(self.etcd.log_path)}"
        if self.meshd is not None and not self.meshd.running():
            exited["meshd"] = (
                f"meshd exited with code {self.meshd.proc.returncode}; "
                f"log {shown_path(self.meshd.log_path)}:\n{self.meshd.log_tail()}"
            )
        if self.envoy is not None and self.envoy.proc is not None and not self.envoy.running():
            exited["Envoy"] = (
                f"Envoy exited with code {self.envoy.proc.returncode}; "
                f"log {shown_path(self.envoy.log_path)}:\n{self.envoy.log_tail()}"
            )
        for name, sidecar in self.sidecars.items():
            if sidecar.proc is not None and not sidecar.running():
                exited[f"sidecar {name}"] = (
                    f"sidecar {name} exited with code {sidecar.proc.returncode}; "
                    f"log {shown_path(sidecar.log_path)}:\n{sidecar.log_tail()}"
                )
        backends = dict(self.backends)
        if self.api_backend is not None:
            backends["api"] = self.api_backend
        for name, backend in backends.items():
            if backend.proc.poll() is not None:
                exited[name] = f"backend {name} exited with code {backend.proc.returncode}"
        return exited

    def _check_children(self) -> None:
        """While starting or checking, any child that died is a failure."""
        for message in self._exited().values():
            raise DemoError(message)

    # ---- run

    def run(self) -> int:
        """The whole demo; returns the exit code."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._start()
            self._print_banner()
            if self.check:
                self._run_check()
                self.out.write("demo check passed\n")
            else:
                self._wait_until_stopped()
            return 0
        except _Interrupted:
            if self.check:
                self.err.write("demo: check interrupted\n")
                return 1
            return 0
        except DemoError as exc:
            self.err.write(f"demo: {exc}\n")
            self._diagnose()
            return 1
        except Exception:  # a bug or an unexpected failure: say where, then still clean up
            self.err.write(f"demo: unexpected error\n{traceback.format_exc()}")
            self._diagnose()
            return 1
        finally:
            # Our handler only sets a flag, so a second Ctrl-C cannot cut the clean-up short
            # and leave processes behind.
            self._cleanup()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self) -> None:
        self._refuse_leftovers()
        self.ports = ports = choose_ports(self.ports_mode)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for note in ports.notes:
            self.err.write(f"demo: {note}\n")

        # 1. etcd, from a clean data dir: the demo's registry is what the banner describes.
        from adapters.etcd import EmbeddedEtcd, EmbeddedEtcdError

        etcd_dir = self.data_dir / "etcd"
        shutil.rmtree(etcd_dir, ignore_errors=True)
        self.etcd = EmbeddedEtcd(etcd_dir, name="demo", client_port=ports.etcd)
        self._cleanups.append(("etcd", self.etcd.stop))
        try:
            self.etcd.start_sync()
        except EmbeddedEtcdError as exc:
            raise DemoError(str(exc)) from exc
        self._check_stop()

        # 2. meshd: its start-up (imports, first list) is the slow part, so overlap the rest.
        meshd_cmd = [
            console_script("meshd"),
            *("--etcd", self.etcd.endpoint, "--prefix", PREFIX),
            *("--xds", f"{HOST}:{ports.xds}", "--admin", f"{HOST}:{ports.admin}"),
            *("--metrics", f"{HOST}:{ports.metrics}", "--data-dir", str(self.data_dir)),
            *("--console", f"{HOST}:{ports.console}"),
        ]
        self.meshd = MeshdProcess(meshd_cmd, self.data_dir / "meshd.log", self.err)
        self._cleanups.append(("meshd", self.meshd.stop))

        # 3. backends.
        for name in ("v1", "v2"):
            self._check_stop()
            backend = BackendProcess(name, host=HOST)
            self.backends[name] = backend
            self._cleanups.append((f"backend {name}", backend.stop))
        self._check_stop()
        self.api_backend = BackendProcess("api", host=HOST)
        self._cleanups.append(("backend api", self.api_backend.stop))

        # 4. registry.
        self._check_stop()
        values = seed_values(ports, {n: b.port for n, b in self.backends.items()})
        values.update(identity_values(ports, self.api_backend.port))
        asyncio.run(_seed(self.etcd.endpoint, values))

        # 5. Envoy: it retries the ADS stream every 0.1-0.5 s until meshd listens.
        from xds_server.cli.bootstrap import bootstrap, render

        config = bootstrap(
            NODE_ID,
            NODE_CLUSTER,
            xds_host=HOST,
            xds_port=ports.xds,
            admin_port=ports.envoy_admin,
        )
        config_path = self.data_dir / "gateway.yaml"
        config_path.write_text(render(config, "yaml"))
        self._check_stop()
        self.envoy = EnvoyProcess(config_path, self.data_dir, name="gateway")
        self._cleanups.append(("Envoy", self.envoy.stop))
        self.envoy.start()

        # 6. the sidecars of shop/api and shop/reports (admin on free ports).
        for name, node, cluster in (
            ("api", API_NODE, API_CLUSTER),
            ("reports", CALLER_NODE, CALLER_CLUSTER),
        ):
            self._check_stop()
            config = bootstrap(node, cluster, xds_host=HOST, xds_port=ports.xds, admin_port=0)
            config_path = self.data_dir / f"sidecar-{name}.yaml"
            config_path.write_text(render(config, "yaml"))
            sidecar = EnvoyProcess(config_path, self.data_dir, name=f"sidecar-{name}")
            self.sidecars[name] = sidecar
            self._cleanups.append((f"sidecar {name}", sidecar.stop))
            sidecar.start()

        meshd = self.meshd
        self._wait(meshd.is_ready, _START_TIMEOUT, "meshd's ready line")
        self._wait(self._gateway_answers, _START_TIMEOUT, f"an answer on {self.gateway_url}")
        self._wait(
            self._identity_answers,
            _START_TIMEOUT,
            f"200 on {self.gateway_url}api over mTLS and 403 on {self.caller_url}",
        )

    def _gateway_answers(self) -> bool:
        try:
            status, body, _ = http_get(self.gateway_url, timeout=1.0)
        except OSError:
            return False
        return status == 200 and body.strip() in self.backends

    def _identity_answers(self) -> bool:
        """The gateway gets 200 from shop/api over mTLS; shop/reports' sidecar gets 403."""
        try:
            status, body, _ = http_get(f"{self.gateway_url}api", timeout=1.0)
            if (status, body.strip()) != (200, "api"):
                return False
            status, _, _ = http_get(self.caller_url, timeout=1.0, headers={"host": API_CLUSTER})
        except OSError:
            return False
        return status == 403

    @property
    def caller_url(self) -> str:
        """shop/reports' outbound listener (its sidecar) as a URL."""
        assert self.ports is not None
        return f"http://{HOST}:{self.ports.caller}/"

    @property
    def gateway_url(self) -> str:
        """The gateway listener's URL."""
        assert self.ports is not None
        return f"http://{HOST}:{self.ports.gateway}/"

    def _refuse_leftovers(self) -> None:
        """A previous demo on the same data dir still running would share its etcd dir."""
        left = demo_processes(self.data_dir, exclude=_ancestors())
        if left:
            raise DemoError(
                f"processes of an earlier demo still use {shown_path(self.data_dir)} "
                f"(pids {', '.join(map(str, left))}): stop that demo with Ctrl-C, "
                f"or `kill {' '.join(map(str, left))}`"
            )

    def _diagnose(self) -> None:
        """After a failure, print what explains most failures: meshd's and Envoy's view."""
        if self.meshd is not None:
            self.err.write(f"--- tail of {shown_path(self.meshd.log_path)}:\n")
            self.err.write(self.meshd.log_tail(15) + "\n")
        if self.envoy is not None and self.envoy.running():
            try:
                stats = self.envoy.stats(
                    r"(control_plane\.connected_state|update_rejected|\.version$)"
                )
            except (OSError, RuntimeError, TimeoutError) as exc:
                stats = {"(admin unreachable)": 0}
                self.err.write(f"--- Envoy admin: {exc}\n")
            self.err.write(f"--- Envoy stats: {json.dumps(stats, sort_keys=True)}\n")
            self.err.write(f"--- tail of {shown_path(self.envoy.log_path)}:\n")
            self.err.write(self.envoy.log_tail(10) + "\n")
        for sidecar in self.sidecars.values():
            self.err.write(f"--- tail of {shown_path(sidecar.log_path)}:\n")
            self.err.write(sidecar.log_tail(10) + "\n")
        self.err.flush()

    def _wait_until_stopped(self) -> None:
        """Wait for Ctrl-C. A child that dies is reported once, and the rest keeps running:
        killing a backend or meshd on purpose is part of exploring the mesh."""
        while not self.stop_requested.wait(0.25):
            for name, message in self._exited().items():
                if name not in self._reported_exits:
                    self._reported_exits.add(name)
                    self.err.write(f"demo: {message}\n(the rest keeps running; Ctrl-C stops all)\n")
                    self.err.flush()

    def _cleanup(self) -> None:
        """Stop everything that was started, newest first; report what would not stop."""
        close_http_connections()
        failures: list[str] = []
        while self._cleanups:
            what, stop = self._cleanups.pop()
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                failures.append(f"{what}: {exc}")
        for failure in failures:
            self.err.write(f"demo: could not stop {failure}\n")
        if self.meshd is not None or self.etcd is not None:
            self.err.write("demo: stopped everything it started\n")

    # ---- banner

    def commands(self) -> dict[str, str]:
        """The copy-pasteable commands of the banner (``--check`` runs them as printed)."""
        assert self.ports is not None and self.etcd is not None
        ctl = f"ETCDCTL_API=3 {self.etcdctl} --endpoints={self.etcd.endpoint}"
        fifty = _compact(route_value({"v1": 50, "v2": 50}))
        typo = _compact(route_value({"v1": 75, "v2": 25}, weight_field="wieght"))
        p = self.ports
        data = shown_path(self.data_dir)
        ctl_admin = f"{self.meshctl} --admin {HOST}:{p.admin}"
        return {
            "traffic": (
                f"for i in $(seq 20); do curl -s {HOST}:{p.gateway}/; done | sort | uniq -c"
            ),
            "split": f"{ctl} put {ROUTE_KEY} '{fifty}'",
            "typo": f"{ctl} put {ROUTE_KEY} '{typo}'",
            "errors": f"{ctl} get --prefix {PREFIX}status/errors/",
            "registry": f"{ctl} get --prefix {PREFIX} --keys-only",
            "metrics": (
                f"curl -s {HOST}:{p.metrics}/metrics"
                " | grep -E '^meshd_(registry_rejected_entries|connected_proxies|xds_nacks)'"
            ),
            "envoy_routes": (
                f"curl -s '{HOST}:{p.envoy_admin}/config_dump?resource=dynamic_route_configs'"
                " | grep -B1 -A1 '\"weight\"'"
            ),
            "envoy_stats": (
                f"curl -s '{HOST}:{p.envoy_admin}/stats?filter=update_(success|rejected)'"
            ),
            "bootstrap": (
                f"{self.meshctl} bootstrap --node-id gateway-2 --node-cluster {NODE_CLUSTER} "
                f"--xds {HOST}:{p.xds} --admin-port 0 > {data}/gateway-2.yaml"
            ),
            "envoy": (
                f"{self.envoy_cmd} -c {data}/gateway-2.yaml --disable-hot-restart --concurrency 1"
            ),
            "ctl_split": f"{ctl_admin} split web-split web@v1=90 web@v2=10",
            "ctl_routes": f"{ctl_admin} get routes",
            "ctl_status": f"{ctl_admin} proxy-status",
            "ctl_errors": f"{ctl_admin} errors",
            "ctl_watch": f"{ctl_admin} watch",
            "mtls_gateway": f"curl -s -w '  HTTP %{{http_code}}\\n' {HOST}:{p.gateway}/api",
            "mtls_denied": (
                f"curl -s -w '  HTTP %{{http_code}}\\n' -H 'Host: {API_CLUSTER}' {HOST}:{p.caller}/"
            ),
            "mtls_stats": (
                f"curl -s {self._admin_of(self.sidecars.get('api'))}/stats"
                " | grep -E 'ssl.handshake|rbac.denied'"
            ),
            "policy_check": f"{ctl_admin} policy check --from shop/reports --to shop/api",
            "policy": f"{ctl} get {POLICY_KEY}",
        }

    @staticmethod
    def _admin_of(envoy: EnvoyProcess | None) -> str:
        """``host:port`` of an Envoy's admin listener (a placeholder before it is up)."""
        if envoy is None:
            return "<admin>"
        host, port = envoy.admin_address
        return f"{host}:{port}"

    def _print_banner(self) -> None:
        assert self.ports is not None and self.etcd is not None and self.meshd is not None
        assert self.envoy is not None
        p = self.ports
        c = self.commands()
        admin_host, admin_port = self.envoy.admin_address
        took = time.monotonic() - self._t0
        rows = [
            (
                "etcd",
                f"{self.etcd.endpoint}",
                self.etcd.pid,
                f"data {shown_path(self.etcd.data_dir)}",
            ),
            (
                "meshd",
                f"xDS {HOST}:{p.xds}, admin {HOST}:{p.admin}, metrics :{p.metrics}/metrics",
                self.meshd.pid,
                f"log {shown_path(self.meshd.log_path)}",
            ),
            (
                "Envoy",
                f"http://{HOST}:{p.gateway}/, admin http://{admin_host}:{admin_port}/",
                self.envoy.pid,
                f"node {NODE_ID}, cluster {NODE_CLUSTER}, log {shown_path(self.envoy.log_path)}",
            ),
        ]
        for name, backend in self.backends.items():
            rows.append((f"backend {name}", backend.url, backend.pid, f"answers {name!r}"))
        api, reports = self.sidecars["api"], self.sidecars["reports"]
        assert self.api_backend is not None
        rows += [
            (
                "sidecar",
                f"mTLS {HOST}:{p.sidecar}, admin http://{self._admin_of(api)}/",
                api.pid,
                f"node {API_NODE}, cluster {API_CLUSTER}, log {shown_path(api.log_path)}",
            ),
            (
                "caller",
                f"http://{HOST}:{p.caller}/, admin http://{self._admin_of(reports)}/",
                reports.pid,
                f"node {CALLER_NODE}, cluster {CALLER_CLUSTER}, log {shown_path(reports.log_path)}",
            ),
            (
                "api app",
                self.api_backend.url,
                self.api_backend.pid,
                "answers 'api', behind sidecar",
            ),
        ]
        lines = [
            "",
            f"APG Service Mesh demo is up ({took:.1f} s). Running, until Ctrl-C:",
            "",
        ]
        for name, where, pid, extra in rows:
            lines.append(f"  {name:<10} {where:<62} pid {pid:<7} {extra}")
        lines += [
            "",
            f"Web console: http://{HOST}:{p.console}/ (the mesh at a glance, live; the split "
            "editor is on default/web's page)",
            "",
            f"Registry ({PREFIX} in etcd): service default/web (subsets v1, v2 by label "
            "'version'), one endpoint per backend,",
            f"listener 'public' ({HOST}:{p.gateway}, nodes of cluster '{NODE_CLUSTER}'), "
            "route default/web-split: v1 90%, v2 10%.",
            f"  {c['registry']}",
            "",
            f"Three things to try (commands run from {Path.cwd()}):",
            "",
            "1. See the 90/10 split (about 18 v1, 2 v2):",
            f"     {c['traffic']}",
            "",
            "2. Move to 50/50 with one etcd write, then run 1. again (Envoy has it in a second):",
            f"     {c['split']}",
            f"     {c['envoy_routes']}",
            "",
            '3. Make a typo ("wieght"): it is rejected, traffic does not move, the last good',
            "   split stays in force, and meshd says why (here, in its log, in etcd, in metrics):",
            f"     {c['typo']}",
            f"     {c['errors']}",
            f"     {c['metrics']}",
            f"     {c['envoy_stats']}",
            "   Run 2. again to fix it: the error disappears.",
            "",
            "4. The same through meshd's admin API: back to 90/10 in one call (it also replaces",
            "   the typo'd destinations), then see the route, what the proxy runs, and no errors:",
            f"     {c['ctl_split']}",
            f"     {c['ctl_routes']}",
            f"     {c['ctl_status']}",
            f"     {c['ctl_errors']}",
            f"     {c['ctl_watch']}        # live events, Ctrl-C to stop",
            "",
            "5. Identity: service shop/api runs behind a sidecar Envoy that takes mTLS only",
            "   (namespace shop is strict; meshd issues every proxy's certificate over SDS).",
            "   The gateway reaches it on /api over mTLS (200); the sidecar of shop/reports is",
            "   refused by policy shop/deny-reports (403). See both in the sidecar's stats (TLS",
            "   handshakes, RBAC denials) and ask meshd who may call whom:",
            f"     {c['mtls_gateway']}  # api, HTTP 200",
            f"     {c['mtls_denied']}  # RBAC: access denied, HTTP 403",
            f"     {c['mtls_stats']}",
            f"     {c['policy_check']}",
            f"     {c['policy']}",
            "",
            "Attach another Envoy to meshd. Node cluster 'gateway' gets the same listener, and the",
            f"two Envoys share port {p.gateway} (SO_REUSEPORT). Ctrl-C here leaves it running:",
            f"     {c['bootstrap']}",
            f"     {c['envoy']}",
            "",
            f"Logs and config in {shown_path(self.data_dir)}/. Press Ctrl-C to stop everything.",
            "",
        ]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    # ---- --check

    def _shell(self, command: str) -> str:
        """Run one banner command exactly as printed (bash, from the cwd); return stdout."""
        done = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=20, check=False
        )
        if done.returncode != 0:
            raise DemoError(f"`{command}` failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _measure(self, n: int) -> Counter[str]:
        self._check_stop()
        return count_bodies(self.gateway_url, n)

    def _expect_share(self, counts: Counter[str], v2: float, tolerance: float, what: str) -> None:
        share = _share(counts, "v2")
        verdict = "ok" if abs(share - v2) <= tolerance else "FAILED"
        self.out.write(
            f"check: {what}: v2 {share:.1f}% (want {v2:g} +/- {tolerance:g}) "
            f"[{_format_counts(counts)}] {verdict}\n"
        )
        self.out.flush()
        if verdict != "ok" or set(counts) - {"v1", "v2"}:
            raise DemoError(f"{what}: v2 share {share:.1f}%, counts {_format_counts(counts)}")

    def _run_check(self) -> None:
        c = self.commands()
        n = self.requests
        # 1. The seeded split. Tolerances: a few standard deviations of the binomial at n.
        self._expect_share(self._measure(n), 10, 2.5, f"90/10 over {n} requests")
        counts: Counter[str] = Counter()
        for line in self._shell(c["traffic"]).splitlines():  # `uniq -c`: "  18 v1"
            number, name = line.split()
            counts[name] += int(number)
        if sum(counts.values()) != 20 or set(counts) - {"v1", "v2"}:
            raise DemoError(f"banner curl loop answered {dict(counts)}")

        # 2. The banner's 50/50 put, until traffic follows (batches of 50: at 10% a batch
        # with 20+ v2 is vanishingly rare, at 50% it is the norm).
        self._shell(c["split"])
        took = self._wait(
            lambda: self._measure(50)["v2"] >= 20, 10.0, "the 50/50 split to reach traffic"
        )
        self.out.write(f"check: 50/50 reached traffic {took:.2f} s after the etcd put\n")
        self._expect_share(self._measure(n), 50, 5, f"50/50 over {n} requests")

        # 3. The typo: an error under status/errors/, and traffic stays at 50/50.
        self._shell(c["typo"])
        took = self._wait(
            lambda: "wieght" in self._shell(c["errors"]), 10.0, "the typo in status/errors/"
        )
        self.out.write(f"check: typo reported in etcd {took:.2f} s after the put\n")
        report = self._shell(c["errors"])
        if ROUTE_KEY not in report:
            raise DemoError(f"error report does not name {ROUTE_KEY}:\n{report}")
        metrics = self._shell(c["metrics"])
        if not re.search(r'rejected_entries\{kind="routes?"\} [1-9]', metrics):
            raise DemoError(f"no rejected route in meshd's metrics:\n{metrics}")
        self._expect_share(self._measure(n // 2), 50, 7, "after the typo, still 50/50")

        # 4. The fix clears the error.
        self._shell(c["split"])
        took = self._wait(lambda: not self._shell(c["errors"]).strip(), 10.0, "the error to clear")
        self.out.write(f"check: error cleared {took:.2f} s after the fix\n")

        # 5. meshctl: back to 90/10 through the admin API; the proxy is SYNCED.
        self._shell(c["ctl_split"])
        took = self._wait(
            lambda: self._measure(50)["v2"] <= 12, 10.0, "the meshctl split to reach traffic"
        )
        self.out.write(f"check: meshctl split reached traffic within {took:.2f} s\n")
        self._expect_share(self._measure(n), 10, 2.5, f"90/10 again over {n} requests")
        if "web@v1=90,web@v2=10" not in self._shell(c["ctl_routes"]):
            raise DemoError("meshctl get routes does not show the 90/10 split")
        status = self._shell(c["ctl_status"])
        if NODE_ID not in status or status.count("SYNCED") < 4:
            raise DemoError(f"meshctl proxy-status does not show {NODE_ID} SYNCED:\n{status}")
        if "no rejected registry entries" not in self._shell(c["ctl_errors"]):
            raise DemoError("meshctl errors still lists a rejected entry")
        self.out.write("check: meshctl split, get routes, proxy-status, errors ok\n")

        # 6. Identity: the banner's curls, the sidecar's stats and meshctl policy check.
        self._expect_http(c["mtls_gateway"], 200, "api")
        self._expect_http(c["mtls_denied"], 403, "RBAC: access denied")
        stats = self._shell(c["mtls_stats"])
        for stat in (r"ssl\.handshake", r"rbac\.denied"):
            if not re.search(rf"{stat}: [1-9]", stats):
                raise DemoError(f"no {stat} counted in shop/api's sidecar stats:\n{stats}")
        verdict = self._shell(c["policy_check"]).splitlines()
        if verdict[:1] != ["deny"]:
            raise DemoError(f"meshctl policy check does not say deny: {verdict}")
        self.out.write(
            "check: gateway -> shop/api over mTLS 200, shop/reports -> shop/api 403, "
            "handshakes and RBAC denials in the sidecar's stats, policy check says deny\n"
        )

        # 7. The web console the banner names: default/web's page shows its route's split.
        assert self.ports is not None
        status, page, _ = http_get(f"http://{HOST}:{self.ports.console}/services/default/web")
        if status != 200 or "Route default/web-split" not in page or "Save split" not in page:
            raise DemoError(f"the console's page of default/web answered {status}")
        self.out.write("check: the web console shows default/web and its split editor\n")

    def _expect_http(self, command: str, status: int, body: str) -> None:
        """Run a banner curl (``-w '  HTTP %{http_code}'``); check its status and body."""
        out = self._shell(command)
        m = re.search(r"\s*HTTP (\d{3})\s*$", out)
        got = (int(m.group(1)), out[: m.start()].strip()) if m else (0, out)
        if got != (status, body):
            raise DemoError(f"`{command}` answered {got}, want {(status, body)}")


# --------------------------------------------------------------------------- entry point


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m integration.demo",
        description=(
            "Start etcd, meshd, three backends, an Envoy gateway with a 90/10 split, and two "
            "sidecar Envoys: shop/api (strict mTLS) and shop/reports (denied by a policy)."
        ),
    )
    p.add_argument(
        "--check",
        action="store_true",
        default=_env_flag("DEMO_CHECK"),
        help="run the scenario non-interactively and exit 0 if it holds (env DEMO_CHECK=1)",
    )
    p.add_argument(
        "--ports",
        choices=("fixed", "auto"),
        default=os.environ.get("DEMO_PORTS", "fixed"),
        help="fixed: 10000/18000/... as documented; auto: free ports (env DEMO_PORTS)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DEMO_DATA_DIR", ".meshd/demo")),
        help="logs, bootstrap and etcd data (env DEMO_DATA_DIR; default .meshd/demo)",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="--check: requests per split measurement (default 2000)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; the exit code is 0 after a clean stop or a passed check."""
    args = parse_args(argv)
    if args.requests < 100:
        print("demo: --requests must be at least 100", file=sys.stderr)
        return 2
    try:
        demo = Demo(args.data_dir, args.ports, args.check, args.requests)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return demo.run()


if __name__ == "__main__":
    sys.exit(main())
