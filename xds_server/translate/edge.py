"""A route's edge settings in Envoy terms: ``jwt``, ``api_keys``, ``cors``, ``websocket``. Pure.

Each is a per-route setting of one HTTP filter (``typed_per_filter_config``), so that one
filter in the listener's connection manager serves every route of the listener:

* ``jwt_authn``: the listener's filter holds one provider and one requirement per route
  with ``jwt`` (named by the route's ``ns/name``); each route names its requirement
  (``PerRouteConfig.requirement_name``). The filter has no rules, so routes without ``jwt``
  are not checked. Envoy answers 401 for a missing, expired, badly signed or wrong-issuer
  token and 403 for a valid token of another audience.
* ``api_key_auth``: disabled in the listener's chain and enabled by the route's own
  ``ApiKeyAuthPerRoute``, which holds the keys (Envoy reads them from the filter config, not
  SDS): they reach only the proxies whose listeners carry the route. The client's name is
  forwarded in ``x-client-name`` and the key itself is removed before the backend.
* ``cors``: the filter with no config, the route's ``CorsPolicy``.
* ``websocket``: the route's ``upgrade_configs``; no filter.

A listener carries the filters its routes use, and only those: a listener whose routes use
none keeps exactly the chain of :func:`~xds_server.translate.listener.http_filters`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Protocol

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2 as key_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2

from xds_server.model import Route
from xds_server.model.route_edge import ApiKeys, Cors, Jwt

JWT_AUTHN = "envoy.filters.http.jwt_authn"
API_KEY_AUTH = "envoy.filters.http.api_key_auth"
CORS = "envoy.filters.http.cors"
CLIENT_NAME_HEADER = "x-client-name"
"""Where the backend finds the name of the API client whose key was accepted."""
EDGE_FILTERS = (JWT_AUTHN, API_KEY_AUTH, CORS)

ApiKeyList = tuple[tuple[str, str], ...]
"""(client name, key) pairs of an ``api_keys`` secret."""


class EdgeSecret(Protocol):
    """What route translation reads of a registry secret (``model.secret.Secret``)."""

    @property
    def jwks_json(self) -> str: ...

    @property
    def api_keys(self) -> ApiKeyList: ...


EdgeSecrets = Mapping[str, EdgeSecret]
"""``ns/name`` -> secret in force (the registry view's ``secrets``)."""


def _pack(msg: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)  # type: ignore[arg-type]
    return packed


def uses_edge(route: Route) -> bool:
    """Does the route need one of the edge filters in its listener's chain?"""
    return route.jwt is not None or route.api_keys is not None or route.cors is not None


def route_keys(route: Route, secrets: EdgeSecrets) -> ApiKeyList:
    """The API keys a route's ``api_keys`` names (none when the secret is not in force: the
    reference rules keep such a route out of force)."""
    if route.api_keys is None:
        return ()
    secret = secrets.get(route.api_keys.secret)
    return secret.api_keys if secret is not None else ()


def _jwks(jwt: Jwt, secrets: EdgeSecrets) -> str:
    if jwt.jwks_inline:
        return jwt.jwks_inline
    secret = secrets.get(jwt.jwks_secret)
    return secret.jwks_json if secret is not None else ""


def api_key_config(api_keys: ApiKeys, keys: ApiKeyList) -> any_pb2.Any:
    """The route's ``ApiKeyAuthPerRoute``: its keys, where they are read, what is forwarded."""
    return _pack(
        key_pb2.ApiKeyAuthPerRoute(
            credentials=[key_pb2.Credential(key=key, client=client) for client, key in keys],
            key_sources=[key_pb2.KeySource(header=api_keys.header)],
            forwarding=key_pb2.Forwarding(header=CLIENT_NAME_HEADER, hide_credentials=True),
        )
    )


_ANY_ORIGIN = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))
"""``*``: a StringMatcher must not be empty, so any origin is the regex ``.*``."""


def cors_config(cors: Cors) -> any_pb2.Any:
    """The route's ``CorsPolicy`` (origins exact, or ``*``)."""
    policy = cors_pb2.CorsPolicy(
        allow_origin_string_match=[
            _ANY_ORIGIN if o == "*" else string_pb2.StringMatcher(exact=o)
            for o in cors.allow_origins
        ],
        allow_methods=",".join(cors.allow_methods),
        allow_headers=",".join(cors.allow_headers),
        expose_headers=",".join(cors.expose_headers),
    )
    if cors.max_age_s is not None:
        policy.max_age = str(cors.max_age_s)
    if cors.allow_credentials:
        policy.allow_credentials.value = True
    return _pack(policy)


def apply_edge(out: rc.Route, route: Route, keys: ApiKeyList) -> None:
    """Add the route's edge settings to its Envoy route entry ``out``."""
    if route.websocket:
        out.route.upgrade_configs.append(rc.RouteAction.UpgradeConfig(upgrade_type="websocket"))
    if route.jwt is not None:
        out.typed_per_filter_config[JWT_AUTHN].CopyFrom(
            _pack(jwt_pb2.PerRouteConfig(requirement_name=route.key_name))
        )
    if route.api_keys is not None:
        out.typed_per_filter_config[API_KEY_AUTH].CopyFrom(api_key_config(route.api_keys, keys))
    if route.cors is not None:
        out.typed_per_filter_config[CORS].CopyFrom(cors_config(route.cors))


@functools.lru_cache(maxsize=1 << 12)
def _provider(jwt: Jwt, jwks: str) -> jwt_pb2.JwtProvider:
    return jwt_pb2.JwtProvider(
        issuer=jwt.issuer,
        audiences=list(jwt.audiences),
        local_jwks=base_pb2.DataSource(inline_string=jwks),
        claim_to_headers=[
            jwt_pb2.JwtClaimToHeader(header_name=header, claim_name=claim)
            for claim, header in jwt.forward_claims
        ],
        # The backend sees the claims it asked for, not the caller's bearer token.
        forward=False,
        clock_skew_seconds=60,
    )


def edge_filters(routes: Iterable[Route], secrets: EdgeSecrets) -> list[hcm_pb2.HttpFilter]:
    """The edge filters a listener's connection manager needs for ``routes`` (those
    attached to it), in order: CORS first (a preflight carries no credentials), then JWT,
    then API keys. Empty when no route uses any."""
    jwt = jwt_pb2.JwtAuthentication()
    want_cors = want_keys = False
    for route in sorted(routes, key=lambda r: r.key_name):
        want_cors = want_cors or route.cors is not None
        want_keys = want_keys or route.api_keys is not None
        if route.jwt is not None:
            name = route.key_name
            jwt.providers[name].CopyFrom(_provider(route.jwt, _jwks(route.jwt, secrets)))
            jwt.requirement_map[name].provider_name = name
    out = []
    if want_cors:
        out.append(hcm_pb2.HttpFilter(name=CORS, typed_config=_pack(cors_pb2.Cors())))
    if jwt.providers:
        out.append(hcm_pb2.HttpFilter(name=JWT_AUTHN, typed_config=_pack(jwt)))
    if want_keys:
        # Disabled here: only a route's own ApiKeyAuthPerRoute turns it on (and holds keys).
        out.append(
            hcm_pb2.HttpFilter(
                name=API_KEY_AUTH, typed_config=_pack(key_pb2.ApiKeyAuth()), disabled=True
            )
        )
    return out


def with_edge_filters(
    listener: listener_pb2.Listener, filters: list[hcm_pb2.HttpFilter]
) -> listener_pb2.Listener:
    """``listener`` with ``filters`` at the head of each connection manager's chain."""
    if not filters:
        return listener
    for chain in listener.filter_chains:
        for net_filter in chain.filters:
            if not net_filter.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            net_filter.typed_config.Unpack(hcm)
            chain_filters = list(filters) + list(hcm.http_filters)
            del hcm.http_filters[:]
            hcm.http_filters.extend(chain_filters)
            net_filter.typed_config.Pack(hcm)
    return listener
