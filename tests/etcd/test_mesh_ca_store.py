"""The mesh CA in etcd: created once, shared by replicas, an operator's CA checked."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import free_port
from xds_server.app import MeshApp, MeshConfig
from xds_server.identity.ca import MeshCA, generate_root
from xds_server.identity.store import ca_keys

_EXE = Path(sys.executable).with_name("meshd")


def _config(tmp_path: Path, name: str) -> MeshConfig:
    return MeshConfig(xds=f"127.0.0.1:{free_port()}", metrics=None, data_dir=str(tmp_path / name))


async def test_two_replicas_on_one_etcd_share_the_ca_and_the_bundle(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> None:
    registries = [EtcdRegistry(etcd_shared.endpoint, prefix=etcd_prefix) for _ in range(2)]
    apps = [MeshApp(r, _config(tmp_path, f"r{i}")) for i, r in enumerate(registries)]
    try:
        for app in apps:
            await app.start()
        first, second = (app.ca for app in apps)
        assert first is not None and second is not None
        assert first.bundle_pem == second.bundle_pem
        for name in ("r0", "r1"):
            assert (tmp_path / name / "ca.pem").read_bytes() == first.bundle_pem
        bundle = ca_keys(etcd_prefix)[2]
        stored = await registries[0].get(bundle)
        assert stored is not None and stored.value == first.bundle_pem
        # Both sign with the same key: a certificate one issues verifies against the other.
        issued = second.issue_workload(
            "spiffe://mesh.local/ns/a/svc/b",
            datetime.datetime.now(datetime.UTC),
            datetime.timedelta(hours=1),
        )
        assert first.verifies(issued.chain_pem)
        # The CA's keys are not registry entries: no status error for them.
        assert not apps[0].controller.state.problems
    finally:
        for app in apps:
            await app.stop(0.1)
        for r in registries:
            await r.close()


def _meshd(tmp_path: Path, etcd: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "xds_server.cli.meshd"]
    args = ["--etcd", etcd, "--data-dir", str(tmp_path / "d"), "--admin", "", "--metrics", ""]
    return subprocess.run(
        [*cmd, *args, "--xds", f"127.0.0.1:{free_port()}", *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_meshd_refuses_a_ca_that_cannot_sign(etcd_shared: EmbeddedEtcd, tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    root_cert, root_key = generate_root("mesh.local", now)
    leaf, leaf_key = MeshCA(root_cert, root_key, "mesh.local").issue_server_certificate(
        ["x"], [], now
    )
    _, other_key = generate_root("mesh.local", now)
    (tmp_path / "leaf.pem").write_bytes(leaf)
    (tmp_path / "leaf.key").write_bytes(leaf_key)
    (tmp_path / "root.pem").write_bytes(root_cert)
    (tmp_path / "other.key").write_bytes(other_key)
    for cert, key, says in (
        ("leaf.pem", "leaf.key", "is not a CA"),
        ("root.pem", "other.key", "do not match"),
        ("root.pem", "missing.key", "No such file"),
    ):
        out = _meshd(
            tmp_path,
            etcd_shared.endpoint,
            "--ca-cert",
            str(tmp_path / cert),
            "--ca-key",
            str(tmp_path / key),
        )
        assert out.returncode == 2, out.stderr
        assert says in out.stderr and "--ca-cert" in out.stderr
        assert "PRIVATE KEY" not in out.stderr + out.stdout
    out = _meshd(tmp_path, etcd_shared.endpoint, "--cert-ttl", "1m")
    assert out.returncode == 2 and "--cert-ttl must be at least 5m" in out.stderr
    out = _meshd(tmp_path, etcd_shared.endpoint, "--trust-domain", "Bad Domain")
    assert out.returncode == 2 and "--trust-domain" in out.stderr
