"""Routes of one HTTP listener -> the parts of its RouteConfiguration. Pure.

The configuration itself is assembled from these parts' memoized bytes by
:mod:`xds_server.translate.rds_wire` (``tests/support/route_reference.py`` keeps the message-API
assembly the tests compare it with, byte for byte).

Virtual hosts are built from the routes' ``hosts``; every service that speaks
HTTP also gets its default host (``<name>.<ns>``, with its own ``:port`` and with
any port), so any registered service is reachable with no route. Envoy rejects a domain
that appears in two virtual hosts, so a service host that a route names too is
merged into that route's virtual host, with the default route last.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import any_pb2, duration_pb2

from xds_server.model import Fault, Mirror, RateLimit, Route, Service, ServiceRef, SessionAffinity
from xds_server.model.names import cluster_name, service_host
from xds_server.translate.cluster import ms, u32
from xds_server.translate.edge import ApiKeyList, apply_edge

Affinities = tuple[SessionAffinity | None, ...]

LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
FAULT = "envoy.filters.http.fault"


def route_order(route: Route) -> tuple[int, int, int, str]:
    """Within one namespace: priority (higher first), then specificity (exact, longest
    prefix, regex), then key."""
    rank, length = route.specificity()
    return (-route.priority, rank, length, route.key_name)


def _across(route: Route) -> tuple[int, int, int, str]:
    """Across namespaces: specificity, then age (the older route first), then key."""
    rank, length = route.specificity()
    return (rank, length, route.created, route.key_name)


def ordered_routes(routes: Iterable[Route]) -> list[Route]:
    """The routes of one virtual host in Envoy's (first match wins) order.

    ``priority`` orders routes within a namespace only, so that no namespace can lift a
    route over another namespace's: each namespace's routes keep their own order
    (:func:`route_order`), and the lists are merged by taking, of their next routes, the
    most specific (exact path, longest prefix, regex), then the oldest. A namespace thus
    outranks another only with a more specific match (a namespace's catch-all given a high
    priority still comes after other namespaces' longer prefixes).
    """
    by_ns: dict[str, list[Route]] = {}
    for route in routes:
        by_ns.setdefault(route.namespace, []).append(route)
    if len(by_ns) <= 1:
        return sorted(next(iter(by_ns.values()), []), key=route_order)
    # heapq.merge takes the least of the lists' next items at each step: the merge wanted,
    # though a list is not sorted by that key.
    return list(
        heapq.merge(*(sorted(rs, key=route_order) for _, rs in sorted(by_ns.items())), key=_across)
    )


def _match(route: Route) -> rc.RouteMatch:
    m = route.match
    out = rc.RouteMatch()
    if m.kind == "prefix":
        out.prefix = m.value
    elif m.kind == "path":
        out.path = m.value
    else:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=m.value))
    for name, value in m.headers:
        out.headers.append(
            rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))
        )
    if m.methods:
        sm = (
            string_pb2.StringMatcher(exact=m.methods[0])
            if len(m.methods) == 1
            else string_pb2.StringMatcher(
                safe_regex=regex_pb2.RegexMatcher(regex=f"^({'|'.join(m.methods)})$")
            )
        )
        out.headers.append(rc.HeaderMatcher(name=":method", string_match=sm))
    return out


def affinities(route: Route, services: Mapping[ServiceRef, Service]) -> Affinities:
    """The session affinity of each live destination's service: all a route entry needs
    to know of the services it points at (their hash policies)."""
    return tuple(
        services[d.service].load_balancer.session_affinity for d in route.destinations if d.weight
    )


def _hash_policies(affs: Iterable[SessionAffinity | None]) -> list[rc.RouteAction.HashPolicy]:
    out: list[rc.RouteAction.HashPolicy] = []
    seen = set()
    for aff in affs:
        if aff is None or aff in seen:
            continue
        seen.add(aff)
        hp = rc.RouteAction.HashPolicy()
        if aff.kind == "cookie":
            hp.cookie.name = aff.name
            hp.cookie.ttl.CopyFrom(ms(aff.ttl_ms))  # a TTL makes Envoy set the cookie itself
        elif aff.kind == "header":
            hp.header.header_name = aff.name
        else:
            hp.connection_properties.source_ip = True
        out.append(hp)
    return out


def rate_limit_config(rl: RateLimit) -> any_pb2.Any:
    """Per-route local rate limit: a token bucket of ``burst`` filled at the per-minute rate."""
    # Envoy wants fill_interval >= 50 ms: fill several tokens at a time for high rates.
    per_fill = max(1, -(-rl.requests_per_minute * 50 // 60_000))
    interval_ns = per_fill * 60_000_000_000 // rl.requests_per_minute
    full = percent_pb2.FractionalPercent(
        numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
    )
    cfg = local_rate_limit_pb2.LocalRateLimit(
        stat_prefix="route_rate_limit",
        token_bucket=token_bucket_pb2.TokenBucket(
            # A bucket smaller than one fill would cap the rate below what was asked.
            max_tokens=max(rl.burst, per_fill),
            tokens_per_fill=u32(per_fill),
            fill_interval=duration_pb2.Duration(
                seconds=interval_ns // 1_000_000_000, nanos=interval_ns % 1_000_000_000
            ),
        ),
        filter_enabled=base_pb2.RuntimeFractionalPercent(default_value=full),
        filter_enforced=base_pb2.RuntimeFractionalPercent(default_value=full),
    )
    packed = any_pb2.Any()
    packed.Pack(cfg)
    return packed


def _percent(value: int) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=value, denominator=percent_pb2.FractionalPercent.HUNDRED
    )


def fault_config(fault: Fault) -> any_pb2.Any:
    """Per-route fault injection: abort and/or delay a share of the requests."""
    cfg = fault_pb2.HTTPFault()
    if fault.abort_status:
        cfg.abort.http_status = fault.abort_status
        cfg.abort.percentage.CopyFrom(_percent(fault.abort_percent))
    if fault.delay_ms:
        cfg.delay.fixed_delay.CopyFrom(ms(fault.delay_ms))
        cfg.delay.percentage.CopyFrom(_percent(fault.delay_percent))
    packed = any_pb2.Any()
    packed.Pack(cfg)
    return packed


def mirror_policy(mirror: Mirror) -> rc.RouteAction.RequestMirrorPolicy:
    """Shadow ``percent`` % of the requests to the mirror's cluster (Host gets ``-shadow``)."""
    return rc.RouteAction.RequestMirrorPolicy(
        cluster=cluster_name(mirror.service, mirror.subset),
        runtime_fraction=base_pb2.RuntimeFractionalPercent(default_value=_percent(mirror.percent)),
    )


def route_clusters(route: Route) -> set[str]:
    """The clusters a route sends traffic to: live destinations and the mirror."""
    out = {cluster_name(d.service, d.subset) for d in route.destinations if d.weight}
    if route.mirror is not None:
        out.add(cluster_name(route.mirror.service, route.mirror.subset))
    return out


def route_entry(route: Route, affs: Affinities, keys: ApiKeyList = ()) -> rc.Route:
    """One Envoy route entry, given its destinations' :func:`affinities` and the API keys
    its ``api_keys`` names (:func:`~xds_server.translate.edge.route_keys`)."""
    action = rc.RouteAction()
    live = [d for d in route.destinations if d.weight > 0]
    if len(live) == 1:
        action.cluster = cluster_name(live[0].service, live[0].subset)
    else:
        for d in live:
            action.weighted_clusters.clusters.append(
                rc.WeightedCluster.ClusterWeight(
                    name=cluster_name(d.service, d.subset), weight=u32(d.weight)
                )
            )
    if route.timeout_ms is not None:
        action.timeout.CopyFrom(ms(route.timeout_ms))
    if route.retries is not None:
        r = route.retries
        action.retry_policy.retry_on = ",".join(r.on)
        action.retry_policy.num_retries.value = r.attempts
        if r.per_try_timeout_ms is not None:
            action.retry_policy.per_try_timeout.CopyFrom(ms(r.per_try_timeout_ms))
    if route.mirror is not None:
        action.request_mirror_policies.append(mirror_policy(route.mirror))
    action.hash_policy.extend(_hash_policies(affs))
    # stat_prefix turns on Envoy's per-route stats (vhost.<host>.route.<ns/name>.*),
    # tagged mesh_route by the generated bootstrap.
    out = rc.Route(
        name=route.key_name, match=_match(route), route=action, stat_prefix=route.key_name
    )
    if route.rate_limit is not None:
        out.typed_per_filter_config[LOCAL_RATELIMIT].CopyFrom(rate_limit_config(route.rate_limit))
    if route.fault is not None:
        out.typed_per_filter_config[FAULT].CopyFrom(fault_config(route.fault))
    apply_edge(out, route, keys)
    return out


def default_route_name(ref: ServiceRef) -> str:
    """The name of a service's default route (Envoy's stats and admin show it)."""
    return f"default:{service_host(ref)}"


def default_route(ref: ServiceRef, affinity: SessionAffinity | None) -> rc.Route:
    """A service's default route: everything to its whole cluster."""
    action = rc.RouteAction(cluster=cluster_name(ref))
    action.hash_policy.extend(_hash_policies([affinity]))
    return rc.Route(name=default_route_name(ref), match=rc.RouteMatch(prefix="/"), route=action)


def service_domains(service: Service) -> list[str]:
    """The spellings of a service's default host: ``<name>.<ns>``, with its ``:port``, and
    with any port (``<name>.<ns>:*``).

    A client names whatever port it dialed (a gateway's 10000, say), and the registry
    promises the service with or without ``:port``. Envoy's prefix wildcard ``host:*``
    matches every port; exact domains win over it, so a route that names one spelling
    (``host:8080``) still takes it. The exact ``:port`` spelling stays for that reason.
    """
    host = service_host(service.ref)
    if service.port:
        return [host, f"{host}:{service.port}", f"{host}:*"]
    return [host, f"{host}:*"]
