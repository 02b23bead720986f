"""The chart's pieces run for real: meshd as the chart starts it, its probe, the Envoy setup.

No Kubernetes here, so the pods' steps run as processes on loopback, with what the rendered
manifests hold and nothing hand-made: meshd with the rendered Deployment's arguments (only
addresses, etcd and file paths moved to this machine, and TLS and join tokens switched on as
they are off loopback), the CA and admin token from the rendered Secrets, and the scripts
from the rendered ConfigMap. Then:

- the gRPC health probe passes against meshd's admin port over TLS, and fails against
  its xDS port (no health service there): the port the manifests probe matters;
- the init containers' script issues a join token and writes a bootstrap that Envoy
  validates (``envoy --mode validate``), for the gateway and for the sidecar;
- the register Job's script applies the example's registry entries, and meshd accepts the
  compose file's demo registry (``meshctl apply --dry-run``);
- an Envoy started from the gateway's bootstrap connects to meshd over TLS (trusting the
  chart's CA, checking meshd's name), is authenticated by its join token, and is sent the
  gateway listener, which then answers HTTP.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.etcd import EmbeddedEtcd
from integration.harness import envoy_binary, free_port
from tests.support.deploy import (
    COMPOSE,
    console_script,
    container,
    env_values,
    find,
    flag_value,
    hostport,
    pod_spec,
    render,
)
from tests.support.fixtures_envoy import EnvoyFactory
from tests.support.wait import wait_until

VENV_BIN = str(Path(sys.executable).parent)


class ChartFiles:
    """The rendered Secrets and ConfigMaps written out where the test's processes read them,
    and a map from the paths the pods mount them at to those files."""

    def __init__(self, objects: list[dict[str, Any]], root: Path) -> None:
        self.root = root
        ca = find(objects, "Secret", "-ca")["data"]
        admin = find(objects, "Secret", "-admin-tokens")["stringData"]
        self.token: str = admin["token"]
        self.trust = ""
        """The CA bundle clients trust instead of the chart's ca.crt ('': that one)."""
        self.scripts = root / "scripts"
        self.files: dict[str, Path] = {}
        self._write("ca/ca.crt", base64.b64decode(ca["ca.crt"]))
        self._write("ca/ca.key", base64.b64decode(ca["ca.key"]))
        self._write("tokens/tokens.yaml", admin["tokens.yaml"].encode())
        for name, text in find(objects, "ConfigMap", "-scripts")["data"].items():
            self._write(f"scripts/{name}", text.encode())
        registry = find(objects, "ConfigMap", "-registry")["data"]["registry.yaml"]
        self._write("registry/registry.yaml", registry.encode())

    def _write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[rel] = path

    def local(self, mounted: str) -> str:
        """This machine's copy of a file a pod reads at ``mounted``."""
        if mounted == "/etc/mesh-ca/ca.crt" and self.trust:
            return self.trust
        for prefix, rel in (
            ("/etc/meshd/ca/", "ca/"),
            ("/etc/mesh-ca/", "ca/"),
            ("/etc/meshd/tokens/", "tokens/"),
            ("/etc/mesh-scripts/", "scripts/"),
            ("/etc/mesh-registry/", "registry/"),
        ):
            if mounted.startswith(prefix):
                return str(self.files[rel + mounted.removeprefix(prefix)])
        raise AssertionError(f"{mounted}: not a file the chart provides")


def _meshd_argv(
    rendered: list[str], files: ChartFiles, etcd: str, ports: dict[str, int], data: Path
) -> list[str]:
    argv = list(rendered)
    moved = {
        "--etcd": etcd,
        # localhost, as the clients dial it (a name in meshd's certificate): Envoy resolves
        # it to ::1 first, so meshd listens on both loopback addresses.
        "--xds": f"localhost:{ports['xds']}",
        "--admin": f"localhost:{ports['admin']}",
        "--metrics": f"127.0.0.1:{ports['metrics']}",
        "--data-dir": str(data),
    }
    for i, word in enumerate(argv[:-1]):
        if word in moved:
            argv[i + 1] = moved[word]
        elif argv[i + 1].startswith("/etc/"):
            argv[i + 1] = files.local(argv[i + 1])
    # On a pod's address both are on by default (and cannot be off); on loopback, ask.
    return [*argv, "--xds-tls", "on", "--xds-auth", "required"]


def _run_script(
    script: list[str], env: dict[str, str], files: ChartFiles, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    argv = [files.local(w) if w.startswith("/etc/") else w for w in script]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MESHCTL_", "MESHD_"))}
    return subprocess.run(
        argv,
        env={**clean, "PATH": f"{VENV_BIN}:{clean.get('PATH', '')}", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _bootstrap_env(
    init: dict[str, Any], files: ChartFiles, ports: dict[str, int], out: Path, node_id: str
) -> dict[str, str]:
    env = env_values(init)
    # The pod dials meshd's Service name; here meshd is on loopback, named localhost (also
    # in the chart's --server-names, which the manifest test checks for the Service name).
    for key, port in (("XDS", ports["xds"]), ("MESHCTL_ADMIN", ports["admin"])):
        hostport(env[key])  # (HOST:PORT in the manifest)
        env[key] = f"localhost:{port}"
    env["MESHCTL_CA"] = files.local(env["MESHCTL_CA"])
    env["MESHCTL_TOKEN"] = files.token  # (from the admin Secret's `token`, as the pod does)
    env["NODE_ID"] = node_id  # (the pod's name)
    env["OUT"] = str(out)
    env["ENVOY_ADMIN_PORT"] = str(free_port())
    env["ATTEMPTS"] = "3"
    env["RETRY_SECONDS"] = "1"
    return env


def _http_get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


@pytest.mark.parametrize(
    "ca",
    [
        # meshd's own mesh CA (kept in etcd, what meshd does without --ca-cert/--ca-key):
        # everything else of the chart, with the clients trusting meshd's bundle.
        "meshd-ca",
        # The chart's generated CA, as the pods run it (--ca-cert/--ca-key, ca.crt trusted):
        # Helm's genCA gives it a truncated SHA-256 key id, which meshd's certificates must
        # name as their issuer's for clients to chain them.
        "chart-ca",
    ],
)
def test_chart_meshd_probe_and_envoy_setup_against_real_processes(
    ca: str, etcd: EmbeddedEtcd, envoy_factory: EnvoyFactory, tmp_path: Path
) -> None:
    listener_port = free_port()
    objects = render("--set", f"gateway.listenerPort={listener_port}")
    files = ChartFiles(objects, tmp_path / "chart")
    ports = {"xds": free_port(), "admin": free_port(), "metrics": free_port()}
    data = tmp_path / "meshd-data"
    meshd_spec = pod_spec(find(objects, "Deployment", "-meshd"))
    meshd_container = container(meshd_spec, "meshd")
    argv = _meshd_argv(meshd_container["args"], files, etcd.endpoint, ports, data)
    if ca == "meshd-ca":
        for flag in ("--ca-cert", "--ca-key"):
            at = argv.index(flag)
            del argv[at : at + 2]
        files.trust = str(data / "ca.pem")
    log_path = tmp_path / "meshd.log"
    with log_path.open("wb") as log:
        meshd = subprocess.Popen(
            [console_script("meshd"), *argv], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _check_probe(meshd_container, files, ports, data, meshd, log_path)
        _check_envoy_setup(objects, files, ports, listener_port, envoy_factory, tmp_path)
    finally:
        meshd.terminate()
        try:
            meshd.wait(20)
        except subprocess.TimeoutExpired:
            meshd.kill()
            meshd.wait()


def _check_probe(
    meshd_container: dict[str, Any],
    files: ChartFiles,
    ports: dict[str, int],
    data: Path,
    meshd: subprocess.Popen[bytes],
    log_path: Path,
) -> None:
    command = list(meshd_container["readinessProbe"]["exec"]["command"])
    host, _ = hostport(flag_value(command, "--address"))
    assert command[0] == "python"

    def probe(port: int) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, files.local(command[1])]
        rest = command[2:]
        rest[rest.index("--address") + 1] = f"{host}:{port}"
        rest[rest.index("--ca") + 1] = str(data / "ca.pem")  # (the pod's --data-dir)
        return subprocess.run([*argv, *rest], capture_output=True, text=True, timeout=30)

    def meshd_log() -> str:
        assert meshd.poll() is None, log_path.read_text()
        return log_path.read_text()

    wait_until(meshd_log, "meshd ready", timeout=90, until=lambda text: "meshd ready" in text)
    wait_until(
        lambda: probe(ports["admin"]),
        "the chart's gRPC health probe to pass against meshd's admin port",
        timeout=15,
        until=lambda r: r.returncode == 0,
        interval=0.5,
        context=lambda: log_path.read_text()[-3000:],
    )
    wrong = probe(ports["xds"])
    assert wrong.returncode == 1, wrong
    assert "UNIMPLEMENTED" in wrong.stderr, wrong.stderr


def _check_envoy_setup(
    objects: list[dict[str, Any]],
    files: ChartFiles,
    ports: dict[str, int],
    listener_port: int,
    envoy_factory: EnvoyFactory,
    tmp_path: Path,
) -> None:
    boots = {}
    for workload, node in (("-gateway", "gateway-abc12"), ("-web", "web-abc12")):
        init = container(pod_spec(find(objects, "Deployment", workload)), "bootstrap")
        out = tmp_path / f"{node}.yaml"
        env = _bootstrap_env(init, files, ports, out, node)
        done = _run_script(init["command"], env, files)
        assert done.returncode == 0, done.stderr
        check = subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stderr[-3000:]
        boots[workload] = out
    job = pod_spec(find(objects, "Job", "-register"))
    register = container(job, "register")
    env = env_values(register)
    env["MESHCTL_ADMIN"] = f"localhost:{ports['admin']}"
    env["MESHCTL_CA"] = files.local(env["MESHCTL_CA"])
    env["MESHCTL_TOKEN"] = files.token
    env["ATTEMPTS"] = "3"
    applied = _run_script(register["command"], env, files)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    demo = _run_script(
        [console_script("meshctl"), "apply", "--dry-run", "-f", str(COMPOSE.parent / "demo.yaml")],
        env,
        files,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    documents = [d for d in yaml.safe_load_all((COMPOSE.parent / "demo.yaml").read_text()) if d]
    assert demo.stdout.count("(dry run)") == len(documents), demo.stdout
    gateway = envoy_factory(boots["-gateway"], name="gateway", timeout=30)
    # The listener came over ADS (TLS, join token): the gateway answers HTTP on it. The
    # example's endpoint is a cluster DNS name this machine cannot resolve, so Envoy
    # answers itself (503), which is enough to show it holds the listener and the route.
    status, headers = wait_until(
        lambda: _http_get(f"http://127.0.0.1:{listener_port}/"),
        "the gateway's listener from meshd",
        timeout=30,
        ignoring=(OSError,),
        context=lambda: gateway.log_path.read_text()[-3000:],
    )
    assert headers.get("server") == "envoy", (status, headers)
    stats = gateway.stats("control_plane.connected_state|ssl.handshake")
    assert stats.get("control_plane.connected_state") == 1, stats
