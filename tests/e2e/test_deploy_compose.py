"""The compose file (deploy/compose/compose.yaml), checked by reading it.

No Docker engine runs here, so ``docker compose up`` cannot run; instead the file is parsed
(anchors and merge keys resolved, as compose does) and what a run depends on is checked:
every service, volume and file it names exists; meshd's flags are ones ``meshd --help``
lists, and with the image's environment (the Dockerfile's ``ENV``) its parser accepts them;
every published port and the health check dial a port meshd listens on with those flags,
the health check meshd's gRPC health service (the admin port); the setup script dials meshd
by a name in its certificate; Envoy and etcd run with flags they have; the demo registry's
listener and sidecar ports are the ones the containers publish and serve.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_dockerfile import env_of, stages
from tests.support.deploy import (
    CHART,
    COMPOSE,
    envoy_flags,
    etcd_flags,
    flag_value,
    hostport,
    long_flags,
    meshd_flags,
    meshd_parse,
    meshd_ports,
    url_ports,
)

COMPOSE_DIR = COMPOSE.parent
MESHD_IMAGE = "apg-meshd:dev"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and doc["services"]
    return doc


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _meshd_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run meshd itself (the image's entry point, not a one-shot script)."""
    return {
        name: s
        for name, s in _services(compose).items()
        if s.get("image") == MESHD_IMAGE and "entrypoint" not in s
    }


def _etcd_members(compose: dict[str, Any]) -> dict[str, list[str]]:
    """etcd member services: name -> command."""
    return {
        name: list(s["command"])
        for name, s in _services(compose).items()
        if str(s.get("image", "")).startswith("quay.io/coreos/etcd")
    }


def _image_env() -> dict[str, str]:
    return {k: v for k, v in env_of(stages()[-1]).items() if k.startswith("MESHD_")}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: path in the container -> host path (resolved)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = str((COMPOSE_DIR / source).resolve())
    return out


def _host_path(service: dict[str, Any], path: str) -> Path:
    """Where a path inside a service's container comes from on this checkout."""
    for target, source in _mounts(service).items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return Path(source) / path[len(target) :].lstrip("/")
    raise AssertionError(f"{path}: not bind-mounted from the repository")


def _script_assignments(text: str) -> list[dict[str, str]]:
    """``VAR=value ... sh envoy-bootstrap.sh`` invocations of a shell script: their vars."""
    joined = text.replace("\\\n", " ")
    calls = []
    for line in joined.splitlines():
        if "envoy-bootstrap.sh" in line:
            words = shlex.split(line)
            calls.append(dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w)))
    return calls


# --------------------------------------------------------------------------- structure


def test_compose_has_the_shape_and_every_reference_resolves(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert len(_etcd_members(compose)) == 3
    assert len(_meshd_services(compose)) == 2
    envoys = [n for n, s in services.items() if str(s.get("image", "")).startswith("envoyproxy/")]
    assert sorted(envoys) == ["api-sidecar", "gateway"]
    volumes = set(compose.get("volumes", {}))
    networks = set(compose.get("networks", {}))
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on {dep}"
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in services, name
        for network in service.get("networks", []):
            assert network in networks, f"{name}: network {network}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} not declared"
        if service.get("image") == MESHD_IMAGE:
            # Every service of the meshd image builds it: nothing tries to pull it.
            build = service["build"]
            assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).is_file()


# --------------------------------------------------------------------------- meshd


def test_compose_meshd_flags_ports_and_health_check(compose: dict[str, Any]) -> None:
    for name, service in _meshd_services(compose).items():
        argv = service["command"]
        missing = sorted(set(long_flags(argv)) - meshd_flags())
        assert not missing, f"{name}: flags meshd --help does not list: {missing}"
        env = {**_image_env(), **{k: str(v) for k, v in service.get("environment", {}).items()}}
        ports = meshd_ports(meshd_parse(argv, env))
        for published in service.get("ports", []):
            inside = int(str(published).rsplit(":", 1)[1])
            assert inside in ports.all(), f"{name} publishes {inside}; meshd: {ports}"
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"], name
        script = _host_path(service, test[2])
        assert script == CHART / "files" / "grpc_health_probe.py"
        host, port = hostport(flag_value(test, "--address"))
        assert port == ports.admin, f"{name}: health check on {port}, gRPC health: {ports.admin}"
        assert host in ports.server_names, name
        assert flag_value(test, "--ca") == f"{ports.data_dir}/ca.pem", name
        assert "meshd" in service["networks"]["mesh"]["aliases"], name


def test_compose_setup_dials_meshd_where_it_listens(compose: dict[str, Any]) -> None:
    services = _services(compose)
    meshd = next(iter(_meshd_services(compose).values()))
    ports = meshd_ports(meshd_parse(meshd["command"], _image_env()))
    setup = services["setup"]
    script = _host_path(setup, setup["entrypoint"][1]).read_text()
    admin_host, admin_port = hostport(re.search(r"MESHCTL_ADMIN=(\S+)", script)[1])  # type: ignore[index]
    assert admin_host in ports.server_names and admin_port == ports.admin
    calls = _script_assignments(script)
    assert len(calls) == 2
    outs = {}
    for call in calls:
        host, port = hostport(call["XDS"])
        assert host in ports.server_names and port == ports.xds, call
        outs[call["OUT"]] = call
    for envoy_name in ("gateway", "api-sidecar"):
        argv = services[envoy_name]["command"]
        assert argv[0] == "envoy"
        assert not {a for a in argv[1:] if a.startswith("-")} - envoy_flags(), envoy_name
        assert flag_value(argv, "-c") in outs, f"{envoy_name}: no setup step writes its bootstrap"
    # The etcd endpoints meshd and setup use are the members' advertised client URLs.
    members = _etcd_members(compose)
    advertised = sorted(
        flag_value(c, "--advertise-client-urls").removeprefix("http://") for c in members.values()
    )
    assert sorted(flag_value(meshd["command"], "--etcd").split(",")) == advertised
    assert sorted(re.search(r"ca get --etcd (\S+)", script)[1].split(",")) == advertised  # type: ignore[index]


def test_compose_etcd_members_flags_and_cluster(compose: dict[str, Any]) -> None:
    members = _etcd_members(compose)
    for name, argv in members.items():
        assert argv[0] == "etcd"
        missing = sorted(set(long_flags(argv[1:])) - etcd_flags())
        assert not missing, f"{name}: flags etcd --help does not list: {missing}"
        assert flag_value(argv, "--name") == name
        cluster = dict(m.split("=", 1) for m in flag_value(argv, "--initial-cluster").split(","))
        assert sorted(cluster) == sorted(members)
        assert cluster[name] == flag_value(argv, "--initial-advertise-peer-urls")
        assert url_ports(flag_value(argv, "--listen-peer-urls")) == {2380}


def test_compose_demo_registry_matches_the_containers(compose: dict[str, Any]) -> None:
    services = _services(compose)
    docs = [d for d in yaml.safe_load_all((COMPOSE_DIR / "demo.yaml").read_text()) if d]
    (listener,) = [d["spec"] for d in docs if d["kind"] == "Listener"]
    published = {int(str(p).rsplit(":", 1)[1]) for p in services["gateway"]["ports"]}
    assert published == {listener["port"]}
    assert "gateway" in listener["nodes"]
    for d in docs:
        if d["kind"] == "Endpoint" and d["namespace"] == "default":
            backend = services[d["spec"]["address"]]
            assert flag_value(backend["command"], "--port") == str(d["spec"]["port"])
            assert flag_value(backend["command"], "--host") == "0.0.0.0"
    (api,) = [d for d in docs if d["kind"] == "Service" and d["name"] == "api"]
    (api_endpoint,) = [d for d in docs if d["kind"] == "Endpoint" and d["service"] == "api"]
    app = services[api_endpoint["spec"]["address"]]
    assert flag_value(app["command"], "--port") == str(api["spec"]["sidecar"]["app_port"])
    assert flag_value(app["command"], "--host") == "127.0.0.1"
    assert services["api-sidecar"]["network_mode"] == f"service:{api_endpoint['spec']['address']}"
