"""``make demo`` end to end: the real demo program as a subprocess, on free ports.

The demo's fixed ports (10000, 18000, 9102, ...) may be in use by a developer's own demo, so
every run here uses ``--ports auto`` and a data dir of its own. "Nothing left behind" is
checked two ways: each pid the banner names is gone, and no process on this machine still
names the test's data dir on its command line.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from integration.harness import http_get
from tests.support.paths import REPO_ROOT
from tests.support.wait import wait_until

BANNER_END = "Press Ctrl-C to stop everything."


def demo_cmd(data_dir: Path, *extra: str) -> list[str]:
    """The demo as ``make demo`` runs it, but on free ports and in ``data_dir``."""
    return [
        sys.executable,
        "-m",
        "integration.demo",
        "--ports",
        "auto",
        "--data-dir",
        str(data_dir),
        *extra,
    ]


def banner_pids(text: str) -> dict[str, int]:
    """``{"etcd": pid, "meshd": pid, "Envoy": pid, "backend v1": pid, ...}`` from the banner."""
    return {
        name: int(pid)
        for name, pid in re.findall(r"^  (etcd|meshd|Envoy|backend v\d) .*? pid (\d+)", text, re.M)
    }


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def naming(text: str) -> list[str]:
    """Command lines of live processes (other than this one) that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and alive(int(entry.name)):
            found.append(f"{entry.name}: {cmdline}")
    return found


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from ``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def assert_nothing_left(pids: list[int], data_dir: Path) -> None:
    # The demo reaps its children before exiting, but allow the kernel a moment.
    wait_until(
        lambda: [p for p in pids if alive(p)],
        "the demo's processes to be gone",
        3.0,
        until=lambda left: left == [],
    )
    assert naming(str(data_dir)) == []


class LineReader:
    """Reads a child's stdout on a thread, so the test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self.lines.put(line)
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, marker: str, timeout: float) -> str:
        """Everything read until a line containing ``marker``; fails on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {marker!r} within {timeout} s; output:\n{''.join(self.seen)}")
            if line is None:
                pytest.fail(f"demo ended before {marker!r}; output:\n{''.join(self.seen)}")
            self.seen.append(line)
            if marker in line:
                return "".join(self.seen)


def start_interactive(data_dir: Path) -> tuple[subprocess.Popen[str], LineReader]:
    proc = subprocess.Popen(
        demo_cmd(data_dir),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, LineReader(proc)


def stop_and_wait(proc: subprocess.Popen[str], sig: int, timeout: float) -> tuple[int, float]:
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"demo still running {timeout} s after {signal.Signals(sig).name}")
    return code, time.monotonic() - start


def test_check_mode_runs_the_scenario_and_leaves_nothing(tmp_path: Path) -> None:
    """``--check``: 90/10, the banner's 50/50 put, the typo and its report, the fix, then
    identity (200 over mTLS, 403 by policy, stats, policy check); exit 0."""
    data_dir = tmp_path / "demo"
    done = subprocess.run(
        demo_cmd(data_dir, "--check"),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "demo check passed" in done.stdout
    for step in (
        "90/10 over",
        "50/50 reached traffic",
        "typo reported",
        "error cleared",
        "shop/api over mTLS 200, shop/reports -> shop/api 403",
        "the web console shows default/web and its split editor",
    ):
        assert step in done.stdout, out
    assert re.search(r"Web console: http://127\.0\.0\.1:\d+/", done.stdout), done.stdout
    # The banner: the three things to try, the error report and the bootstrap command.
    assert "for i in $(seq 20); do curl -s 127.0.0.1:" in done.stdout
    assert "ETCDCTL_API=3 " in done.stdout and "put /mesh/routes/default/web-split" in out
    assert '"wieght":' in done.stdout
    assert "get --prefix /mesh/status/errors/" in done.stdout
    assert "meshctl bootstrap --node-id gateway-2 --node-cluster gateway" in done.stdout
    # Identity: the mTLS call, the denied caller, the sidecar's stats and the policy check.
    assert "grep -E 'ssl.handshake|rbac.denied'" in done.stdout
    assert "policy check --from shop/reports --to shop/api" in done.stdout
    # meshd's warning about the typo is echoed on the demo's own terminal.
    assert re.search(r"meshd \| .*WARNING.*web-split.*wieght", done.stderr), done.stderr
    assert (data_dir / "gateway.yaml").is_file()
    assert "meshd ready" in (data_dir / "meshd.log").read_text()

    pids = banner_pids(done.stdout)
    assert sorted(pids) == ["Envoy", "backend v1", "backend v2", "etcd", "meshd"], out
    assert_nothing_left(list(pids.values()), data_dir)


def test_sigint_stops_everything_in_time(tmp_path: Path) -> None:
    """Ctrl-C on a running demo: exit 0 within 10 s, every process it started gone."""
    data_dir = tmp_path / "demo"
    proc, reader = start_interactive(data_dir)
    try:
        banner = reader.until(BANNER_END, timeout=30)
        pids = banner_pids(banner)
        assert len(pids) == 5, banner
        assert all(alive(p) for p in pids.values())
        # The banner's gateway answers while the demo waits.
        url = re.search(r"Envoy +(http://\S+/),", banner)
        assert url is not None, banner
        status, body, _ = http_get(url.group(1))
        assert (status, body.strip() in ("v1", "v2")) == (200, True)

        code, took = stop_and_wait(proc, signal.SIGINT, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = reader.until("stopped everything it started", timeout=1)
    assert code == 0, rest
    assert took < 10
    assert_nothing_left(list(pids.values()), data_dir)


def test_sigterm_during_start_up_stops_what_was_started(tmp_path: Path) -> None:
    """A signal before the banner (etcd and meshd already up) still cleans up everything."""
    data_dir = tmp_path / "demo"
    proc, reader = start_interactive(data_dir)
    try:
        # meshd.log appears once etcd is up and meshd is being started.
        def meshd_log() -> bool:
            assert proc.poll() is None, "".join(reader.seen)
            return (data_dir / "meshd.log").exists()

        wait_until(meshd_log, "meshd.log", 20, interval=0.01)
        started = children(proc.pid)
        assert started, "the demo has no child process yet"
        code, _ = stop_and_wait(proc, signal.SIGTERM, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = reader.until("stopped everything it started", timeout=1)
    assert code == 0, output
    assert BANNER_END not in output
    assert_nothing_left(started, data_dir)


def test_taken_fixed_port_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    """With ``--ports fixed`` and 10000 taken, the demo starts nothing and says what to do."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            holder.bind(("127.0.0.1", 10000))
            holder.listen()
        except OSError:
            pass  # someone else holds it already: the demo must refuse all the same
        start = time.monotonic()
        done = subprocess.run(
            [*demo_cmd(tmp_path / "demo"), "--ports", "fixed"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
        took = time.monotonic() - start
    finally:
        holder.close()
    assert done.returncode == 1
    assert "port 10000 (gateway)" in done.stderr and "already in use" in done.stderr
    assert "--ports auto" in done.stderr
    assert took < 5
    assert not (tmp_path / "demo" / "etcd").exists()
