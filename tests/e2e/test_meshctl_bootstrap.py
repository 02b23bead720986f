"""``meshctl bootstrap``: output Envoy accepts, exit codes on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from integration.harness import envoy_binary


def meshctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xds_server.cli.meshctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_bootstrap_yaml_is_valid_for_envoy(tmp_path: object) -> None:
    out = meshctl("bootstrap", "--node-id", "gw-1", "--node-cluster", "gateway", "--delta")
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    assert doc["node"] == {
        "id": "gw-1",
        "cluster": "gateway",
        # Where Prometheus finds this Envoy's stats (meshd's /sd/envoy reads it).
        "metadata": {"admin_host": "127.0.0.1", "admin_port": 9901},
    }
    assert doc["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    path = f"{tmp_path}/b.yaml"
    with open(path, "w") as f:
        f.write(out.stdout)
    check = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", path], capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stderr.decode()[-2000:]


def test_bootstrap_json_and_bad_arguments() -> None:
    out = meshctl("bootstrap", "--node-id", "a", "--node-cluster", "b", "-o", "json")
    assert json.loads(out.stdout)["node"]["id"] == "a"
    bad = meshctl("bootstrap", "--node-id", "a", "--node-cluster", "b", "--xds", "nowhere")
    assert bad.returncode == 1 and "--xds" in bad.stderr
    bad = meshctl("bootstrap", "--node-id", "a", "--node-cluster", "b", "--admin-port", "70000")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and bad.stderr.strip()
