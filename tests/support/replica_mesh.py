"""Two meshd replicas as processes on one etcd, and Envoys that know both.

:func:`start_replica` runs meshd as its own process (so a test may ``kill -9`` it) with a
1 s report interval (LRS load and HDS results arrive within seconds) and its admin API on
a free port; restarted on the same xDS port it keeps its replica id
(``<host name>:<xds port>``). :func:`envoy_bootstrap` lists every replica's xDS address.
:func:`view` reads what ``meshctl`` shows against one replica; :func:`xds_updates` the
Envoy stats that count what a proxy was sent.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from integration.bench_scale import Meshd
from integration.harness import EnvoyProcess
from tests.support.meshctl import meshctl
from xds_server.cli.bootstrap import bootstrap

REPORT_INTERVAL_MS = 1000
TYPES = ("CDS", "EDS", "LDS", "RDS")


def start_replica(etcd: str, workdir: Path, name: str, xds_port: int | None = None) -> Meshd:
    """meshd as a process (log level info: its log names its replica id)."""
    return Meshd(
        etcd,
        workdir,
        name,
        log_level="info",
        xds_port=xds_port,
        grace=0.5,
        extra_args=["--report-interval-ms", str(REPORT_INTERVAL_MS)],
    )


def replica_id(meshd: Meshd) -> str:
    """The id meshd logged as ready with (``replica=...``)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        m = re.search(r"meshd ready: replica=(\S+)", meshd.log_path.read_text(errors="replace"))
        if m:
            return m.group(1)
        meshd.check_alive()
        time.sleep(0.05)
    raise TimeoutError(f"{meshd.log_path.name}: no 'meshd ready' line")


def envoy_bootstrap(
    node_id: str, node_cluster: str, replicas: list[Meshd], *, delta: bool = False
) -> dict[str, Any]:
    """A bootstrap whose ADS cluster holds every replica (``meshctl bootstrap --xds a,b``)."""
    return bootstrap(
        node_id,
        node_cluster,
        admin_port=0,
        delta=delta,
        xds_addresses=[("127.0.0.1", m.xds_port) for m in replicas],
    )


async def view(meshd: Meshd, command: str, *args: str, whole: bool = True) -> Any:
    """``meshctl <command> -o json`` against ``meshd``'s admin API, decoded; it must
    succeed and (``whole``) warn of no replica missing from the answer (a killed replica
    stays listed in etcd, not answering, until its lease expires)."""
    code, out, err = await meshctl(
        command, *args, "-o", "json", "--admin", f"127.0.0.1:{meshd.admin_port}"
    )
    assert code == 0, (command, code, err)
    assert not whole or "did not answer" not in err, (command, err)
    return json.loads(out)


def proxies(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``proxy-status`` JSON by node id: replica, and per type its state and version."""
    out = {}
    for p in status["proxies"]:
        types = {
            t["type"]: (t["state"], t.get("acked_version") or t.get("sent_version") or "")
            for t in p.get("types", [])
        }
        out[p["node_id"]] = {"replica": p.get("replica", ""), "types": types}
    return out


def all_synced(entry: dict[str, Any]) -> bool:
    return all(entry["types"].get(t, ("",))[0] == "SYNCED" for t in TYPES)


def xds_updates(envoy: EnvoyProcess) -> dict[str, int]:
    """What Envoy counts of the config it was sent: responses accepted for CDS, LDS and
    each mesh cluster's EDS (changed or not: ``update_success``), and RDS responses that
    changed nothing (``update_success - config_reload``) per route configuration.
    (``update_attempt`` counts requests, so it moves with every new stream.)"""
    stats = envoy.stats(r"update_success$|config_reload$")
    out: dict[str, int] = {}
    for key in ("cluster_manager.cds.update_success", "listener_manager.lds.update_success"):
        out[key] = stats.get(key, 0)
    for key, value in stats.items():
        if key.startswith("cluster.") and "xds_cluster" not in key:
            out[key] = value
        if ".rds." in key and key.endswith(".update_success"):
            reload = stats.get(key.removesuffix("update_success") + "config_reload", 0)
            out[key.removesuffix("update_success") + "no_op_updates"] = value - reload
    return out
