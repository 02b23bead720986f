"""The meshd process: its own settings, its listen flags, and how it waits for etcd.

The process tests run the real ``meshd`` console script (or ``python -m`` when the script
is not installed next to the interpreter) on free loopback ports.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.etcd import EmbeddedEtcd
from integration.harness import free_port
from tests.support.wait import wait_until
from xds_server.cli.meshd import GC_YOUNG_THRESHOLD, tune_collector

_EXE = Path(sys.executable).with_name("meshd")
MESHD = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "xds_server.cli.meshd"]


def test_tune_collector_raises_the_young_threshold_and_keeps_the_older_ones() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 7, 9)
        tune_collector()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 7, 9)
        gc.set_threshold(GC_YOUNG_THRESHOLD * 2, 7, 9)
        tune_collector()  # a higher one set before stays
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD * 2, 7, 9)
    finally:
        gc.set_threshold(*saved)


def _flags(tmp_path: Path, etcd: str, **listen: str) -> list[str]:
    addresses = {
        "xds": f"127.0.0.1:{free_port()}",
        "admin": f"127.0.0.1:{free_port()}",
        "metrics": f"127.0.0.1:{free_port()}",
        **listen,
    }
    out = ["--etcd", etcd, "--data-dir", str(tmp_path / "data"), "--grace", "0.2"]
    for flag, address in addresses.items():
        out += [f"--{flag}", address]
    return out


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """meshd that must end by itself; a meshd that keeps running fails the test."""
    proc = subprocess.Popen(
        [*MESHD, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"meshd {args} did not exit within {timeout}s:\n{out}")
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


# -- waiting for etcd ------------------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


class _Running:
    """A meshd process logging to ``tmp_path/meshd.log``: its log so far, waited on."""

    def __init__(self, proc: subprocess.Popen[str], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        """The log so far; fails the test when meshd has exited meanwhile."""
        assert self.proc.poll() is None, self.log_path.read_text()
        return self.log_path.read_text()

    def wait_for(self, words: str, timeout: float) -> None:
        wait_until(self.log, f"meshd: {words}", timeout, until=lambda t: words in t, interval=0.1)


@contextlib.contextmanager
def _running(tmp_path: Path, args: list[str]) -> Iterator[_Running]:
    """meshd with ``args``, killed on the way out if it still runs."""
    log_path = tmp_path / "meshd.log"
    with log_path.open("w+") as log:
        proc = subprocess.Popen([*MESHD, *args], stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            yield _Running(proc, log_path)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_meshd_says_it_waits_for_etcd_and_stops_on_a_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    etcd = f"127.0.0.1:{_closed_port()}"
    with _running(tmp_path, _flags(tmp_path, etcd)) as meshd:
        meshd.wait_for(f"waiting for etcd at {etcd}", 30)
        meshd.proc.send_signal(sig)
        # Prompt: a person pressing Ctrl-C or a supervisor's SIGTERM (bound loosely here: the
        # machine running the suite may be busy).
        code = meshd.proc.wait(timeout=10)
    text = (tmp_path / "meshd.log").read_text()
    assert code == 0, text
    assert text.count("waiting for etcd") == 1, text  # once, not once per retry
    assert "Traceback" not in text, text


def test_meshd_waiting_for_etcd_starts_serving_once_it_answers(tmp_path: Path) -> None:
    port = _closed_port()
    etcd = EmbeddedEtcd(tmp_path / "etcd", client_port=port, unsafe_no_fsync=True)
    try:
        with _running(tmp_path, _flags(tmp_path, f"127.0.0.1:{port}")) as meshd:
            deadline = time.monotonic() + 30  # for both waits together
            meshd.wait_for("waiting for etcd", 30)
            etcd.start_sync()
            meshd.wait_for("meshd ready", deadline - time.monotonic())
            meshd.proc.send_signal(signal.SIGTERM)
            assert meshd.proc.wait(timeout=10) == 0, meshd.log_path.read_text()
    finally:
        etcd.stop()


def test_meshd_stops_promptly_when_etcd_does_not_answer(tmp_path: Path) -> None:
    """A stop gives the replica's leases back, but does not wait on an etcd that does not
    answer: each revoke waits 2 s at most, both at once (they waited 5 s each, one after
    the other, and a supervisor's SIGTERM took over 10 s). etcd is frozen (SIGSTOP), as
    behind a network partition: calls hang rather than fail, so both leases are still held
    when meshd is told to stop."""
    etcd = EmbeddedEtcd(tmp_path / "etcd", unsafe_no_fsync=True)
    etcd.start_sync()
    pid = etcd.pid
    assert pid is not None
    try:
        args = [*_flags(tmp_path, etcd.endpoint), "--log-level", "info"]
        with _running(tmp_path, args) as meshd:
            meshd.wait_for("meshd ready", 30)
            os.kill(pid, signal.SIGSTOP)
            try:
                meshd.proc.send_signal(signal.SIGTERM)
                assert meshd.proc.wait(timeout=6) == 0, meshd.log_path.read_text()
            finally:
                os.kill(pid, signal.SIGCONT)
    finally:
        etcd.stop()
    text = (tmp_path / "meshd.log").read_text()
    assert "could not revoke the replica lease: no answer in 2 s" in text, text
    assert "could not revoke the health lease: no answer in 2 s" in text, text
    assert "Traceback" not in text, text


# -- listen addresses -------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["xds", "admin", "metrics"])
@pytest.mark.parametrize("port", ["99999", "-1", "http", ""])
def test_meshd_refuses_a_port_out_of_range(tmp_path: Path, flag: str, port: str) -> None:
    address = f"127.0.0.1:{port}"
    out = _run(_flags(tmp_path, f"127.0.0.1:{_closed_port()}", **{flag: address}))
    assert out.returncode == 2, out.stdout
    assert f"--{flag}" in out.stdout and repr(address) in out.stdout, out.stdout
    assert "Traceback" not in out.stdout, out.stdout
    assert not (tmp_path / "data").exists()  # refused before starting anything


@contextlib.contextmanager
def _taken(reuse_port: bool) -> Iterator[str]:
    """A loopback address another server listens on (with SO_REUSEPORT, as a gRPC server
    does, when ``reuse_port``)."""
    sock = socket.socket()
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.mark.parametrize("flag", ["xds", "admin", "metrics"])
@pytest.mark.parametrize("reuse_port", [True, False], ids=["reuseport", "plain"])
def test_meshd_refuses_a_port_in_use(
    tmp_path: Path, etcd_shared: EmbeddedEtcd, flag: str, reuse_port: bool
) -> None:
    with _taken(reuse_port) as address:
        out = _run(_flags(tmp_path, etcd_shared.endpoint, **{flag: address}))
    lines = [line for line in out.stdout.splitlines() if f"--{flag} {address}" in line]
    assert out.returncode == 2, out.stdout
    assert len(lines) == 1 and "in use" in lines[0], out.stdout
    assert "Traceback" not in out.stdout and "meshd ready" not in out.stdout, out.stdout
