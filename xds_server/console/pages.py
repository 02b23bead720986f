"""The console's pages: each reads through the admin API (:mod:`.calls`) with the
session's token and renders what that token may see, as HTML (:mod:`.html`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from xds_server.admin.api import admin_pb2 as pb
from xds_server.console.calls import CallError, call
from xds_server.console.html import Html, badge, esc, join, link, table, url
from xds_server.console.sessions import Session
from xds_server.console.topology_svg import topology_svg

__all__ = ["PageContext", "service_page", "split_destinations"]

HEALTH_WORDS = {
    pb.HEALTH_STATUS_HEALTHY: ("healthy", "ok"),
    pb.HEALTH_STATUS_UNHEALTHY: ("unhealthy", "bad"),
    pb.HEALTH_STATUS_UNKNOWN: ("unknown", "none"),
}
SYNC_WORDS = {
    pb.SYNC_STATE_SYNCED: ("synced", "ok"),
    pb.SYNC_STATE_STALE: ("stale", "warn"),
    pb.SYNC_STATE_NACKED: ("NACKed", "bad"),
    pb.SYNC_STATE_NOT_SENT: ("not sent", "none"),
}
EVENT_WORDS = {
    pb.EVENT_TYPE_REGISTRY_PUT: "registry put",
    pb.EVENT_TYPE_REGISTRY_DELETE: "registry delete",
    pb.EVENT_TYPE_REGISTRY_REJECTED: "registry rejected",
    pb.EVENT_TYPE_PUSH: "push",
    pb.EVENT_TYPE_NACK: "NACK",
    pb.EVENT_TYPE_PROXY_CONNECTED: "proxy connected",
    pb.EVENT_TYPE_PROXY_DISCONNECTED: "proxy disconnected",
    pb.EVENT_TYPE_HEALTH: "health",
}
EXPIRY_WARN_DAYS = 7


@dataclass
class PageContext:
    """What a page needs: the admin servicer and the caller's session."""

    admin: Any
    session: Session

    async def call(self, method: str, request: Any) -> Any:
        return await call(self.admin, method, request, self.session.token)

    def may_write(self, namespace: str) -> bool:
        return self.session.principal.may("write", namespace)


def spec_of(entry: pb.Entry) -> dict[str, Any]:
    """An entry's registry value (JSON numbers that are whole shown as whole: a Struct
    holds every number as a double)."""
    if not entry.HasField("spec"):
        return {}
    value = _whole(MessageToDict(entry.spec))
    return value if isinstance(value, dict) else {}


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def when(ts: Any) -> str:
    """A protobuf Timestamp as UTC text ("" when unset)."""
    if not ts.seconds and not ts.nanos:
        return ""
    moment: datetime = ts.ToDatetime(tzinfo=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def event_row(e: pb.WatchResponse) -> tuple[str, str, str, str]:
    """(time, type, subject, detail) of one event, as the events table shows it."""
    subject = e.key or e.node_id
    detail = " ".join(
        p for p in (e.resource_type, f"v{e.version}" if e.version else "", e.message) if p
    )
    return when(e.time), EVENT_WORDS.get(e.type, str(e.type)), subject, detail


def event_json(e: pb.WatchResponse) -> str:
    t, kind, subject, detail = event_row(e)
    return json.dumps({"time": t, "type": kind, "subject": subject, "detail": detail})


def _service_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def _target(service: str, route_namespace: str) -> str:
    """A destination's service as "ns/name" ("name" is in the route's namespace)."""
    return service if "/" in service else f"{route_namespace}/{service}"


# ------------------------------------------------------------------------------ overview


async def overview(ctx: PageContext, recent: Sequence[pb.WatchResponse]) -> Html:
    services = await ctx.call("ListEntries", pb.ListEntriesRequest(kind=pb.KIND_SERVICE))
    health = await ctx.call("GetHealth", pb.GetHealthRequest())
    errors = await ctx.call("ListErrors", pb.ListErrorsRequest())
    proxies = await ctx.call("GetProxyStatus", pb.GetProxyStatusRequest())
    by_service = {_service_id(s.namespace, s.name): s for s in health.services}
    rows = []
    for entry in services.entries:
        sid = _service_id(entry.ref.namespace, entry.ref.name)
        h = by_service.get(sid)
        rows.append(
            (
                link(url("services", entry.ref.namespace, entry.ref.name), sid),
                f"{h.healthy}/{h.total}" if h else "0/0",
                _check_mode(h),
            )
        )
    states: Counter[str] = Counter()
    for proxy in proxies.proxies:
        states[_proxy_state(proxy)] += 1
    state_rows = [(badge(s, _state_kind(s)), n) for s, n in sorted(states.items())]
    error_rows = [
        (e.key, e.field or "(whole value)", e.reason, "yes" if e.last_good_kept else "no")
        for e in errors.errors
    ]
    return join(
        [
            table(
                "Services",
                ["Service", "Healthy / total", "Health checks"],
                rows,
                empty="No services you may read.",
                table_id="services",
            ),
            table(
                "Proxies by sync state",
                ["State", "Proxies"],
                state_rows,
                empty="No proxies connected that you may see.",
                table_id="proxy-states",
            ),
            table(
                "Rejected registry entries",
                ["Key", "Field", "Why", "Last good value kept"],
                error_rows,
                empty="No rejected entries.",
                table_id="rejected",
            ),
            table(
                "Last events",
                ["Time", "Event", "Subject", "Detail"],
                [event_row(e) for e in list(recent)[:15]],
                empty="No events yet.",
                table_id="last-events",
            ),
        ]
    )


def _check_mode(h: pb.ServiceHealth | None) -> Html:
    if h is None or h.check_mode == "none" or not h.check_mode:
        return badge("no checks", "none")
    if h.all_unhealthy:
        return badge(f"{h.check_mode}: all unhealthy (panic)", "bad")
    return esc(h.check_mode)


def _proxy_state(proxy: pb.ProxyStatus) -> str:
    """A proxy's worst state over its types."""
    order = [pb.SYNC_STATE_NACKED, pb.SYNC_STATE_STALE, pb.SYNC_STATE_SYNCED]
    present = {t.state for t in proxy.types}
    for state in order:
        if state in present:
            return SYNC_WORDS[state][0]
    return "not sent"


def _state_kind(word: str) -> str:
    return {"synced": "ok", "stale": "warn", "NACKed": "bad"}.get(word, "none")


# ------------------------------------------------------------------------------ services


async def services(ctx: PageContext) -> Html:
    listing = await ctx.call("ListEntries", pb.ListEntriesRequest(kind=pb.KIND_SERVICE))
    health = await ctx.call("GetHealth", pb.GetHealthRequest())
    by_service = {_service_id(s.namespace, s.name): s for s in health.services}
    rows = []
    for entry in listing.entries:
        spec = spec_of(entry)
        sid = _service_id(entry.ref.namespace, entry.ref.name)
        h = by_service.get(sid)
        rows.append(
            (
                link(url("services", entry.ref.namespace, entry.ref.name), sid),
                spec.get("protocol", "http"),
                spec.get("port", ""),
                f"{h.healthy}/{h.total}" if h else "0/0",
                ", ".join(sorted(spec.get("subsets", {}) or {})) or "-",
            )
        )
    return table(
        "Services",
        ["Service", "Protocol", "Port", "Healthy / total", "Subsets"],
        rows,
        empty="No services you may read.",
        table_id="services",
    )


def split_destinations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in spec.get("destinations", []) if isinstance(d, dict)]


async def service_page(
    ctx: PageContext,
    namespace: str,
    name: str,
    *,
    error: str = "",
    error_route: str = "",
    notice: str = "",
) -> Html:
    sid = _service_id(namespace, name)
    got = await ctx.call(
        "GetEntry",
        pb.GetEntryRequest(ref=pb.EntryRef(kind=pb.KIND_SERVICE, namespace=namespace, name=name)),
    )
    spec = spec_of(got.entry)
    try:
        health = await ctx.call("GetHealth", pb.GetHealthRequest(service=sid))
    except CallError as exc:  # (registered a moment ago: meshd has not applied it yet)
        if exc.code != grpc.StatusCode.NOT_FOUND:
            raise
        health = pb.GetHealthResponse()
    try:
        load = await ctx.call("GetServiceMetrics", pb.GetServiceMetricsRequest(service=sid))
    except CallError:  # (no load reports: an unmeasured service still has a page)
        load = pb.GetServiceMetricsResponse()
    routes = await ctx.call("ListEntries", pb.ListEntriesRequest(kind=pb.KIND_ROUTE))
    parts: list[object] = []
    if notice:
        parts.append(Html(f'<p class="notice" role="status">{esc(notice)}</p>'))
    h = health.services[0] if health.services else None
    metrics = load.services[0] if load.services else None
    rps_by_address: dict[str, tuple[float, float]] = {}
    for ep in metrics.endpoints if metrics else ():
        address = ep.endpoint.rsplit(":", 1)[0]
        rps, err = rps_by_address.get(address, (0.0, 0.0))
        rps_by_address[address] = (rps + ep.rps, max(err, ep.error_rate))
    summary = (
        f"{spec.get('protocol', 'http')} on port {spec.get('port', '?')}; "
        f"{h.healthy if h else 0} of {h.total if h else 0} endpoints healthy"
    )
    if metrics:
        summary += f"; {metrics.rps:.1f} requests/s, {metrics.error_rate:.1%} errors"
    parts.append(Html(f'<p id="summary">{esc(summary)}</p>'))
    endpoint_rows = []
    for ep in h.endpoints if h else ():
        word, kind = HEALTH_WORDS.get(ep.status, ("unknown", "none"))
        rps, err = rps_by_address.get(ep.address, (0.0, 0.0))
        endpoint_rows.append(
            (
                ep.id,
                ep.address,
                ep.zone or "-",
                badge(word, kind),
                f"{ep.healthy_reports} healthy, {ep.unhealthy_reports} unhealthy",
                f"{rps:.1f}/s, {err:.0%} errors" if rps else "idle",
            )
        )
    parts.append(
        table(
            "Endpoints",
            ["Endpoint", "Address", "Zone", "Health", "Reports", "Load"],
            endpoint_rows,
            empty="No endpoints registered.",
            table_id="endpoints",
        )
    )
    subsets = spec.get("subsets", {}) or {}
    parts.append(
        table(
            "Subsets",
            ["Subset", "Selects"],
            [(n, json.dumps(v, sort_keys=True)) for n, v in sorted(subsets.items())],
            empty="No subsets.",
            table_id="subsets",
        )
    )
    parts.append(Html('<h2 id="routes">Routes that send to it</h2>'))
    sending = [
        r
        for r in routes.entries
        if any(
            _target(str(d.get("service", "")), r.ref.namespace) == sid
            for d in split_destinations(spec_of(r))
        )
    ]
    if error and error_route not in {_route_id(r) for r in sending}:
        # (a form about a route not on this page: a hand-made request)
        parts.insert(0, Html(f'<p class="error" role="alert" id="split-error">{esc(error)}</p>'))
    if not sending:
        parts.append(Html('<p class="empty">No route sends to this service.</p>'))
    for route in sending:
        parts.append(
            _route_split(
                ctx,
                route,
                back=url("services", namespace, name),
                error=error if error_route == _route_id(route) else "",
            )
        )
    parts.append(
        Html(
            "<details><summary>Registry entry</summary><pre>"
            f"{esc(json.dumps(spec, indent=2, sort_keys=True))}</pre></details>"
        )
    )
    return join(parts)


def _route_id(route: pb.Entry) -> str:
    return f"{route.ref.namespace}/{route.ref.name}"


def _route_split(ctx: PageContext, route: pb.Entry, *, back: str, error: str) -> Html:
    """One route's split: a table, and the editor for a token that may write it."""
    spec = spec_of(route)
    rid = _route_id(route)
    destinations = split_destinations(spec)
    total = sum(int(d.get("weight", 1)) for d in destinations) or 1
    rows = [
        (
            _target(str(d.get("service", "")), route.ref.namespace),
            d.get("subset", "") or "-",
            int(d.get("weight", 1)),
            f"{int(d.get('weight', 1)) / total:.0%}",
        )
        for d in destinations
    ]
    where = f"listener {spec.get('listener', '?')}"
    match = spec.get("match") or {}
    if match:
        where += ", " + ", ".join(f"{k} {v}" for k, v in sorted(match.items()) if k != "headers")
    out = [
        table(
            f"Route {rid} ({where}), revision {route.revision}",
            ["Destination", "Subset", "Weight", "Share"],
            rows,
            table_id=f"split-{rid}",
        )
    ]
    if error:
        out.append(Html(f'<p class="error" role="alert" id="split-error">{esc(error)}</p>'))
    if ctx.may_write(route.ref.namespace):
        fields = []
        for i, d in enumerate(destinations):
            label = _target(str(d.get("service", "")), route.ref.namespace)
            if d.get("subset"):
                label += f" ({d['subset']})"
            ident = f"w-{rid}-{i}".replace("/", "-")
            fields.append(
                f'<input type="hidden" name="service" value="{esc(d.get("service", ""))}">'
                f'<input type="hidden" name="subset" value="{esc(d.get("subset", ""))}">'
                f'<label for="{esc(ident)}">{esc(label)}</label> '
                f'<input id="{esc(ident)}" name="weight" type="number" min="0" max="10000" '
                f'value="{int(d.get("weight", 1))}" required>'
            )
        action = url("routes", route.ref.namespace, route.ref.name, "split")
        out.append(
            Html(
                f'<form method="post" action="{esc(action)}" class="split" data-keep '
                f'aria-label="Edit the split of route {esc(rid)}">'
                f'<input type="hidden" name="csrf" value="{esc(ctx.session.csrf)}">'
                f'<input type="hidden" name="revision" value="{route.revision}">'
                f'<input type="hidden" name="back" value="{esc(back)}">'
                f"<fieldset><legend>Weights of {esc(rid)}</legend>{''.join(fields)}</fieldset>"
                f'<button type="submit">Save split</button></form>'
            )
        )
    return join(out)


# ------------------------------------------------------------------------------ topology


async def topology(ctx: PageContext, window: int) -> Html:
    graph = await ctx.call("GetTopology", pb.GetTopologyRequest(window_seconds=window))
    rows = [
        (
            e.source,
            e.destination,
            f"{e.rps:.1f}",
            f"{e.error_rate:.1%}",
            "idle" if e.idle else ("allowed" if e.allowed else "not allowed by any route"),
        )
        for e in graph.edges
    ]
    return join(
        [
            Html(
                f"<p>Requests per second and error rate over the last "
                f"{graph.window_seconds:g} s, from the proxies' load reports. Dashed edges "
                "are allowed by a route and idle.</p>"
            ),
            topology_svg(graph),
            table(
                "Edges",
                ["From", "To", "Requests/s", "Errors", "State"],
                rows,
                empty="No edges.",
                table_id="edges",
            ),
        ]
    )


# ------------------------------------------------------------------------------ proxies


async def proxies(ctx: PageContext) -> Html:
    status = await ctx.call("GetProxyStatus", pb.GetProxyStatusRequest())
    rows = []
    for p in status.proxies:
        states = []
        for t in p.types:
            word, kind = SYNC_WORDS.get(t.state, ("?", "none"))
            states.append(join([badge(f"{t.type} {word}", kind)]))
        nacks = "; ".join(f"{t.type}: {t.error}" for t in p.types if t.error)
        rows.append(
            (
                link(url("proxies", p.node_id), p.node_id),
                p.node_cluster,
                p.protocol,
                p.replica or "-",
                join(states, " "),
                nacks or "-",
            )
        )
    return table(
        "Connected proxies",
        ["Node", "Cluster", "Protocol", "Replica", "State per type", "NACK"],
        rows,
        empty="No proxies connected that you may see.",
        table_id="proxies",
    )


async def proxy_page(ctx: PageContext, node: str) -> Html:
    got = await ctx.call("GetProxyConfig", pb.GetProxyConfigRequest(node_id=node))
    p = got.status
    type_rows = []
    for t in p.types:
        word, kind = SYNC_WORDS.get(t.state, ("?", "none"))
        type_rows.append(
            (
                t.type,
                badge(word, kind),
                t.sent_version,
                t.acked_version,
                t.resources,
                t.error or "-",
            )
        )
    parts: list[object] = [
        Html(
            f"<p>{esc(p.node_cluster)}, {esc(p.protocol)} from {esc(p.peer)}, connected "
            f"{esc(when(p.connected_at))}{', replica ' + esc(p.replica) if p.replica else ''}</p>"
        ),
        table(
            "Per type",
            ["Type", "State", "Sent", "Acknowledged", "Resources", "NACK"],
            type_rows,
            table_id="types",
        ),
        Html('<h2 id="config">Config last sent (secrets redacted)</h2>'),
    ]
    for r in got.resources:
        parts.append(
            Html(
                f"<details><summary>{esc(r.type)} {esc(r.name)} (version {esc(r.version)})"
                f"</summary><pre>{esc(r.json)}</pre></details>"
            )
        )
    if not got.resources:
        parts.append(Html('<p class="empty">Nothing sent yet.</p>'))
    return join(parts)


# ------------------------------------------------------------------------------ events


def events(recent: Sequence[pb.WatchResponse], chosen: set[int]) -> Html:
    boxes = []
    for value, word in EVENT_WORDS.items():
        checked = " checked" if not chosen or value in chosen else ""
        boxes.append(
            f'<label><input type="checkbox" name="type" value="{value}"{checked}> '
            f"{esc(word)}</label>"
        )
    form = Html(
        '<form method="get" action="/events" class="filters" aria-label="Event types">'
        f'{"".join(boxes)} <button type="submit">Show</button>'
        '<label id="event-text-label" for="event-text" hidden>Filter text</label>'
        '<input id="event-text" type="search" hidden></form>'
    )
    rows = [event_row(e) for e in recent if not chosen or e.type in chosen]
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return join(
        [
            form,
            Html(
                '<table id="events"><caption>Events, newest first (live)</caption><thead><tr>'
                '<th scope="col">Time</th><th scope="col">Event</th>'
                '<th scope="col">Subject</th><th scope="col">Detail</th></tr></thead>'
                f'<tbody id="event-rows">{body}</tbody></table>'
            ),
        ]
    )


# ------------------------------------------------------------------------------ policies


async def policies(ctx: PageContext, check: dict[str, str]) -> Html:
    listing = await ctx.call("ListEntries", pb.ListEntriesRequest(kind=pb.KIND_POLICY))
    namespaces = await ctx.call("ListEntries", pb.ListEntriesRequest(kind=pb.KIND_NAMESPACE))
    rows = []
    for entry in listing.entries:
        spec = spec_of(entry)
        callers = [
            ", ".join(f.get("identities", [])) for f in spec.get("from", []) if isinstance(f, dict)
        ]
        requests = [
            " ".join([*t.get("methods", []), *t.get("paths", [])]) or "any"
            for t in spec.get("to", [])
            if isinstance(t, dict)
        ]
        target = str(spec.get("target", ""))
        rows.append(
            (
                f"{entry.ref.namespace}/{entry.ref.name}",
                f"{entry.ref.namespace}/{target}",
                spec.get("action", ""),
                " or ".join(callers) or "any caller",
                " or ".join(requests) or "every request",
            )
        )
    ns_rows = [
        (
            e.ref.name,
            spec_of(e).get("mtls", "-"),
            spec_of(e).get("default_policy", "-"),
        )
        for e in namespaces.entries
    ]
    parts: list[object] = [
        table(
            "Authorization policies",
            ["Policy", "Service", "Action", "Callers", "Requests"],
            rows,
            empty="No policies you may read.",
            table_id="policies",
        ),
        table(
            "Namespace settings",
            ["Namespace", "mTLS", "Default policy"],
            ns_rows,
            empty="No namespace settings.",
            table_id="namespaces",
        ),
    ]
    fields = "".join(
        f'<label for="check-{n}">{label}</label> '
        f'<input id="check-{n}" name="{n}" value="{esc(check.get(n, ""))}" '
        f'placeholder="{esc(hint)}">'
        for n, label, hint in (
            ("source", "Caller", "ns/name or gateway:<cluster>"),
            ("target", "Service", "ns/name"),
            ("path", "Path", "/"),
            ("method", "Method", "GET"),
        )
    )
    parts.append(
        Html(
            '<h2 id="check">Who may call whom</h2>'
            f'<form method="get" action="/policies" class="filters">{fields} '
            '<button type="submit">Check</button></form>'
        )
    )
    if check.get("source") and check.get("target"):
        try:
            answer = await ctx.call(
                "CheckPolicy",
                pb.CheckPolicyRequest(
                    source=check["source"],
                    target=check["target"],
                    path=check.get("path", ""),
                    method=check.get("method", ""),
                ),
            )
            verdict = "allowed" if answer.allowed else "denied (403)"
            detail = MessageToDict(answer)
            detail.pop("allowed", None)
            mark = badge(verdict, "ok" if answer.allowed else "bad")
            parts.append(
                Html(
                    f'<p role="status" id="check-result">{mark} '
                    f"{esc(json.dumps(detail, sort_keys=True))}</p>"
                )
            )
        except CallError as exc:
            parts.append(Html(f'<p class="error" role="alert">{esc(exc.message)}</p>'))
    return join(parts)


# ------------------------------------------------------------------------------ certificates


async def certificates(ctx: PageContext, now: datetime) -> Html:
    from cryptography import x509

    bundle = await ctx.call("GetTrustBundle", pb.GetTrustBundleRequest())
    ca_rows = []
    for cert in (
        x509.load_pem_x509_certificates(bundle.bundle_pem.encode()) if bundle.bundle_pem else ()
    ):
        ca_rows.append(
            (
                cert.subject.rfc4514_string(),
                cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"),
                _expiry(cert.not_valid_after_utc, now),
            )
        )
    secrets = await ctx.call("ListEntries", pb.ListEntriesRequest(kind=pb.KIND_SECRET))
    rows = []
    for entry in secrets.entries:
        spec = spec_of(entry)
        after = spec.get("not_after", "")
        expiry: object = "-"
        if after:
            try:
                expiry = _expiry(datetime.fromisoformat(str(after).replace("Z", "+00:00")), now)
            except ValueError:
                expiry = after
        rows.append(
            (
                f"{entry.ref.namespace}/{entry.ref.name}",
                spec.get("kind", ""),
                spec.get("subject", "-"),
                ", ".join(spec.get("sans", []) or []) or "-",
                after or "-",
                expiry,
            )
        )
    workload = await _workload_certificates(ctx, now)
    return join(
        [
            table(
                "Workload certificates (as sent to the proxies you may see)",
                ["Identity", "Serial", "Expires", "In", "Proxies"],
                workload,
                empty="No workload certificates sent to proxies you may see.",
                table_id="workload-certificates",
            ),
            table(
                "Mesh trust bundle (workload certificates chain to it)",
                ["Subject", "Expires", "In"],
                ca_rows,
                empty="No trust bundle yet.",
                table_id="trust-bundle",
            ),
            table(
                "Registry secrets",
                ["Secret", "Kind", "Subject", "Names", "Expires", "In"],
                rows,
                empty="No secrets you may read.",
                table_id="secrets",
            ),
        ]
    )


def _expiry(after: datetime, now: datetime) -> Html:
    days = (after - now).total_seconds() / 86400
    if days < 0:
        return badge("expired", "bad")
    text = f"{days:.0f} days" if days >= 2 else f"{days * 24:.0f} hours"
    return badge(text, "warn" if days < EXPIRY_WARN_DAYS else "ok")


MAX_PROXIES_READ = 200
"""Proxies whose SDS the certificates page reads (a bigger mesh: the first ones)."""


async def _workload_certificates(ctx: PageContext, now: datetime) -> list[tuple[object, ...]]:
    """One row per certificate the visible proxies were sent over SDS (their private keys
    are redacted by the admin API; the certificate itself is public)."""
    import base64

    from cryptography import x509

    status = await ctx.call("GetProxyStatus", pb.GetProxyStatusRequest())
    seen: dict[int, tuple[str, datetime, list[str]]] = {}
    for proxy in list(status.proxies)[:MAX_PROXIES_READ]:
        try:
            got = await ctx.call(
                "GetProxyConfig", pb.GetProxyConfigRequest(node_id=proxy.node_id, type="SDS")
            )
        except CallError:
            continue  # (gone meanwhile)
        for resource in got.resources:
            try:
                doc = json.loads(resource.json)
            except ValueError:
                continue
            tls = doc.get("tlsCertificate") or doc.get("tls_certificate") or {}
            chain = tls.get("certificateChain") or tls.get("certificate_chain") or {}
            data = chain.get("inlineBytes") or chain.get("inline_bytes")
            if not data:
                continue
            try:
                cert = x509.load_pem_x509_certificates(base64.b64decode(data))[0]
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
            except (ValueError, x509.ExtensionNotFound, IndexError):
                continue
            entry = seen.setdefault(
                cert.serial_number, (", ".join(uris) or resource.name, cert.not_valid_after_utc, [])
            )
            entry[2].append(proxy.node_id)
    return [
        (
            identity,
            f"{serial:x}"[:16],
            after.strftime("%Y-%m-%d %H:%M UTC"),
            _expiry(after, now),
            ", ".join(sorted(nodes)[:5]) + (" ..." if len(nodes) > 5 else ""),
        )
        for serial, (identity, after, nodes) in sorted(seen.items(), key=lambda i: i[1][0])
    ]
