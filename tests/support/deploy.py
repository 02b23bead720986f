"""The deployment files (Helm chart, compose file) as the tests read them.

``helm`` is built from the Go module proxy by ``deploy/install-helm.sh`` into
``.tools/bin/helm`` (``make helm``); :func:`helm_binary` runs that script when the binary is
missing, so one test file runs on its own too. What meshd, Envoy and etcd accept comes from
the real programs: ``meshd --help`` (this checkout's console script), ``envoy --help`` and
``etcd --help``, never from a list kept here.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from integration.harness import envoy_binary
from tests.support.paths import REPO_ROOT

CHART = REPO_ROOT / "deploy" / "helm" / "apg-mesh"
EXTERNAL_VALUES = CHART / "ci" / "external-etcd-values.yaml"
COMPOSE = REPO_ROOT / "deploy" / "compose" / "compose.yaml"
INSTALL_HELM = REPO_ROOT / "deploy" / "install-helm.sh"
HELM = REPO_ROOT / ".tools" / "bin" / "helm"
HELM_BUILD_TIMEOUT = 1800.0
"""Seconds a first build of helm may take (hundreds of modules on a shared 2-core machine)."""

_VENV_BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    """This checkout's console script (next to the running Python), else ``python -m``."""
    path = _VENV_BIN / name
    return str(path) if path.exists() else name


@functools.cache
def helm_binary() -> str:
    """``.tools/bin/helm``, built first by ``deploy/install-helm.sh`` if needed (it does
    nothing when the pinned version is already there). A failed build fails the caller
    with the script's output: the deployment tests need helm, they are never skipped."""
    built = subprocess.run(
        ["sh", str(INSTALL_HELM)],
        capture_output=True,
        text=True,
        timeout=HELM_BUILD_TIMEOUT,
    )
    if built.returncode != 0 or not HELM.exists():
        raise AssertionError(
            f"deploy/install-helm.sh failed (exit {built.returncode}):\n{built.stderr[-4000:]}"
        )
    return str(HELM)


def helm(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run helm with ``args``; the result (the caller checks the exit status)."""
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=timeout)


def render(*options: str, release: str = "mesh", namespace: str = "apg") -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``options`` (``-f FILE``, ``--set K=V``): every
    rendered object (hooks included), parsed."""
    out = helm("template", release, str(CHART), "--namespace", namespace, *options)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def find(objects: Sequence[Mapping[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    """The one object of ``kind`` whose name ends with ``suffix``."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[o['metadata']['name'] for o in found]}"
    return dict(found[0])


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Deployment, StatefulSet or Job."""
    return dict(workload["spec"]["template"]["spec"])


def containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Init containers and containers of a pod spec."""
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def container(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers(spec) if c["name"] == name]
    return found


def env_values(c: Mapping[str, Any]) -> dict[str, str]:
    """A container's literal ``env`` values (those from secrets or fields left out)."""
    return {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}


# --------------------------------------------------------------------------- the programs


_OPTION = re.compile(r"^ {2}(?:-\w, )?(--[a-z][a-z0-9-]*)", re.M)


@functools.cache
def meshd_flags() -> frozenset[str]:
    """The long options ``meshd --help`` lists (the real console script of this checkout)."""
    out = subprocess.run(
        [console_script("meshd"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    flags = frozenset(_OPTION.findall(out.stdout))
    assert {"--etcd", "--xds", "--admin", "--metrics"} <= flags, out.stdout
    return flags


@functools.cache
def envoy_flags() -> frozenset[str]:
    """Options ``envoy --help`` lists (the Envoy the tests run)."""
    out = subprocess.run([envoy_binary(), "--help"], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    flags = frozenset(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", text))
    assert "--disable-hot-restart" in flags and "-c" in flags, text[:2000]
    return flags


@functools.cache
def etcd_flags() -> frozenset[str]:
    """Options ``etcd --help`` lists (the etcd the tests run; the images run the same 3.5)."""
    out = subprocess.run(
        [console_script("etcd"), "--help"], capture_output=True, text=True, timeout=60
    )
    text = out.stdout + out.stderr
    flags = frozenset(re.findall(r"^\s+(--[a-z][a-z0-9-]*)", text, re.M))
    assert "--initial-cluster" in flags, text[:2000]
    return flags


def long_flags(argv: Sequence[str]) -> list[str]:
    """The ``--flag`` words of an argument list (``--flag=value`` counts as ``--flag``)."""
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def env_flag(name: str) -> str:
    """The flag a ``MESHD_*`` variable stands for: ``MESHD_XDS_TLS`` -> ``--xds-tls``."""
    return "--" + name.removeprefix("MESHD_").lower().replace("_", "-")


@dataclass(frozen=True)
class MeshdPorts:
    """What one meshd container listens on, by its own parser."""

    xds: int
    admin: int | None
    metrics: int | None
    data_dir: str
    server_names: tuple[str, ...]

    def all(self) -> set[int]:
        return {p for p in (self.xds, self.admin, self.metrics) if p is not None}


def meshd_parse(argv: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """meshd's own parser (``parse_args``) run on a container's arguments and environment,
    in a subprocess so that this process's ``MESHD_*`` variables stay out: every setting
    as text. Fails the caller, with meshd's message, when meshd would refuse them."""
    return dict(_meshd_parse(tuple(argv), tuple(sorted(env.items()))))


@functools.cache
def _meshd_parse(
    argv: tuple[str, ...], env_items: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    env = dict(env_items)
    code = (
        "import json, sys\n"
        "from xds_server.cli.meshd import parse_args\n"
        "print(json.dumps({k: str(v) for k, v in vars(parse_args(sys.argv[1:])).items()}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
    out = subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, f"meshd refuses {list(argv)}: {out.stderr.strip()}"
    parsed: dict[str, str] = json.loads(out.stdout)
    return tuple(parsed.items())


def meshd_ports(parsed: Mapping[str, str]) -> MeshdPorts:
    """The ports a parsed meshd configuration (:func:`meshd_parse`) listens on."""

    def port(address: str) -> int | None:
        return int(address.rsplit(":", 1)[1]) if address else None

    xds_port = port(parsed["xds"])
    assert xds_port is not None
    names = tuple(n.strip() for n in parsed["server_names"].split(",") if n.strip())
    return MeshdPorts(
        xds_port, port(parsed["admin"]), port(parsed["metrics"]), parsed["data_dir"], names
    )


def env_dest(name: str) -> str:
    """The parser attribute a ``MESHD_*`` variable sets: ``MESHD_XDS_TLS`` -> ``xds_tls``."""
    return name.removeprefix("MESHD_").lower()


def flag_value(argv: Sequence[str], flag: str) -> str:
    """The value of ``flag`` in ``argv`` (``--flag value`` or ``--flag=value``)."""
    for i, word in enumerate(argv):
        if word == flag:
            return argv[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {list(argv)}")


def hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def url_ports(urls: str) -> set[int]:
    """Ports of a comma-separated URL list (etcd's ``--listen-*-urls``)."""
    return {int(u.rsplit(":", 1)[1]) for u in urls.split(",")}


def walk_probes(c: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(probe kind, probe) of a container."""
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in c:
            yield kind, dict(c[kind])
