"""Plain-text tables for people (``meshctl`` default output) and row builders per kind."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.entries import spec_json

STATE_NAMES = {
    pb.SYNC_STATE_SYNCED: "SYNCED",
    pb.SYNC_STATE_STALE: "STALE",
    pb.SYNC_STATE_NACKED: "NACKED",
    pb.SYNC_STATE_NOT_SENT: "NOT_SENT",
}


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    cells = [[str(c) for c in header], *([_cell(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _spec(entry: pb.Entry) -> dict[str, Any]:
    return spec_json(entry.spec) if not entry.raw else {}


def _upstreams(value: object) -> str:
    """A service's ``upstreams`` in one cell: ``*`` when absent (its sidecars get every
    service), ``none`` when empty (only what its listeners' routes need), else the entries."""
    if value is None:
        return "*"
    if not isinstance(value, list):
        return str(value)
    return ",".join(str(v) for v in value) or "none"


IN_FORCE = "in force"
REJECTED = "rejected"
REJECTED_KEPT = "rejected, last good in force"
WARNING = "in force, warning"


def entry_rows(
    kind: int,
    entries: Sequence[pb.Entry],
    errors: Mapping[str, pb.RegistryError] | None = None,
) -> tuple[list[str], list[list[object]], list[str]]:
    """Header, rows and notes of ``meshctl get`` for one kind.

    ``errors`` (ListErrors by key) adds a STATUS column when any entry shown is rejected:
    ``in force``, ``rejected`` (serves nothing) or ``rejected, last good in force`` (the
    value shown is not the one served); the notes say why, one line per rejected entry.
    """
    rows: list[list[object]] = []
    if kind == pb.KIND_SERVICE:
        header = ["NAMESPACE", "NAME", "PORT", "PROTOCOL", "SUBSETS", "UPSTREAMS", "REVISION"]
        for e in entries:
            s = _spec(e)
            subsets = ",".join(sorted(s.get("subsets") or {}))
            rows.append(
                [
                    e.ref.namespace,
                    e.ref.name,
                    s.get("port"),
                    s.get("protocol", "http"),
                    subsets,
                    _upstreams(s.get("upstreams")),
                    e.revision,
                ]
            )
    elif kind == pb.KIND_ENDPOINT:
        header = [
            "NAMESPACE",
            "SERVICE",
            "ID",
            "ADDRESS",
            "PORT",
            "WEIGHT",
            "ZONE",
            "DRAINING",
            "LEASE",
        ]
        for e in entries:
            s = _spec(e)
            rows.append(
                [
                    e.ref.namespace,
                    e.ref.service,
                    e.ref.name,
                    s.get("address"),
                    s.get("port"),
                    s.get("weight", 100),
                    s.get("zone"),
                    bool(s.get("draining", False)),
                    f"{e.lease:x}" if e.lease else "",
                ]
            )
    elif kind == pb.KIND_ROUTE:
        header = ["NAMESPACE", "NAME", "LISTENER", "MATCH", "DESTINATIONS", "REVISION"]
        for e in entries:
            s = _spec(e)
            match = s.get("match") or {}
            how = next(
                (f"{k}={match[k]}" for k in ("prefix", "path", "regex") if k in match), "prefix=/"
            )
            dests = ",".join(
                _destination(d) for d in s.get("destinations") or [] if isinstance(d, dict)
            )
            rows.append([e.ref.namespace, e.ref.name, s.get("listener"), how, dests, e.revision])
    elif kind == pb.KIND_POLICY:
        header = ["NAMESPACE", "NAME", "TARGET", "ACTION", "FROM", "TO", "REVISION"]
        for e in entries:
            s = _spec(e)
            # (a rejected entry may hold anything: show what has the expected shape)
            sources = [str(i) for f in _dicts(s.get("from")) for i in _list(f.get("identities"))]
            rules = [
                f"{','.join(map(str, _list(t.get('methods')) or ['*']))} "
                f"{','.join(map(str, _list(t.get('paths')) or ['*']))}"
                for t in _dicts(s.get("to"))
            ]
            who, what = ",".join(sources) or "*", ";".join(rules) or "*"
            rows.append(
                [
                    e.ref.namespace,
                    e.ref.name,
                    s.get("target"),
                    s.get("action"),
                    who,
                    what,
                    e.revision,
                ]
            )
    elif kind == pb.KIND_SECRET:
        # (meshd reads back a summary only: never a key, a PEM or an API key)
        header = ["NAMESPACE", "NAME", "KIND", "SUBJECT", "SANS", "EXPIRES", "REVISION"]
        for e in entries:
            s = _spec(e)
            sans = ",".join(map(str, _list(s.get("sans"))))
            if s.get("kind") == "keys":
                sans = f"{len(_list(s.get('clients')))} clients"
            rows.append(
                [
                    e.ref.namespace,
                    e.ref.name,
                    s.get("kind", "invalid"),
                    s.get("subject", ""),
                    sans,
                    s.get("not_after", ""),
                    e.revision,
                ]
            )
    elif kind == pb.KIND_NAMESPACE:
        header = ["NAME", "MTLS", "DEFAULT_POLICY", "EXPORT_TO", "REVISION"]
        for e in entries:
            s = _spec(e)
            exports = _list(s.get("export_to", ["*"]))
            rows.append(
                [
                    e.ref.name,
                    s.get("mtls", "off"),
                    s.get("default_policy", "allow"),
                    # (an empty list: its own namespace's routes only)
                    ",".join(map(str, exports)) or "none",
                    e.revision,
                ]
            )
    else:
        header = ["NAME", "ADDRESS", "PORT", "PROTOCOL", "NODES", "REVISION"]
        for e in entries:
            s = _spec(e)
            nodes = ",".join(s.get("nodes") or ["*"])
            rows.append(
                [
                    e.ref.name,
                    s.get("address", "0.0.0.0"),
                    s.get("port"),
                    s.get("protocol", "http"),
                    nodes,
                    e.revision,
                ]
            )
    errors = errors or {}
    notes: list[str] = []
    if any(e.raw or e.key in errors for e in entries):
        header = [*header, "STATUS"]
        for e, row in zip(entries, rows, strict=True):
            problem = errors.get(e.key)
            if problem is None and not e.raw:
                row.append(IN_FORCE)
                continue
            if problem is not None and problem.reason.startswith("warning:"):
                row.append(WARNING)  # (in force: a certificate expiring soon)
            else:
                row.append(REJECTED_KEPT if problem and problem.last_good_kept else REJECTED)
            where = "/".join(p for p in (e.ref.namespace, e.ref.service, e.ref.name) if p)
            if kind == pb.KIND_NAMESPACE:
                where = e.ref.name
            if problem is not None:
                field = f"{problem.field}: " if problem.field else ""
                kept = "; last good value kept" if problem.last_good_kept else ""
                notes.append(f"{where}: {field}{problem.reason}{kept}")
            if e.raw:
                notes.append(f"{where}: stored value is not JSON: {json.dumps(e.raw)[:40]}")
    return header, rows, notes


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in _list(value) if isinstance(v, dict)]


def _destination(d: dict[str, Any]) -> str:
    subset = f"@{d['subset']}" if d.get("subset") else ""
    return f"{d.get('service')}{subset}={d.get('weight', 1)}"  # (the registry's default)


def short_version(version: str) -> str:
    return version[:12]


def proxy_rows(
    proxies: Sequence[pb.ProxyStatus],
) -> tuple[list[str], list[list[object]], list[str]]:
    """``meshctl proxy-status``: one row per proxy, a state per type; NACK messages after.
    REPLICA is the meshd replica the proxy's ADS stream is connected to."""
    header = [
        "NODE_ID",
        "NODE_CLUSTER",
        "REPLICA",
        "PROTOCOL",
        "CDS",
        "EDS",
        "LDS",
        "RDS",
        "LAST_PUSH",
    ]
    rows: list[list[object]] = []
    notes: list[str] = []
    for p in proxies:
        by_type = {t.type: t for t in p.types}
        states = []
        last = 0.0
        for name in ("CDS", "EDS", "LDS", "RDS"):
            t = by_type.get(name)
            if t is None:
                states.append("NOT_SENT")
                continue
            state = STATE_NAMES.get(t.state, "?")
            version = t.acked_version if t.state == pb.SYNC_STATE_SYNCED else t.sent_version
            states.append(f"{state} {short_version(version)}".strip())
            if t.state == pb.SYNC_STATE_NACKED:
                notes.append(f"{p.node_id} {name} NACKED: {t.error}")
            if t.HasField("last_push"):
                last = max(last, t.last_push.ToMicroseconds() / 1e6)
        pushed = _ago(last) if last else ""
        rows.append([p.node_id, p.node_cluster, p.replica or "-", p.protocol, *states, pushed])
    return header, rows, notes


def missing_replicas(replicas: Sequence[pb.ReplicaStatus], what: str) -> list[str]:
    """One line per meshd replica whose part (``what``: "proxies", "load reports") is
    not in a whole-mesh answer, and why."""
    return [
        f"replica {r.id} ({r.address or 'no admin API'}) did not answer: {r.error}; "
        f"its {what} are missing from this view"
        for r in replicas
        if not r.answered
    ]


def _ago(ts: float) -> str:
    import datetime

    when = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- health and topology ----------------------------------------------------------------------

HEALTH_NAMES = {v: k.removeprefix("HEALTH_STATUS_") for k, v in pb.HealthStatus.items() if v != 0}
ACTION_NAMES = {
    v: k.removeprefix("SCALING_ACTION_").lower() for k, v in pb.ScalingAction.items() if v != 0
}


def health_rows(
    services: Sequence[pb.ServiceHealth],
) -> tuple[list[str], list[list[object]], list[str], list[list[object]]]:
    """``meshctl health``: a summary row per service, then a row per endpoint."""
    summary = ["SERVICE", "HEALTHY", "ZONES", "CHECK", "NOTE"]
    detail = ["SERVICE", "ENDPOINT", "ADDRESS", "ZONE", "STATUS", "REPORTS(H/U)", "CHECKERS"]
    srows: list[list[object]] = []
    drows: list[list[object]] = []
    for s in services:
        name = f"{s.namespace}/{s.name}"
        zones = ", ".join(f"{z.zone or '-'} {z.healthy}/{z.total}" for z in s.zones)
        # Envoy's panic threshold keeps traffic on all endpoints: people must see that.
        note = "ALL UNHEALTHY (Envoy panic mode)" if s.all_unhealthy else ""
        srows.append([name, f"{s.healthy}/{s.total}", zones, s.check_mode, note])
        for e in s.endpoints:
            reports = f"{e.healthy_reports}/{e.unhealthy_reports}"
            drows.append(
                [
                    name,
                    e.id,
                    e.address,
                    e.zone,
                    HEALTH_NAMES.get(e.status, "?"),
                    reports,
                    ",".join(e.checkers),
                ]
            )
    return summary, srows, detail, drows


def topology_rows(resp: pb.GetTopologyResponse) -> tuple[list[str], list[list[object]]]:
    """``meshctl topology``: one row per edge."""
    header = ["SOURCE", "DESTINATION", "RPS", "ERROR_RATE", "IN_FLIGHT", "IDLE", "ALLOWED"]
    rows: list[list[object]] = [
        [
            e.source,
            e.destination,
            f"{e.rps:.2f}",
            f"{100 * e.error_rate:.1f}%",
            e.in_flight,
            e.idle,
            e.allowed,
        ]
        for e in resp.edges
    ]
    return header, rows


def red_rows(
    services: Sequence[pb.ServiceMetrics],
) -> tuple[list[str], list[list[object]], list[str], list[list[object]]]:
    """``meshctl red``: one row per service, then one per (service, upstream endpoint).
    DURATION is ``-`` while meshd has none (LRS carries no latency)."""
    header = ["SERVICE", "RPS", "ERRORS/S", "ERROR_RATE", "IN_FLIGHT", "DURATION"]
    rows: list[list[object]] = []
    detail = ["SERVICE", "SUBSET", "ENDPOINT", "RPS", "ERROR_RATE", "IN_FLIGHT"]
    drows: list[list[object]] = []
    for s in services:
        name = f"{s.namespace}/{s.name}"
        duration = f"{s.duration_ms:.1f}ms" if s.HasField("duration_ms") else None
        rows.append(
            [
                name,
                f"{s.rps:.2f}",
                f"{s.error_rps:.2f}",
                f"{100 * s.error_rate:.1f}%",
                s.in_flight,
                duration,
            ]
        )
        for ep in s.endpoints:
            drows.append(
                [
                    name,
                    ep.subset,
                    ep.endpoint,
                    f"{ep.rps:.2f}",
                    f"{100 * ep.error_rate:.1f}%",
                    ep.in_flight,
                ]
            )
    return header, rows, detail, drows


def recommend_rows(
    services: Sequence[pb.ServiceRecommendation],
) -> tuple[list[str], list[list[object]]]:
    """``meshctl recommend``: one row per service with ``scaling``."""
    header = ["SERVICE", "RPS", "TARGET_PER_ENDPOINT", "ENDPOINTS", "RECOMMENDED", "ACTION"]
    rows: list[list[object]] = [
        [
            f"{s.namespace}/{s.name}",
            f"{s.scaling.observed_rps:.2f}",
            s.scaling.target_rps_per_endpoint,
            s.scaling.current_endpoints,
            s.scaling.recommended_endpoints,
            ACTION_NAMES.get(s.scaling.action, "?"),
        ]
        for s in services
    ]
    return header, rows


def _dot_id(value: str) -> str:
    """A DOT quoted ID (node ids come from proxies' node clusters: never trust them)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return f'"{escaped}"'


def topology_dot(resp: pb.GetTopologyResponse) -> str:
    """The graph in Graphviz DOT: services as boxes, proxy groups as ellipses; hot edges
    thick and labelled with their rate, idle ones dashed grey, traffic no route allows red,
    edges with errors orange (over 5 %: red)."""
    lines = [
        "digraph mesh {",
        "  rankdir=LR;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for n in resp.nodes:
        shape = " [shape=ellipse]" if n.kind == pb.NODE_KIND_PROXY_GROUP else ""
        lines.append(f"  {_dot_id(n.id)}{shape};")
    for e in resp.edges:
        attrs: list[str] = []
        color = ""
        if e.idle:
            label = "idle"
            attrs += ["style=dashed", "fontcolor=gray50"]
            color = "gray50"
        else:
            label = f"{e.rps:.1f} rps"
            if e.error_rate > 0:
                label += f", {100 * e.error_rate:.1f}% errors"
                color = "red" if e.error_rate > 0.05 else "orange"
            attrs.append(f"penwidth={1 + min(4.0, math.log10(1 + e.rps)):.1f}")
        if not e.allowed:
            label += " (no route)"
            color = "red"
        attrs.insert(0, f"label={_dot_id(label)}")
        if color:
            attrs.append(f"color={color}")
        lines.append(f"  {_dot_id(e.source)} -> {_dot_id(e.destination)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
