"""Authorization on a sidecar's inbound listener: policies compiled to Envoy's RBAC HTTP
filter. Pure.

The inbound HTTP listener (:mod:`xds_server.translate.sidecar`) always carries the two
filters :func:`inbound_filters` returns, before its router, each with no rules of its own
(Envoy enforces nothing for an RBAC filter without ``rules``). The policies live in the
listener's route configuration, served over RDS, as per-route overrides of those filters
(:func:`per_route_rbac`). A policy edit therefore changes only a RouteConfiguration,
which Envoy applies to the next request on every open connection; changing the listener
instead would leave pooled connections on the old filter chain until Envoy drained them.

The rule is :func:`xds_server.model.policy.decide`'s, compiled:

* the deny policies selecting the service become the override of the ``DENY`` filter (any
  of them matching denies);
* then, if allow policies select it, the override of the ``ALLOW`` filter holds them (only
  what one of them matches passes); if none does and the namespace's ``default_policy`` is
  ``deny``, the same override with no policies (nothing passes);
* with neither, no override: both filters pass everything.

Callers are identified by the verified peer certificate only: a principal is
``authenticated.principal_name`` matched against the certificate's URI SAN (Envoy checks
the URI SANs first), exactly, or by prefix for ``ns/*`` and ``*``. No header is ever read
for identity, so a caller cannot claim to be someone else. Envoy answers a denied request
with 403 and counts it in the listener's ``http.<stat_prefix>.rbac.denied`` (both filters
leave ``stat_prefix`` unset so they count in the same stat).

Paths are matched with Envoy's ``url_path`` (the path without its query), as
``decide`` does.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import path_pb2, string_pb2
from google.protobuf import any_pb2

from xds_server.model import Service, ServiceRef
from xds_server.model.identity import IdentityPattern
from xds_server.model.policy import Action, Policy, Rule, default_policy_of
from xds_server.model.view import RegistryView

RBAC = "envoy.filters.http.rbac"
DENY_FILTER = f"{RBAC}.deny"
"""The name of the filter holding the deny policies (first)."""
ALLOW_FILTER = f"{RBAC}.allow"
"""The name of the filter holding the allow policies (second)."""


def _string(value: str) -> string_pb2.StringMatcher:
    """Exact, or a prefix when written with a trailing ``*``."""
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=value[:-1])
    return string_pb2.StringMatcher(exact=value)


def _principal(pattern: IdentityPattern, trust_domain: str) -> rbac_config_pb2.Principal:
    spiffe, prefix = pattern.spiffe_prefix(trust_domain)
    matcher = (
        string_pb2.StringMatcher(prefix=spiffe)
        if prefix
        else string_pb2.StringMatcher(exact=spiffe)
    )
    return rbac_config_pb2.Principal(
        authenticated=rbac_config_pb2.Principal.Authenticated(principal_name=matcher)
    )


def _any_of(items: list[rbac_config_pb2.Permission]) -> rbac_config_pb2.Permission:
    if len(items) == 1:
        return items[0]
    return rbac_config_pb2.Permission(or_rules=rbac_config_pb2.Permission.Set(rules=items))


def _permission(rule: Rule) -> rbac_config_pb2.Permission:
    parts = []
    if rule.paths:
        parts.append(
            _any_of(
                [
                    rbac_config_pb2.Permission(url_path=path_pb2.PathMatcher(path=_string(p)))
                    for p in rule.paths
                ]
            )
        )
    if rule.methods:
        parts.append(
            _any_of(
                [
                    rbac_config_pb2.Permission(
                        header=route_components_pb2.HeaderMatcher(
                            name=":method", string_match=string_pb2.StringMatcher(exact=m)
                        )
                    )
                    for m in rule.methods
                ]
            )
        )
    if not parts:
        return rbac_config_pb2.Permission(any=True)
    if len(parts) == 1:
        return parts[0]
    return rbac_config_pb2.Permission(and_rules=rbac_config_pb2.Permission.Set(rules=parts))


def _policy(policy: Policy, trust_domain: str) -> rbac_config_pb2.Policy:
    out = rbac_config_pb2.Policy()
    if policy.rules is None:
        out.permissions.append(rbac_config_pb2.Permission(any=True))
    else:
        out.permissions.extend(_permission(r) for r in policy.rules)
    if policy.sources is None:
        out.principals.append(rbac_config_pb2.Principal(any=True))
    else:
        patterns = sorted({p for source in policy.sources for p in source})
        out.principals.extend(_principal(p, trust_domain) for p in patterns)
    return out


def _override(action: int, policies: list[Policy], trust_domain: str) -> any_pb2.Any:
    rules = rbac_config_pb2.RBAC(action=action)  # type: ignore[arg-type]
    for p in policies:
        rules.policies[p.key_name].CopyFrom(_policy(p, trust_domain))
    packed = any_pb2.Any()
    # Deterministic: the policies are a map, and versions are hashes of the bytes.
    packed.Pack(rbac_pb2.RBACPerRoute(rbac=rbac_pb2.RBAC(rules=rules)), deterministic=True)
    return packed


def rbac_overrides(
    service: ServiceRef,
    policies: Iterable[Policy],
    default_policy: Action,
    trust_domain: str,
) -> dict[str, any_pb2.Any]:
    """Filter name -> the RBAC override (``RBACPerRoute``) enforcing ``policies`` (those
    selecting ``service`` are used) and the namespace's ``default_policy`` on ``service``'s
    inbound listener; a filter without an entry enforces nothing."""
    selecting = sorted((p for p in policies if p.selects(service)), key=lambda p: p.name)
    denies = [p for p in selecting if p.action == "deny"]
    allows = [p for p in selecting if p.action == "allow"]
    out = {}
    if denies:
        out[DENY_FILTER] = _override(rbac_config_pb2.RBAC.DENY, denies, trust_domain)
    if allows or default_policy == "deny":
        # An ALLOW filter with no policies denies everything: the namespace's default.
        out[ALLOW_FILTER] = _override(rbac_config_pb2.RBAC.ALLOW, allows, trust_domain)
    return out


def per_route_rbac(
    service: Service, state: RegistryView, trust_domain: str
) -> dict[str, any_pb2.Any]:
    """The ``typed_per_filter_config`` of ``service``'s inbound virtual host: the policies
    in force on it (see :func:`rbac_overrides`); the caller's identity is the URI SAN of its
    verified certificate."""
    return rbac_overrides(
        service.ref,
        state.policies.values(),
        default_policy_of(state.namespaces, service.ref.namespace),
        trust_domain,
    )


def inbound_filters() -> list[hcm_pb2.HttpFilter]:
    """The authorization filters of every inbound HTTP listener, in order (before the
    router): the deny filter, then the allow filter, neither with rules of its own."""
    return [
        hcm_pb2.HttpFilter(name=name, typed_config=_EMPTY_RBAC)
        for name in (DENY_FILTER, ALLOW_FILTER)
    ]


_EMPTY_RBAC = any_pb2.Any()
_EMPTY_RBAC.Pack(rbac_pb2.RBAC())
