"""``meshctl bootstrap --xds a:18000,b:18000``: one ADS cluster over every meshd replica,
accepted by the real Envoy (``--mode validate``), plain and over TLS; and meshd's
``--replica-id`` / ``--advertise-admin`` flags. (That a proxy moves to the surviving
replica and is sent nothing it holds: tests/e2e/test_replicas_e2e.py.)"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.harness import envoy_binary
from xds_server.cli.bootstrap import bootstrap
from xds_server.cli.meshd import default_replica_id, parse_args
from xds_server.identity.ca import generate_root


def meshctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xds_server.cli.meshctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def xds_cluster(doc: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = doc["static_resources"]["clusters"]
    return cluster  # type: ignore[no-any-return]


def hosts(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    (group,) = cluster["load_assignment"]["endpoints"]
    return [
        (
            e["endpoint"]["address"]["socket_address"]["address"],
            e["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for e in group["lb_endpoints"]
    ]


def validate(tmp_path: Path, text: str, name: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    check = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stderr.decode()[-2000:]


def test_meshctl_bootstrap_lists_every_replica_and_envoy_accepts_it(tmp_path: Path) -> None:
    out = meshctl(
        "bootstrap", "--node-id", "gw-1", "--node-cluster", "gateway",
        "--xds", "10.0.0.1:18000, 10.0.0.2:18010",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    cluster = xds_cluster(yaml.safe_load(out.stdout))
    assert cluster["type"] == "STATIC"
    assert hosts(cluster) == [("10.0.0.1", 18000), ("10.0.0.2", 18010)]
    validate(tmp_path, out.stdout, "ips.yaml")

    # A name among them: resolved by DNS (IPs beside it too).
    out = meshctl(
        "bootstrap", "--node-id", "gw-1", "--node-cluster", "gateway", "--delta",
        "--xds", "meshd-0.meshd.mesh.svc:18000,127.0.0.1:18000",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    cluster = xds_cluster(yaml.safe_load(out.stdout))
    assert cluster["type"] == "STRICT_DNS"
    assert hosts(cluster) == [("meshd-0.meshd.mesh.svc", 18000), ("127.0.0.1", 18000)]
    validate(tmp_path, out.stdout, "names.yaml")


def test_over_tls_each_replica_name_is_accepted(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca_pem = generate_root("mesh.local", now)[0].decode()
    doc = bootstrap(
        "gw-1",
        "gateway",
        ca_pem=ca_pem,
        xds_addresses=[("meshd-0.mesh", 18000), ("meshd-1.mesh", 18000), ("10.0.0.3", 18000)],
    )
    tls = xds_cluster(doc)["transport_socket"]["typed_config"]
    sans = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    assert [(m["san_type"], m["matcher"]["exact"]) for m in sans] == [
        ("DNS", "meshd-0.mesh"),
        ("DNS", "meshd-1.mesh"),
        ("IP_ADDRESS", "10.0.0.3"),
    ]
    assert tls["sni"] == "meshd-0.mesh"
    path = tmp_path / "tls.yaml"
    path.write_text(yaml.safe_dump(doc))
    validate(tmp_path, path.read_text(), "tls.yaml")


@pytest.mark.parametrize(
    ("xds", "says"),
    [
        ("10.0.0.1:18000,10.0.0.1:18000", "listed twice"),
        ("10.0.0.1:18000,nowhere", "'nowhere' is not HOST:PORT"),
        ("10.0.0.1:18000,10.0.0.2:0", "out of range"),
    ],
)
def test_bad_replica_lists_are_refused(xds: str, says: str) -> None:
    out = meshctl("bootstrap", "--node-id", "a", "--node-cluster", "b", "--xds", xds)
    assert out.returncode == 1 and says in out.stderr and "Traceback" not in out.stderr


def test_meshd_replica_id_defaults_to_host_and_port_and_bad_ones_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse_args(["--xds", "127.0.0.1:18123"])
    assert args.replica_id == default_replica_id("127.0.0.1:18123")
    assert args.replica_id.endswith(":18123")
    assert parse_args(["--replica-id", "meshd-0"]).replica_id == "meshd-0"
    assert len(parse_args(["--xds", "127.0.0.1:0"]).replica_id) == 12  # random
    for argv, says in (
        (["--replica-id", "a/b"], "--replica-id 'a/b': may hold letters"),
        (["--replica-id", ""], "--replica-id '': must not be empty"),
        (["--advertise-admin", "10.0.0.1:0"], "--advertise-admin needs the port"),
        (["--advertise-admin", "nohost"], "--advertise-admin"),
    ):
        with pytest.raises(SystemExit) as info:
            parse_args(argv)
        assert info.value.code == 2
        assert says in capsys.readouterr().err
