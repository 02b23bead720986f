"""etcd with TLS and authentication: EtcdRegistry and the meshd process against a real etcd
serving clients over TLS (client certificates required; certificates made in the test) and
one with users (etcdctl user add, auth enable).

Credentials etcd refuses are one clear error and exit 2 at meshd's start, never a wait for
an etcd that will not change its mind; the password is never on meshd's command line nor
in its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from adapters.etcd import EmbeddedEtcd, EtcdAccessError, EtcdRegistry, EtcdTls, EtcdUser
from integration.harness import free_port
from tests.support.etcd_cluster import EtcdCertificates, enable_auth, etcd_certificates
from tests.support.fixtures_etcd import RegistryView
from tests.support.meshctl import meshctl
from tests.support.wait import wait_until
from xds_server.cli.meshd import parse_args, run

_EXE = Path(sys.executable).with_name("meshd")
MESHD = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "xds_server.cli.meshd"]

PASSWORD = "s3cret-of-meshd"
"""meshd's etcd password in these tests: it must show nowhere."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> EtcdCertificates:
    return etcd_certificates(tmp_path_factory.mktemp("etcd-certs"))


@pytest.fixture(scope="module")
def tls_etcd(
    tmp_path_factory: pytest.TempPathFactory, certs: EtcdCertificates
) -> Iterator[EmbeddedEtcd]:
    """One etcd serving clients over TLS, client certificates of ``certs.ca`` required."""
    etcd = EmbeddedEtcd(
        tmp_path_factory.mktemp("tls-etcd"),
        unsafe_no_fsync=True,
        auto_compaction_retention=None,
        tls=certs.server_tls(),
    )
    etcd.start_sync()
    yield etcd
    etcd.stop()


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """One etcd with authentication on: ``meshd`` may read and write ``/mesh/``,
    ``stranger`` only ``/other/``. Tokens live one second (a client must renew them)."""
    etcd = EmbeddedEtcd(
        tmp_path_factory.mktemp("auth-etcd"),
        unsafe_no_fsync=True,
        auto_compaction_retention=None,
        extra_args=["--auth-token=simple", "--auth-token-ttl=1"],
    )
    etcd.start_sync()
    enable_auth(
        [etcd.client_url],
        {"meshd": (PASSWORD, "/mesh/"), "stranger": ("stranger-pw", "/other/")},
    )
    yield etcd
    etcd.stop()


def _tls(certs: EtcdCertificates, *, ca: Path | None = None, client: bool = True) -> EtcdTls:
    return EtcdTls(
        ca=(ca or certs.ca).read_bytes(),
        cert=certs.client_cert.read_bytes() if client else None,
        key=certs.client_key.read_bytes() if client else None,
    )


# -- EtcdRegistry ------------------------------------------------------------------------


@pytest.fixture
async def tls_registry(
    tls_etcd: EmbeddedEtcd, certs: EtcdCertificates
) -> AsyncIterator[EtcdRegistry]:
    registry = EtcdRegistry(tls_etcd.client_url, "/tls/", tls=_tls(certs))
    yield registry
    await registry.close()


async def test_registry_lists_watches_and_writes_over_tls(tls_registry: EtcdRegistry) -> None:
    await tls_registry.put("/tls/services/default/a", b"1")
    async with RegistryView(tls_registry) as view:
        rev = await tls_registry.put("/tls/services/default/b", b"2")
        await view.wait_revision(rev)
    assert view.data == {"/tls/services/default/a": b"1", "/tls/services/default/b": b"2"}


@pytest.mark.parametrize("case", ["server of another CA", "no client certificate"])
async def test_registry_refused_by_tls_says_so_at_once(
    tls_etcd: EmbeddedEtcd, certs: EtcdCertificates, case: str
) -> None:
    if case == "server of another CA":
        tls = _tls(certs, ca=certs.other_ca)
    else:
        tls = _tls(certs, client=False)
    registry = EtcdRegistry(tls_etcd.endpoint, tls=tls, timeout=5.0)
    started = time.monotonic()
    with pytest.raises(EtcdAccessError) as refused:
        await registry.get("/mesh/x")
    assert refused.value.kind == "tls"
    assert "handshake" in str(refused.value).lower(), refused.value
    assert time.monotonic() - started < 3.0  # not the wait for an etcd that is down
    assert registry.refused is refused.value
    await registry.close()


async def test_registry_authenticates_and_renews_an_expired_token(auth_etcd: EmbeddedEtcd) -> None:
    registry = EtcdRegistry(auth_etcd.endpoint, user=EtcdUser("meshd", PASSWORD))
    await registry.put("/mesh/services/default/a", b"1")
    async with RegistryView(registry) as view:
        time.sleep(2.5)  # (blocking on purpose: nothing refreshes the 1 s token meanwhile)
        rev = await registry.put("/mesh/services/default/b", b"2")  # token expired: renewed
        await view.wait_revision(rev)
    assert view.data == {"/mesh/services/default/a": b"1", "/mesh/services/default/b": b"2"}
    assert registry.refused is None
    await registry.close()


@pytest.mark.parametrize(
    ("user", "kind", "says"),
    [
        (EtcdUser("meshd", "wrong"), "auth", "authentication failed"),
        (None, "auth", "user name is empty"),
        (EtcdUser("stranger", "stranger-pw"), "permission", "permission denied"),
    ],
    ids=["wrong password", "no user", "no permission on the prefix"],
)
async def test_registry_refused_by_auth_names_why(
    auth_etcd: EmbeddedEtcd, user: EtcdUser | None, kind: str, says: str
) -> None:
    registry = EtcdRegistry(auth_etcd.endpoint, user=user)
    with pytest.raises(EtcdAccessError) as refused:
        await registry.get("/mesh/x")
    assert refused.value.kind == kind
    assert says in str(refused.value), refused.value
    assert PASSWORD not in str(refused.value)
    await registry.close()


# -- meshd -------------------------------------------------------------------------------


def _listen_flags() -> list[str]:
    out = ["--grace", "0.2"]
    for flag in ("xds", "admin", "metrics"):
        out += [f"--{flag}", f"127.0.0.1:{free_port()}"]
    return out


def _meshd_ready(
    tmp_path: Path, args: list[str], env: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """Start meshd, wait for its ready line, stop it; its log and its command line as
    the system shows it (``/proc/PID/cmdline``)."""
    log_path = tmp_path / "meshd.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*MESHD, "--data-dir", str(tmp_path / "data"), *_listen_flags(), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")

        def text() -> str:
            assert proc.poll() is None, log_path.read_text()
            return log_path.read_text()

        wait_until(text, "meshd ready", 30, until=lambda t: "meshd ready" in t, interval=0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log_path.read_text(), cmdline


def _meshd_exits(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> str:
    """Run meshd that must exit 2 by itself within 30 s; its output."""
    proc = subprocess.run(
        [*MESHD, "--data-dir", str(tmp_path / "data"), *_listen_flags(), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=30,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    return out


def _tls_flags(certs: EtcdCertificates, *, ca: Path | None = None) -> list[str]:
    return [
        "--etcd-cacert",
        str(ca or certs.ca),
        "--etcd-cert",
        str(certs.client_cert),
        "--etcd-key",
        str(certs.client_key),
    ]


def test_meshd_serves_from_an_etcd_over_tls(
    tmp_path: Path, tls_etcd: EmbeddedEtcd, certs: EtcdCertificates
) -> None:
    log, _ = _meshd_ready(tmp_path, ["--etcd", tls_etcd.client_url, *_tls_flags(certs)])
    assert "etcd refused" not in log


def test_meshd_refused_by_etcd_tls_is_one_line_and_exit_2(
    tmp_path: Path, tls_etcd: EmbeddedEtcd, certs: EtcdCertificates
) -> None:
    out = _meshd_exits(
        tmp_path, ["--etcd", tls_etcd.endpoint, *_tls_flags(certs, ca=certs.other_ca)]
    )
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out
    assert "etcd refused meshd" in errors[0], out
    assert "--etcd-cacert" in errors[0], out


def test_meshd_authenticates_with_user_and_password_file_from_the_environment(
    tmp_path: Path, auth_etcd: EmbeddedEtcd
) -> None:
    password_file = tmp_path / "etcd-password"
    password_file.write_text(PASSWORD + "\n")
    env = {"MESHD_ETCD_USER": "meshd", "MESHD_ETCD_PASSWORD_FILE": str(password_file)}
    log, cmdline = _meshd_ready(tmp_path, ["--etcd", auth_etcd.endpoint], env)
    assert PASSWORD not in log
    assert not any(PASSWORD in arg for arg in cmdline), cmdline


@pytest.mark.parametrize(
    ("user", "password", "says", "hint"),
    [
        ("meshd", "wrong", "authentication failed", "--etcd-password-file"),
        (None, None, "user name is empty", "--etcd-user"),
        ("stranger", "stranger-pw", "permission denied", "readwrite on the registry prefix"),
    ],
    ids=["wrong password", "no user", "no permission on the prefix"],
)
def test_meshd_refused_by_etcd_auth_is_one_line_and_exit_2(
    tmp_path: Path,
    auth_etcd: EmbeddedEtcd,
    user: str | None,
    password: str | None,
    says: str,
    hint: str,
) -> None:
    args = ["--etcd", auth_etcd.endpoint]
    if user:
        password_file = tmp_path / "etcd-password"
        password_file.write_text(f"{password}\n")
        args += ["--etcd-user", user, "--etcd-password-file", str(password_file)]
    out = _meshd_exits(tmp_path, args)
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out
    assert "etcd refused meshd" in errors[0] and says in errors[0], out
    assert hint in errors[0], out
    assert PASSWORD not in out and (password is None or password not in out), out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--etcd-user", "meshd:pw"], "the name only"),
        (["--etcd-user", "meshd"], "go together"),
        (["--etcd-cert", "c.pem"], "go together"),
    ],
    ids=["password on the command line", "user without password file", "cert without key"],
)
def test_meshd_etcd_access_flags_that_go_together(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--etcd", "127.0.0.1:1", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert "pw" not in err.replace("password", "")  # (the password is not echoed)


def test_meshd_etcd_access_flags_need_an_etcd(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--etcd-cacert", "ca.pem"])
    assert exited.value.code == 2
    assert "--etcd-cacert needs --etcd" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--etcd-user", "u", "--etcd-password-file", "/nonexistent"], "--etcd-password-file"),
        (["--etcd-cacert", "/nonexistent"], "--etcd-cacert /nonexistent"),
    ],
    ids=["password file missing", "cacert missing"],
)
async def test_meshd_etcd_access_files_read_before_starting(
    args: list[str], says: str, caplog: pytest.LogCaptureFixture
) -> None:
    code = await run(parse_args(["--etcd", "127.0.0.1:1", *args, *_listen_flags()]))
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and says in errors[0], errors


# -- meshctl ca get --etcd ---------------------------------------------------------------

BUNDLE = "-----BEGIN CERTIFICATE-----\nnot really one\n-----END CERTIFICATE-----\n"


async def test_meshctl_ca_get_reads_the_bundle_from_an_etcd_over_tls(
    tls_etcd: EmbeddedEtcd, certs: EtcdCertificates
) -> None:
    writer = EtcdRegistry(tls_etcd.endpoint, tls=_tls(certs))
    await writer.put("/mesh/ca/bundle", BUNDLE.encode())
    await writer.close()
    code, out, err = await meshctl("ca", "get", "--etcd", tls_etcd.endpoint, *_tls_flags(certs))
    assert (code, out) == (0, BUNDLE), err


async def test_meshctl_ca_get_authenticates_to_etcd(
    tmp_path: Path, auth_etcd: EmbeddedEtcd
) -> None:
    writer = EtcdRegistry(auth_etcd.endpoint, user=EtcdUser("meshd", PASSWORD))
    await writer.put("/mesh/ca/bundle", BUNDLE.encode())
    await writer.close()
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(PASSWORD + "\n")
    bad.write_text("wrong\n")
    flags = ["ca", "get", "--etcd", auth_etcd.endpoint, "--etcd-user", "meshd"]
    code, out, err = await meshctl(*flags, "--etcd-password-file", str(good))
    assert (code, out) == (0, BUNDLE), err
    code, out, err = await meshctl(*flags, "--etcd-password-file", str(bad))
    assert code == 1, (out, err)
    assert "authentication failed" in err, err
    assert PASSWORD not in err and "wrong" not in err, err
