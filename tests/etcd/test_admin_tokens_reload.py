"""SIGHUP makes a running meshd read its admin tokens file again: a removed token stops
working (its open Watch ends), a new one works, and a malformed file keeps the tokens in
force and says why in one log line. The real ``meshd`` console script, a real signal,
real gRPC clients and meshctl."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from adapters.etcd import EmbeddedEtcd
from integration.harness import free_port
from tests.support.wait import wait_until
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.api import admin_pb2_grpc

_EXE = Path(sys.executable).with_name("meshd")
MESHD = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "xds_server.cli.meshd"]
_CTL = Path(sys.executable).with_name("meshctl")
MESHCTL = [str(_CTL)] if _CTL.exists() else [sys.executable, "-m", "xds_server.cli.meshctl"]


def _tokens(*tokens: str) -> str:
    return json.dumps({"tokens": [{"token": t, "role": "viewer"} for t in tokens]})


class Meshd:
    def __init__(self, proc: subprocess.Popen[str], log: Path, admin: str) -> None:
        self.proc, self.log, self.admin = proc, log, admin

    def text(self) -> str:
        assert self.proc.poll() is None, self.log.read_text()
        return self.log.read_text()

    def code(self, token: str) -> grpc.StatusCode:
        """The status of a ListEntries call with ``token``."""
        with grpc.insecure_channel(self.admin) as channel:
            stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
            try:
                stub.ListEntries(
                    pb.ListEntriesRequest(kind=pb.KIND_SERVICE),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=5,
                )
            except grpc.RpcError as exc:
                return exc.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)


@pytest.fixture
def meshd(tmp_path: Path, etcd_shared: EmbeddedEtcd, etcd_prefix: str) -> Iterator[Meshd]:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(_tokens("old-token", "kept-token"))
    admin = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "meshd.log"
    log = log_path.open("w")
    args = [
        "--etcd", etcd_shared.endpoint, "--prefix", etcd_prefix,
        "--data-dir", str(tmp_path / "data"), "--grace", "0.2",
        "--xds", f"127.0.0.1:{free_port()}", "--admin", admin, "--metrics", "",
        "--tokens", str(tokens),
    ]  # fmt: skip
    proc = subprocess.Popen([*MESHD, *args], stdout=log, stderr=subprocess.STDOUT, text=True)
    server = Meshd(proc, log_path, admin)
    try:
        wait_until(server.text, "meshd ready", 30, until=lambda t: "meshd ready" in t, interval=0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_sighup_reloads_the_tokens_file(meshd: Meshd, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    assert meshd.code("old-token") == grpc.StatusCode.OK
    with grpc.insecure_channel(meshd.admin) as channel:
        watch = admin_pb2_grpc.MeshAdminServiceStub(channel).Watch(
            pb.WatchRequest(), metadata=(("authorization", "Bearer old-token"),)
        )
        watch.initial_metadata()  # subscribed
        tokens.write_text(_tokens("kept-token", "new-token"))
        meshd.reload()
        wait_until(
            lambda: meshd.code("old-token"),
            "the removed token refused",
            10,
            until=lambda code: code == grpc.StatusCode.UNAUTHENTICATED,
            interval=0.1,
        )
        # The removed token's open Watch ends too.
        with pytest.raises(grpc.RpcError) as ended:
            next(iter(watch))
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert meshd.code("new-token") == grpc.StatusCode.OK
    assert meshd.code("kept-token") == grpc.StatusCode.OK
    assert "tokens file " in meshd.text() and "reloaded: 2 tokens" in meshd.text()
    # meshctl, as an operator would check it.
    ctl = subprocess.run(
        [*MESHCTL, "--admin", meshd.admin, "--token", "old-token", "get", "services"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ctl.returncode == 2 and "UNAUTHENTICATED" in ctl.stdout + ctl.stderr, ctl


def test_a_malformed_tokens_file_keeps_the_tokens_in_force(meshd: Meshd, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tokens": [{"token": "x", "role": "viewer"}]}')  # token too short
    meshd.reload()
    wait_until(
        meshd.text,
        "the refusal logged",
        10,
        until=lambda t: "tokens file not reloaded" in t,
        interval=0.1,
    )
    lines = [line for line in meshd.text().splitlines() if "tokens file not reloaded" in line]
    assert len(lines) == 1 and "tokens[0].token" in lines[0], lines
    assert meshd.code("old-token") == grpc.StatusCode.OK  # the previous tokens stay
    tokens.write_text("tokens: [unclosed\n  - {")  # not YAML: one line too
    meshd.reload()
    wait_until(
        meshd.text,
        "the second refusal logged",
        10,
        until=lambda t: t.count("tokens file not reloaded") == 2,
        interval=0.1,
    )
    assert meshd.code("kept-token") == grpc.StatusCode.OK
    assert meshd.proc.poll() is None
