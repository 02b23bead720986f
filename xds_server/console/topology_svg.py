"""The service graph as an SVG picture, drawn on the server (no script needed).

Nodes sit on a circle in id order, so a node keeps its place from one refresh to the
next; each edge is an arrow labelled with its requests per second and error rate, dashed
when idle, red when more than 5% of its requests fail. The page beside it lists the same
edges as a table (what a screen reader reads).
"""

from __future__ import annotations

import math

from xds_server.admin.api import admin_pb2 as pb
from xds_server.console.html import Html, esc

__all__ = ["topology_svg"]

FAILING = 0.05
_W, _H, _R = 900, 560, 28


def topology_svg(graph: pb.GetTopologyResponse) -> Html:
    nodes = sorted(
        {n.id for n in graph.nodes}
        | {e.source for e in graph.edges}
        | {e.destination for e in graph.edges}
    )
    if not nodes:
        return Html('<p class="empty">No services or proxies yet.</p>')
    cx, cy = _W / 2, _H / 2
    radius = min(cx, cy) - 70 if len(nodes) > 1 else 0.0
    at: dict[str, tuple[float, float]] = {}
    for i, node in enumerate(nodes):
        angle = 2 * math.pi * i / len(nodes) - math.pi / 2
        at[node] = (cx + radius * math.cos(angle), cy + radius * math.sin(angle))
    parts = [
        f'<svg class="topology" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        'role="img" aria-labelledby="topology-title">'
        '<title id="topology-title">Service graph: the edges table below lists the same</title>'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#4a5360"/></marker></defs>'
    ]
    for e in graph.edges:
        (x1, y1), (x2, y2) = at[e.source], at[e.destination]
        dx, dy = x2 - x1, y2 - y1
        length = math.hypot(dx, dy) or 1.0
        ux, uy = dx / length, dy / length
        # Start and end at the nodes' rims; two-way edges are drawn apart.
        ox, oy = -uy * 6, ux * 6
        sx, sy = x1 + ux * _R + ox, y1 + uy * _R + oy
        ex, ey = x2 - ux * _R + ox, y2 - uy * _R + oy
        kind = "edge idle" if e.idle else ("edge failing" if e.error_rate > FAILING else "edge")
        label = "idle" if e.idle else f"{e.rps:.1f}/s · {e.error_rate:.0%} err"
        parts.append(
            f'<g class="edge-group" data-source="{esc(e.source)}" '
            f'data-destination="{esc(e.destination)}" data-rps="{e.rps:.3f}">'
            f'<line class="{kind}" x1="{sx:.1f}" y1="{sy:.1f}" x2="{ex:.1f}" y2="{ey:.1f}" '
            'marker-end="url(#arrow)"/>'
            f'<text x="{(sx + ex) / 2 + ox * 2:.1f}" y="{(sy + ey) / 2 + oy * 2:.1f}" '
            f'text-anchor="middle">{esc(label)}</text></g>'
        )
    for node in nodes:
        x, y = at[node]
        parts.append(
            f'<g class="node-group"><circle class="node" cx="{x:.1f}" cy="{y:.1f}" r="{_R}"/>'
            f'<text x="{x:.1f}" y="{y + _R + 16:.1f}" text-anchor="middle">{esc(node)}</text></g>'
        )
    parts.append("</svg>")
    return Html("".join(parts))
