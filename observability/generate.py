# ruff: noqa: E501  (a PromQL expression reads best on one line)
"""Generate the Grafana dashboards in ``observability/grafana/dashboards/`` from code.

    .venv/bin/python observability/generate.py          # rewrite the JSON files
    .venv/bin/python observability/generate.py --check  # exit 1 if they are out of date

Dashboards are plain Grafana JSON (schema 39, Grafana 10/11); every panel queries the
Prometheus datasource chosen by the ``datasource`` variable. ``tests/e2e/test_observability.py``
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


def panel(title: str, *targets: Target, **options: Any) -> Panel:
    """A panel of ``targets``; ``options`` are :class:`Panel`'s other fields."""
    return Panel(title, targets, **options)


def series(metric: str, selector: str = "") -> str:
    """``metric{selector}``, or the bare name when there is no selector."""
    return f"{metric}{{{selector}}}" if selector else metric


def agg(op: str, by: str, expr: str) -> str:
    """``op by (by) (expr)``: ``sum``, ``max`` or ``min`` of ``expr`` per ``by``."""
    return f"{op} by ({by}) ({expr})"


def per(op: str, by: str, expr: str) -> Target:
    """``op`` of ``expr`` per label ``by``, a legend entry per value of the label."""
    return T(agg(op, by, expr), f"{{{{{by}}}}}")


def rate(by: str, metric: str, selector: str = "", fn: str = "rate") -> str:
    """Per-second rate of a counter summed per ``by`` (``fn="increase"``: its increase)."""
    return agg("sum", by, f"{fn}({series(metric, selector)}[{RATE}])")


def increase(by: str, metric: str, selector: str = "") -> str:
    return rate(by, metric, selector, fn="increase")


def weighted(by: str, ratio: str, weight: str) -> str:
    """``ratio`` averaged per ``by``, each series weighted by ``weight``."""
    return f"{agg('sum', by, f'{ratio} * {weight}')} / {agg('sum', by, weight)}"


def error_ratio(selector: str, by: str) -> str:
    errors = rate(by, "envoy_cluster_upstream_rq_xx", 'envoy_response_code_class="5",' + selector)
    return f"{errors} / {rate(by, 'envoy_cluster_upstream_rq_total', selector)}"


def quantile(q: float, by: str, metric: str, selector: str = "") -> str:
    """Quantile ``q`` per ``by`` (none when empty) of histogram ``metric``."""
    by_le = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, {rate(by_le, f'{metric}_bucket', selector)})"


def latency(q: float, selector: str, by: str) -> str:
    """Quantile ``q`` of Envoy's upstream request time (ms) per ``by``."""
    return quantile(q, by, "envoy_cluster_upstream_rq_time", selector)


MEDIAN_AND_TAIL = ((0.5, "p50"), (0.99, "p99"))


def overflows(selector: str, by: str) -> str:
    """Connections, pending requests and retries refused by circuit breakers, per second.
    (One selector over the three names would not do: rate() drops the names, and series
    that differ only by name collide.)"""
    return " + ".join(
        rate(by, f"envoy_cluster_upstream_{what}_overflow", selector)
        for what in ("cx", "rq_pending", "rq_retry")
    )


LISTENER = "envoy_http_conn_manager_prefix"
"""The label of an HTTP listener's stats: its connection manager's stat prefix (its name)."""
EACH_LISTENER = "{{envoy_http_conn_manager_prefix}}"

CONNECTED = T(
    agg("sum", "node_cluster, protocol", "meshd_connected_proxies"), "{{node_cluster}} {{protocol}}"
)


def mesh_overview() -> Dashboard:
    by = "mesh_service"
    each = "{{mesh_service}}"
    top = f'{MESH},mesh_subset=""'  # the service's own cluster (no subset)
    return Dashboard(
        uid="mesh-overview",
        title="Mesh overview",
        description="Traffic, errors, latency and resilience of every service, from Envoy.",
        panels=[
            panel(
                "Requests per second by service",
                T(rate(by, "envoy_cluster_upstream_rq_total", MESH), each),
                unit="reqps",
            ),
            panel("5xx error ratio by service", T(error_ratio(MESH, by), each), unit="percentunit"),
            panel("p50 upstream latency by service", T(latency(0.5, MESH, by), each), unit="ms"),
            panel("p99 upstream latency by service", T(latency(0.99, MESH, by), each), unit="ms"),
            panel(
                "Healthy endpoints by service",
                T(
                    agg("max", by, series("envoy_cluster_membership_healthy", top)),
                    f"{each} healthy",
                ),
                T(agg("max", by, series("envoy_cluster_membership_total", top)), f"{each} total"),
            ),
            panel(
                "Outlier ejections (active) by service",
                per("sum", by, series("envoy_cluster_outlier_detection_ejections_active", MESH)),
                description="Endpoints currently ejected by outlier detection, summed over proxies and subsets.",
            ),
            panel(
                "Circuit-breaker overflows by service",
                T(overflows(MESH, by), each),
                unit="reqps",
                description="Connections, pending requests and retries refused because a circuit-breaker limit was reached.",
            ),
            panel(
                "Rate-limited requests by listener",
                T(
                    rate(
                        "envoy_http_conn_manager_prefix", "envoy_http_local_rate_limit_rate_limited"
                    ),
                    "{{envoy_http_conn_manager_prefix}}",
                ),
                unit="reqps",
                description="Requests answered 429 by a route's local rate limit.",
            ),
            panel(
                "Downstream requests per second by listener",
                T(
                    rate("envoy_http_conn_manager_prefix", "envoy_http_downstream_rq_total"),
                    "{{envoy_http_conn_manager_prefix}}",
                ),
                unit="reqps",
            ),
            panel(
                "Healthy endpoints by service (meshd, HDS verdicts)",
                T(
                    agg("max", "service", 'meshd_service_endpoints{state="healthy"}'),
                    "{{service}} healthy",
                ),
                T(
                    agg("max", "service", 'meshd_service_endpoints{state="total"}'),
                    "{{service}} total",
                ),
                description="The verdicts meshd aggregates from HDS probes and sends to every proxy in EDS (max over meshd replicas, which agree). Endpoints no proxy probes (no health_check, or no report yet) are UNKNOWN: not counted healthy, though Envoy keeps sending to them.",
            ),
            panel(
                "Traffic between services (meshd, LRS edges)",
                T(
                    agg("sum", "source, destination", "meshd_edge_requests_per_second"),
                    "{{source}} -> {{destination}}",
                ),
                unit="reqps",
                description="Requests per second per edge (proxy group or service -> upstream service) from the proxies' load reports, over meshd's sliding window (summed over meshd replicas: each counts its own proxies). Idle allowed edges read 0.",
            ),
            panel(
                "Error ratio between services (meshd, LRS edges)",
                T(
                    weighted(
                        "source, destination",
                        "meshd_edge_error_ratio",
                        "meshd_edge_requests_per_second",
                    ),
                    "{{source}} -> {{destination}}",
                ),
                unit="percentunit",
            ),
            panel(
                "TLS handshake errors by listener",
                T(
                    rate("envoy_listener_address", "envoy_listener_ssl_connection_error"),
                    "{{envoy_listener_address}} handshake errors",
                ),
                T(
                    rate("envoy_listener_address", "envoy_listener_ssl_fail_verify_no_cert"),
                    "{{envoy_listener_address}} no client certificate",
                ),
                unit="ops",
                description="Failed TLS handshakes per second on listeners with tls (Envoy's listener ssl stats, summed over proxies); a client_ca listener also counts clients that sent no certificate.",
            ),
            panel(
                "Authentication denials by listener",
                T(
                    rate(LISTENER, "envoy_http_jwt_authn_denied"),
                    f"{EACH_LISTENER} jwt denied",
                ),
                T(
                    rate(LISTENER, "envoy_http_api_key_auth_unauthorized"),
                    f"{EACH_LISTENER} api_keys denied",
                ),
                T(
                    rate(LISTENER, "envoy_http_downstream_rq_xx", 'envoy_response_code_class="4"'),
                    f"{EACH_LISTENER} all 4xx",
                ),
                unit="reqps",
                description="Requests refused per second by routes' jwt (401; 403 for a valid token of another audience) and api_keys (401), beside every 4xx the listener answered. By listener, not by route: Envoy counts these filters' denials under the listener's HTTP connection manager, and its per-route stats are the router's, which never sees a request a filter refused.",
            ),
            panel("Connected proxies", CONNECTED, kind="stat"),
        ],
    )


SERVICE = 'mesh_service="$service"'


def service_detail() -> Dashboard:
    by = "mesh_subset"
    each = "{{mesh_subset}}"
    endpoints = "subset, endpoint"
    each_endpoint = "{{endpoint}} {{subset}}"
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
            panel(
                "Requests per second by subset",
                T(rate(by, "envoy_cluster_upstream_rq_total", SERVICE), each),
                unit="reqps",
                description="The service's own cluster (no subset) carries requests routed to the service as a whole.",
            ),
            panel(
                "5xx error ratio by subset", T(error_ratio(SERVICE, by), each), unit="percentunit"
            ),
            panel(
                "p50 / p99 latency by subset",
                *(T(latency(q, SERVICE, by), f"{p} {each}") for q, p in MEDIAN_AND_TAIL),
                unit="ms",
            ),
            panel(
                "Responses by code class",
                T(
                    rate("envoy_response_code_class", "envoy_cluster_upstream_rq_xx", SERVICE),
                    "{{envoy_response_code_class}}xx",
                ),
                unit="reqps",
            ),
            panel(
                "Requests per second by route",
                T(
                    rate("mesh_route", "envoy_vhost_route_upstream_rq_total", 'mesh_route!=""'),
                    "{{mesh_route}}",
                ),
                unit="reqps",
                description="Per-route stats of every route (Envoy's vhost.<host>.route.<ns/name>.*).",
            ),
            panel(
                "Healthy / total endpoints by subset",
                T(
                    agg("max", by, series("envoy_cluster_membership_healthy", SERVICE)),
                    f"healthy {each}",
                ),
                T(
                    agg("max", by, series("envoy_cluster_membership_total", SERVICE)),
                    f"total {each}",
                ),
                description="Endpoints as the proxies see them (health checks, outlier ejections and draining included).",
            ),
            panel(
                "Upstream connection failures by subset",
                T(rate(by, "envoy_cluster_upstream_cx_connect_fail", SERVICE), each),
                unit="ops",
            ),
            panel(
                "Outlier ejections by subset",
                T(
                    agg(
                        "sum",
                        by,
                        series("envoy_cluster_outlier_detection_ejections_active", SERVICE),
                    ),
                    f"active {each}",
                ),
                T(
                    increase(
                        by, "envoy_cluster_outlier_detection_ejections_enforced_total", SERVICE
                    ),
                    f"enforced {each}",
                ),
            ),
            panel(
                "Circuit-breaker overflows by subset", T(overflows(SERVICE, by), each), unit="reqps"
            ),
            panel(
                "Requests per second by upstream endpoint (meshd, LRS)",
                T(
                    agg("sum", endpoints, series("meshd_endpoint_requests_per_second", SERVICE)),
                    each_endpoint,
                ),
                unit="reqps",
                description="From the proxies' load reports (per-endpoint LRS stats, summed over proxies and meshd replicas): Envoy cannot keep per-endpoint stats next to LRS. Only endpoints that carried load in meshd's window have a series.",
            ),
            panel(
                "Error ratio by upstream endpoint (meshd, LRS)",
                T(
                    weighted(
                        endpoints,
                        series("meshd_endpoint_error_ratio", SERVICE),
                        series("meshd_endpoint_requests_per_second", SERVICE),
                    ),
                    each_endpoint,
                ),
                unit="percentunit",
                description="Failed requests (5xx and connection failures) over completed requests, per endpoint.",
            ),
            panel(
                "Requests in flight by upstream endpoint (meshd, LRS)",
                T(
                    agg("sum", endpoints, series("meshd_endpoint_in_flight_requests", SERVICE)),
                    each_endpoint,
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
            panel("Connected proxies by node cluster and protocol", CONNECTED),
            panel(
                "Proxy resource types by sync state",
                per("sum", "state", "meshd_xds_proxy_types"),
                description="(proxy, type) pairs SYNCED, STALE (sent, not ACKed yet), NACKED or NOT_SENT.",
            ),
            panel(
                "Pushes per second by type",
                T(rate("type", "meshd_xds_pushes_total"), "{{type}}"),
                unit="ops",
            ),
            panel(
                "Pushed bytes per second by type",
                T(rate("type", "meshd_xds_push_bytes_total"), "{{type}}"),
                unit="Bps",
            ),
            panel("NACKs by type", T(increase("type", "meshd_xds_nacks_total"), "{{type}}")),
            panel(
                "Push latency p99 by type (change reaching meshd -> response written)",
                T(quantile(0.99, "type", "meshd_xds_push_latency_seconds"), "{{type}}"),
                unit="s",
            ),
            panel(
                "Config convergence (change -> last proxy ACK)",
                *(
                    T(quantile(q, "", "meshd_config_convergence_seconds"), p)
                    for q, p in MEDIAN_AND_TAIL
                ),
                unit="s",
            ),
            panel(
                "Oldest unACKed push by node cluster",
                per("max", "node_cluster", "meshd_xds_oldest_unacked_push_seconds"),
                unit="s",
            ),
            panel("Registry revision", per("max", "instance", "meshd_registry_revision")),
            panel(
                "Registry watch lag p99 and translation p99",
                T(quantile(0.99, "", "meshd_registry_watch_lag_seconds"), "watch lag"),
                T(quantile(0.99, "", "meshd_translate_seconds"), "translate"),
                unit="s",
            ),
            panel(
                "Certificate expiry of registry secrets (time left)",
                T(
                    agg("min", "namespace, name", "meshd_secret_expiry_timestamp_seconds")
                    + " - time()",
                    "{{namespace}}/{{name}}",
                ),
                unit="s",
                description="Time until the certificate of each registry secret in force expires (meshd_secret_expiry_timestamp_seconds); the MeshCertificateExpiresSoon alert fires under 7 days.",
            ),
            panel(
                "Rejected registry entries by kind",
                per("sum", "kind", "meshd_registry_rejected_entries"),
            ),
            panel(
                "etcd: connected and errors",
                T(agg("min", "instance", "meshd_registry_connected"), "connected {{instance}}"),
                T(increase("instance", "meshd_registry_errors_total"), "errors {{instance}}"),
            ),
            panel(
                "Proxies' view: connected to the control plane",
                per("min", "node_cluster", "envoy_control_plane_connected_state"),
            ),
            panel(
                "Proxies' view: updates rejected (NACKs)",
                T(
                    increase("node_cluster", "envoy_cluster_manager_cds_update_rejected"),
                    "CDS {{node_cluster}}",
                ),
                T(
                    increase("node_cluster", "envoy_listener_manager_lds_update_rejected"),
                    "LDS {{node_cluster}}",
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
