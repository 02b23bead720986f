"""A route configuration Envoy must refuse, put in meshd's cache the way a translation bug
would (validation never lets one through): how the tests make a real Envoy NACK."""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2

from xds_server.app import MeshApp
from xds_server.resources import ROUTE
from xds_server.resources.resource import make_resource
from xds_server.translate.translator import Delta

BAD_REGEX = "(unclosed"
"""A regex RE2 cannot compile: Envoy's NACK text names it."""


def serve_rejected_route(app: MeshApp, name: str = "public") -> None:
    """Replace route configuration ``name`` in ``app``'s cache with one whose extra route
    has an invalid regex; every proxy holding it is pushed it and NACKs."""
    good = app.cache.get(ROUTE, name)
    assert good is not None, f"no route configuration {name!r} in the cache"
    msg = route_pb2.RouteConfiguration.FromString(good.body)
    bad_route = msg.virtual_hosts[0].routes.add()
    bad_route.match.safe_regex.regex = BAD_REGEX
    bad_route.direct_response.status = 200
    delta = Delta()
    delta.changed[ROUTE][name] = make_resource(ROUTE, name, msg, good.refs)
    app.cache.apply(delta, app.controller.state.revision)
