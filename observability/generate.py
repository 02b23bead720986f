# ruff: noqa: E501  (a PromQL expression reads best on one line)
"""Generate the Grafana dashboards in ``observability/grafana/dashboards/`` from code.

    .venv/bin/python observability/generate.py          # rewrite the JSON files
    .venv/bin/python observability/generate.py --check  # exit 1 if they are out of date

Dashboards are plain Grafana JSON (schema 39, Grafana 10/11); every panel queries the
Prometheus datasource chosen by the ``datasource`` variable. ``tests/test_observability.py``
runs every panel's PromQL against a real Prometheus scraping meshd and Envoys, and checks
that the committed JSON is what this script writes.

Label vocabulary (set by ``meshctl bootstrap``'s stats tags and by meshd):
``mesh_service`` (``web.default``), ``mesh_subset`` (``v1``), ``envoy_cluster_name``
(``web.default|v1``), ``mesh_route`` (``default/web-split``), ``envoy_endpoint_address``,
``envoy_http_conn_manager_prefix`` (the listener), ``node_cluster`` / ``node_id`` (from
meshd's ``/sd/envoy``). meshd's own health and topology series say ``service`` as
``ns/name``; its per-endpoint series also carry ``mesh_service`` (``name.ns``), so the
service-detail dashboard's ``$service`` selects them too.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARDS_DIR = Path(__file__).resolve().parent / "grafana" / "dashboards"
RATE = "$__rate_interval"
MESH = 'mesh_service!=""'


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel]
    variables: list[dict[str, Any]] = field(default_factory=list)
    tags: tuple[str, ...] = ("mesh",)


def T(expr: str, legend: str = "") -> Target:  # noqa: N802 (reads like a constructor)
    return Target(" ".join(expr.split()), legend)


def error_ratio(selector: str, by: str) -> str:
    return (
        f'sum by ({by}) (rate(envoy_cluster_upstream_rq_xx{{envoy_response_code_class="5",'
        f"{selector}}}[{RATE}])) / sum by ({by}) (rate(envoy_cluster_upstream_rq_total"
        f"{{{selector}}}[{RATE}]))"
    )


def quantile(q: float, selector: str, by: str) -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate(envoy_cluster_upstream_rq_time_bucket{{{selector}}}[{RATE}])))"
    )


def overflows(selector: str, by: str) -> str:
    """Connections, pending requests and retries refused by circuit breakers, per second.
    (One selector over the three names would not do: rate() drops the names, and series
    that differ only by name collide.)"""
    return " + ".join(
        f"sum by ({by}) (rate(envoy_cluster_upstream_{what}_overflow{{{selector}}}[{RATE}]))"
        for what in ("cx", "rq_pending", "rq_retry")
    )


def mesh_overview() -> Dashboard:
    return Dashboard(
        uid="mesh-overview",
        title="Mesh overview",
        description="Traffic, errors, latency and resilience of every service, from Envoy.",
        panels=[
            Panel(
                "Requests per second by service",
                (
                    T(
                        f"sum by (mesh_service) (rate(envoy_cluster_upstream_rq_total{{{MESH}}}[{RATE}]))",
                        "{{mesh_service}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "5xx error ratio by service",
                (T(error_ratio(MESH, "mesh_service"), "{{mesh_service}}"),),
                unit="percentunit",
            ),
            Panel(
                "p50 upstream latency by service",
                (T(quantile(0.5, MESH, "mesh_service"), "{{mesh_service}}"),),
                unit="ms",
            ),
            Panel(
                "p99 upstream latency by service",
                (T(quantile(0.99, MESH, "mesh_service"), "{{mesh_service}}"),),
                unit="ms",
            ),
            Panel(
                "Healthy endpoints by service",
                (
                    T(
                        f'max by (mesh_service) (envoy_cluster_membership_healthy{{{MESH},mesh_subset=""}})',
                        "{{mesh_service}} healthy",
                    ),
                    T(
                        f'max by (mesh_service) (envoy_cluster_membership_total{{{MESH},mesh_subset=""}})',
                        "{{mesh_service}} total",
                    ),
                ),
            ),
            Panel(
                "Outlier ejections (active) by service",
                (
                    T(
                        f"sum by (mesh_service) (envoy_cluster_outlier_detection_ejections_active{{{MESH}}})",
                        "{{mesh_service}}",
                    ),
                ),
                description="Endpoints currently ejected by outlier detection, summed over proxies and subsets.",
            ),
            Panel(
                "Circuit-breaker overflows by service",
                (T(overflows(MESH, "mesh_service"), "{{mesh_service}}"),),
                unit="reqps",
                description="Connections, pending requests and retries refused because a circuit-breaker limit was reached.",
            ),
            Panel(
                "Rate-limited requests by listener",
                (
                    T(
                        f"sum by (envoy_http_conn_manager_prefix) (rate(envoy_http_local_rate_limit_rate_limited[{RATE}]))",
                        "{{envoy_http_conn_manager_prefix}}",
                    ),
                ),
                unit="reqps",
                description="Requests answered 429 by a route's local rate limit.",
            ),
            Panel(
                "Downstream requests per second by listener",
                (
                    T(
                        f"sum by (envoy_http_conn_manager_prefix) (rate(envoy_http_downstream_rq_total[{RATE}]))",
                        "{{envoy_http_conn_manager_prefix}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Healthy endpoints by service (meshd, HDS verdicts)",
                (
                    T(
                        'max by (service) (meshd_service_endpoints{state="healthy"})',
                        "{{service}} healthy",
                    ),
                    T(
                        'max by (service) (meshd_service_endpoints{state="total"})',
                        "{{service}} total",
                    ),
                ),
                description="The verdicts meshd aggregates from HDS probes and sends to every proxy in EDS (max over meshd replicas, which agree). Endpoints no proxy probes (no health_check, or no report yet) are UNKNOWN: not counted healthy, though Envoy keeps sending to them.",
            ),
            Panel(
                "Traffic between services (meshd, LRS edges)",
                (
                    T(
                        "sum by (source, destination) (meshd_edge_requests_per_second)",
                        "{{source}} -> {{destination}}",
                    ),
                ),
                unit="reqps",
                description="Requests per second per edge (proxy group or service -> upstream service) from the proxies' load reports, over meshd's sliding window (summed over meshd replicas: each counts its own proxies). Idle allowed edges read 0.",
            ),
            Panel(
                "Error ratio between services (meshd, LRS edges)",
                (
                    T(
                        "sum by (source, destination) (meshd_edge_error_ratio * meshd_edge_requests_per_second) / sum by (source, destination) (meshd_edge_requests_per_second)",
                        "{{source}} -> {{destination}}",
                    ),
                ),
                unit="percentunit",
            ),
            Panel(
                "Connected proxies",
                (
                    T(
                        "sum by (node_cluster, protocol) (meshd_connected_proxies)",
                        "{{node_cluster}} {{protocol}}",
                    ),
                ),
                kind="stat",
            ),
        ],
    )


SERVICE = 'mesh_service="$service"'


def service_detail() -> Dashboard:
    return Dashboard(
        uid="mesh-service",
        title="Mesh service detail",
        description="One service by subset, route and upstream endpoint.",
        variables=[
            {
                "name": "service",
                "type": "query",
                "label": "Service",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": {
                    "query": "label_values(envoy_cluster_upstream_rq_total, mesh_service)",
                    "refId": "service",
                },
                "definition": "label_values(envoy_cluster_upstream_rq_total, mesh_service)",
                "refresh": 2,
                "sort": 1,
            }
        ],
        panels=[
            Panel(
                "Requests per second by subset",
                (
                    T(
                        f"sum by (mesh_subset) (rate(envoy_cluster_upstream_rq_total{{{SERVICE}}}[{RATE}]))",
                        "{{mesh_subset}}",
                    ),
                ),
                unit="reqps",
                description="The service's own cluster (no subset) carries requests routed to the service as a whole.",
            ),
            Panel(
                "5xx error ratio by subset",
                (T(error_ratio(SERVICE, "mesh_subset"), "{{mesh_subset}}"),),
                unit="percentunit",
            ),
            Panel(
                "p50 / p99 latency by subset",
                (
                    T(quantile(0.5, SERVICE, "mesh_subset"), "p50 {{mesh_subset}}"),
                    T(quantile(0.99, SERVICE, "mesh_subset"), "p99 {{mesh_subset}}"),
                ),
                unit="ms",
            ),
            Panel(
                "Responses by code class",
                (
                    T(
                        f"sum by (envoy_response_code_class) (rate(envoy_cluster_upstream_rq_xx{{{SERVICE}}}[{RATE}]))",
                        "{{envoy_response_code_class}}xx",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Requests per second by route",
                (
                    T(
                        f'sum by (mesh_route) (rate(envoy_vhost_route_upstream_rq_total{{mesh_route!=""}}[{RATE}]))',
                        "{{mesh_route}}",
                    ),
                ),
                unit="reqps",
                description="Per-route stats of every route (Envoy's vhost.<host>.route.<ns/name>.*).",
            ),
            Panel(
                "Healthy / total endpoints by subset",
                (
                    T(
                        f"max by (mesh_subset) (envoy_cluster_membership_healthy{{{SERVICE}}})",
                        "healthy {{mesh_subset}}",
                    ),
                    T(
                        f"max by (mesh_subset) (envoy_cluster_membership_total{{{SERVICE}}})",
                        "total {{mesh_subset}}",
                    ),
                ),
                description="Endpoints as the proxies see them (health checks, outlier ejections and draining included).",
            ),
            Panel(
                "Upstream connection failures by subset",
                (
                    T(
                        f"sum by (mesh_subset) (rate(envoy_cluster_upstream_cx_connect_fail{{{SERVICE}}}[{RATE}]))",
                        "{{mesh_subset}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Outlier ejections by subset",
                (
                    T(
                        f"sum by (mesh_subset) (envoy_cluster_outlier_detection_ejections_active{{{SERVICE}}})",
                        "active {{mesh_subset}}",
                    ),
                    T(
                        f"sum by (mesh_subset) (increase(envoy_cluster_outlier_detection_ejections_enforced_total{{{SERVICE}}}[{RATE}]))",
                        "enforced {{mesh_subset}}",
                    ),
                ),
            ),
            Panel(
                "Circuit-breaker overflows by subset",
                (T(overflows(SERVICE, "mesh_subset"), "{{mesh_subset}}"),),
                unit="reqps",
            ),
            Panel(
                "Requests per second by upstream endpoint (meshd, LRS)",
                (
                    T(
                        f"sum by (subset, endpoint) (meshd_endpoint_requests_per_second{{{SERVICE}}})",
                        "{{endpoint}} {{subset}}",
                    ),
                ),
                unit="reqps",
                description="From the proxies' load reports (per-endpoint LRS stats, summed over proxies and meshd replicas): Envoy cannot keep per-endpoint stats next to LRS. Only endpoints that carried load in meshd's window have a series.",
            ),
            Panel(
                "Error ratio by upstream endpoint (meshd, LRS)",
                (
                    T(
                        f"sum by (subset, endpoint) (meshd_endpoint_error_ratio{{{SERVICE}}} * meshd_endpoint_requests_per_second{{{SERVICE}}}) / sum by (subset, endpoint) (meshd_endpoint_requests_per_second{{{SERVICE}}})",
                        "{{endpoint}} {{subset}}",
                    ),
                ),
                unit="percentunit",
                description="Failed requests (5xx and connection failures) over completed requests, per endpoint.",
            ),
            Panel(
                "Requests in flight by upstream endpoint (meshd, LRS)",
                (
                    T(
                        f"sum by (subset, endpoint) (meshd_endpoint_in_flight_requests{{{SERVICE}}})",
                        "{{endpoint}} {{subset}}",
                    ),
                ),
            ),
        ],
    )


def control_plane() -> Dashboard:
    return Dashboard(
        uid="mesh-control-plane",
        title="Mesh control plane",
        description="meshd: proxies, pushes, NACKs, convergence, registry; and the proxies' view of it.",
        panels=[
            Panel(
                "Connected proxies by node cluster and protocol",
                (
                    T(
                        "sum by (node_cluster, protocol) (meshd_connected_proxies)",
                        "{{node_cluster}} {{protocol}}",
                    ),
                ),
            ),
            Panel(
                "Proxy resource types by sync state",
                (T("sum by (state) (meshd_xds_proxy_types)", "{{state}}"),),
                description="(proxy, type) pairs SYNCED, STALE (sent, not ACKed yet), NACKED or NOT_SENT.",
            ),
            Panel(
                "Pushes per second by type",
                (T(f"sum by (type) (rate(meshd_xds_pushes_total[{RATE}]))", "{{type}}"),),
                unit="ops",
            ),
            Panel(
                "Pushed bytes per second by type",
                (T(f"sum by (type) (rate(meshd_xds_push_bytes_total[{RATE}]))", "{{type}}"),),
                unit="Bps",
            ),
            Panel(
                "NACKs by type",
                (T(f"sum by (type) (increase(meshd_xds_nacks_total[{RATE}]))", "{{type}}"),),
            ),
            Panel(
                "Push latency p99 by type (change reaching meshd -> response written)",
                (
                    T(
                        f"histogram_quantile(0.99, sum by (type, le) (rate(meshd_xds_push_latency_seconds_bucket[{RATE}])))",
                        "{{type}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Config convergence (change -> last proxy ACK)",
                (
                    T(
                        f"histogram_quantile(0.5, sum by (le) (rate(meshd_config_convergence_seconds_bucket[{RATE}])))",
                        "p50",
                    ),
                    T(
                        f"histogram_quantile(0.99, sum by (le) (rate(meshd_config_convergence_seconds_bucket[{RATE}])))",
                        "p99",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Oldest unACKed push by node cluster",
                (
                    T(
                        "max by (node_cluster) (meshd_xds_oldest_unacked_push_seconds)",
                        "{{node_cluster}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Registry revision",
                (T("max by (instance) (meshd_registry_revision)", "{{instance}}"),),
            ),
            Panel(
                "Registry watch lag p99 and translation p99",
                (
                    T(
                        f"histogram_quantile(0.99, sum by (le) (rate(meshd_registry_watch_lag_seconds_bucket[{RATE}])))",
                        "watch lag",
                    ),
                    T(
                        f"histogram_quantile(0.99, sum by (le) (rate(meshd_translate_seconds_bucket[{RATE}])))",
                        "translate",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Rejected registry entries by kind",
                (T("sum by (kind) (meshd_registry_rejected_entries)", "{{kind}}"),),
            ),
            Panel(
                "etcd: connected and errors",
                (
                    T("min by (instance) (meshd_registry_connected)", "connected {{instance}}"),
                    T(
                        f"sum by (instance) (increase(meshd_registry_errors_total[{RATE}]))",
                        "errors {{instance}}",
                    ),
                ),
            ),
            Panel(
                "Proxies' view: connected to the control plane",
                (
                    T(
                        "min by (node_cluster) (envoy_control_plane_connected_state)",
                        "{{node_cluster}}",
                    ),
                ),
            ),
            Panel(
                "Proxies' view: updates rejected (NACKs)",
                (
                    T(
                        f"sum by (node_cluster) (increase(envoy_cluster_manager_cds_update_rejected[{RATE}]))",
                        "CDS {{node_cluster}}",
                    ),
                    T(
                        f"sum by (node_cluster) (increase(envoy_listener_manager_lds_update_rejected[{RATE}]))",
                        "LDS {{node_cluster}}",
                    ),
                ),
            ),
        ],
    )


DASHBOARDS = (mesh_overview, service_detail, control_plane)


def render(d: Dashboard) -> dict[str, Any]:
    """Grafana dashboard JSON for ``d``: panels laid out two per row."""
    panels = []
    x = y = 0
    for i, p in enumerate(d.panels):
        height = 8
        if x + p.width > 24:
            x, y = 0, y + height
        panels.append(
            {
                "id": i + 1,
                "type": p.kind,
                "title": p.title,
                "description": p.description,
                "gridPos": {"h": height, "w": p.width, "x": x, "y": y},
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {
                        "refId": chr(ord("A") + j),
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                        "expr": t.expr,
                        "legendFormat": t.legend or "__auto",
                        "range": True,
                    }
                    for j, t in enumerate(p.targets)
                ],
            }
        )
        x += p.width
    datasource = {
        "name": "datasource",
        "type": "datasource",
        "label": "Prometheus",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    }
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": list(d.tags),
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timezone": "browser",
        "templating": {"list": [datasource, *d.variables]},
        "annotations": {"list": []},
        "panels": panels,
    }


def rendered() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for make in DASHBOARDS:
        d = make()
        out[f"{d.uid}.json"] = json.dumps(render(d), indent=2) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the mesh's Grafana dashboards.")
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        path = DASHBOARDS_DIR / name
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(name)
        else:
            DASHBOARDS_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run observability/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
