"""``meshctl`` commands on what the mesh observes: health, topology, scaling advice, RED.

Same conventions as :mod:`xds_server.cli.commands` (tables, ``-o json|yaml``, exit codes).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from xds_server.admin.api import admin_pb2 as pb
from xds_server.cli.commands import Client, UserError, message_dict
from xds_server.cli.manifest import dumps
from xds_server.cli.tables import (
    ACTION_NAMES,
    HEALTH_NAMES,
    health_rows,
    missing_replicas,
    recommend_rows,
    red_rows,
    table,
    topology_dot,
    topology_rows,
)

# -- health and topology ----------------------------------------------------------------------


def health(client: Client, args: argparse.Namespace) -> int:
    """``meshctl health [SERVICE] [-n NS]``: aggregated endpoint health per service."""
    req = pb.GetHealthRequest(service=args.service or "", namespace=args.namespace or "")
    services = list(client.call("GetHealth", req).services)
    if args.output in ("json", "yaml"):
        docs = []
        for s in services:
            doc = message_dict(s)
            doc = {"service": f"{s.namespace}/{s.name}", **doc}
            for ep, msg in zip(doc["endpoints"], s.endpoints, strict=True):
                ep["status"] = HEALTH_NAMES.get(msg.status, "?")
            docs.append(doc)
        sys.stdout.write(dumps({"services": docs}, args.output))
        return 0
    if not services:
        print("no services found", file=sys.stderr)
        return 0
    summary, srows, detail, drows = health_rows(services)
    sys.stdout.write(table(summary, srows))
    if drows:
        sys.stdout.write("\n" + table(detail, drows))
    return 0


SVG_HELP = (
    "-o svg needs Graphviz's `dot` on PATH (e.g. apt-get install graphviz); "
    "-o dot prints the graph for rendering elsewhere"
)


def topology(client: Client, args: argparse.Namespace) -> int:
    """``meshctl topology``: edges with rates; ``-o dot`` (Graphviz), ``-o svg`` (via dot)."""
    dot = shutil.which("dot") if args.output == "svg" else None
    if args.output == "svg" and dot is None:
        # Fail before calling meshd: nothing it answers could be shown.
        raise UserError(SVG_HELP)
    if args.window < 0:
        raise UserError(f"--window must be >= 0 seconds, got {args.window}")
    resp = client.call("GetTopology", pb.GetTopologyRequest(window_seconds=args.window))
    _warn_missing(args, resp.replicas)
    if args.output in ("json", "yaml"):
        nodes = [
            {"id": n.id, "kind": pb.NodeKind.Name(n.kind).removeprefix("NODE_KIND_").lower()}
            for n in resp.nodes
        ]
        edges = [
            {
                "source": e.source,
                "destination": e.destination,
                "rps": e.rps,
                "error_rate": e.error_rate,
                "in_flight": e.in_flight,
                "idle": e.idle,
                "allowed": e.allowed,
                "endpoints": [_endpoint_doc(ep) for ep in e.endpoints],
            }
            for e in resp.edges
        ]
        doc = {
            "window_seconds": resp.window_seconds,
            "nodes": nodes,
            "edges": edges,
            "replicas": [message_dict(r) for r in resp.replicas],
        }
        sys.stdout.write(dumps(doc, args.output))
        return 0
    if args.output == "dot":
        sys.stdout.write(topology_dot(resp))
        return 0
    if dot is not None:
        done = subprocess.run(
            [dot, "-Tsvg"], input=topology_dot(resp), capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise UserError(f"dot -Tsvg failed: {done.stderr.strip() or done.returncode}")
        sys.stdout.write(done.stdout)
        return 0
    if not resp.edges:
        print(f"no edges (window {resp.window_seconds:g}s)")
        return 0
    header, rows = topology_rows(resp)
    sys.stdout.write(table(header, rows))
    print(f"window {resp.window_seconds:g}s")
    return 0


def recommend(client: Client, args: argparse.Namespace) -> int:
    """``meshctl recommend``: endpoints the observed load needs, per service with scaling."""
    if args.window < 0:
        raise UserError(f"--window must be >= 0 seconds, got {args.window}")
    resp = client.call(
        "GetRecommendations", pb.GetRecommendationsRequest(window_seconds=args.window)
    )
    _warn_missing(args, resp.replicas)
    if args.output in ("json", "yaml"):
        items = [
            {
                "service": f"{s.namespace}/{s.name}",
                "observed_rps": s.scaling.observed_rps,
                "target_rps_per_endpoint": s.scaling.target_rps_per_endpoint,
                "current_endpoints": s.scaling.current_endpoints,
                "recommended_endpoints": s.scaling.recommended_endpoints,
                "action": ACTION_NAMES.get(s.scaling.action, "?"),
            }
            for s in resp.services
        ]
        doc = {
            "window_seconds": resp.window_seconds,
            "services": items,
            "replicas": [message_dict(r) for r in resp.replicas],
        }
        sys.stdout.write(dumps(doc, args.output))
        return 0
    if not resp.services:
        print('no services with scaling (registry: "scaling": {"target_rps_per_endpoint": N})')
        return 0
    header, rows = recommend_rows(resp.services)
    sys.stdout.write(table(header, rows))
    print(f"window {resp.window_seconds:g}s")
    return 0


def _warn_missing(args: argparse.Namespace, replicas: Sequence[pb.ReplicaStatus]) -> None:
    """A warning on stderr per replica whose load reports the answer lacks."""
    for line in missing_replicas(replicas, "load reports"):
        print(f"meshctl {args.command}: warning: {line}", file=sys.stderr)


def _endpoint_doc(ep: pb.EndpointLoad) -> dict[str, Any]:
    return {
        "subset": ep.subset,
        "endpoint": ep.endpoint,
        "rps": ep.rps,
        "error_rate": ep.error_rate,
        "in_flight": ep.in_flight,
    }


def red(client: Client, args: argparse.Namespace) -> int:
    """``meshctl red [SERVICE] [-n NS] [--window S]``: rate, errors and in-flight requests
    per service (and per upstream endpoint) over the window, from the proxies' load
    reports. Duration is shown only when meshd has it: LRS carries no latency."""
    if args.window < 0:
        raise UserError(f"--window must be >= 0 seconds, got {args.window}")
    req = pb.GetServiceMetricsRequest(
        service=args.service or "", namespace=args.namespace or "", window_seconds=args.window
    )
    resp = client.call("GetServiceMetrics", req)
    _warn_missing(args, resp.replicas)
    if args.output in ("json", "yaml"):
        items = [
            {
                "service": f"{s.namespace}/{s.name}",
                "rps": s.rps,
                "error_rps": s.error_rps,
                "error_rate": s.error_rate,
                "in_flight": s.in_flight,
                # null, not 0: no duration is known (LRS carries no latency).
                "duration_ms": s.duration_ms if s.HasField("duration_ms") else None,
                "endpoints": [_endpoint_doc(ep) for ep in s.endpoints],
            }
            for s in resp.services
        ]
        doc = {
            "window_seconds": resp.window_seconds,
            "services": items,
            "replicas": [message_dict(r) for r in resp.replicas],
        }
        sys.stdout.write(dumps(doc, args.output))
        return 0
    if not resp.services:
        print("no services found", file=sys.stderr)
        return 0
    header, rows, detail, drows = red_rows(resp.services)
    sys.stdout.write(table(header, rows))
    if drows:
        sys.stdout.write("\n" + table(detail, drows))
    print(f"window {resp.window_seconds:g}s (duration: not in load reports; see Envoy's stats)")
    return 0
