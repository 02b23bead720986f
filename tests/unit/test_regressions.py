"""Regressions found by review of state and translation (each once let a bad config through)."""

from __future__ import annotations

import json
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.type.v3 import http_pb2

from xds_server.ingest.registry import Changes, Entry, Event, Reset
from xds_server.ingest.state import RegistryState
from xds_server.resources import CLUSTER, ROUTE
from xds_server.translate import Translator
from xds_server.translate.route import LOCAL_RATELIMIT

P = "/mesh/"


class Reg:
    def __init__(self, content: dict[str, Any]) -> None:
        self.state = RegistryState(P)
        self.tr = Translator()
        self.rev = 1
        ents = tuple(Entry(P + k, json.dumps(v).encode(), 1) for k, v in content.items())
        self.tr.update(self.state, self.state.apply(Reset(1, ents)))

    def put(self, key: str, value: Any) -> None:
        self.rev += 1
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        ch = self.state.apply(Changes(self.rev, (Event("put", P + key, raw, self.rev),)))
        self.tr.update(self.state, ch)

    def delete(self, key: str) -> None:
        self.rev += 1
        ch = self.state.apply(Changes(self.rev, (Event("delete", P + key, b"", self.rev),)))
        self.tr.update(self.state, ch)


def test_grpc_health_check_uses_http2_codec_not_http3() -> None:
    hc = {"every_proxy": True}  # Envoy's own active check (HDS checks are not in the cluster)
    reg = Reg({"services/default/g": {"protocol": "grpc", "port": 9, "health_check": hc}})
    res = reg.tr.served[CLUSTER]["g.default"]
    cluster = cluster_pb2.Cluster.FromString(res.body)
    assert cluster.health_checks[0].http_health_check.codec_client_type == http_pb2.HTTP2


def test_route_host_with_port_keeps_the_default_route() -> None:
    reg = Reg(
        {
            "services/default/api": {"port": 9000},
            "listeners/public": {"port": 10000},
            "routes/default/v2": {
                "listener": "public",
                "hosts": ["api.default:9000"],
                "match": {"prefix": "/v2"},
                "destinations": [{"service": "api"}],
            },
        }
    )
    config = route_pb2.RouteConfiguration.FromString(reg.tr.served[ROUTE]["public"].body)
    domains: dict[str, list[str]] = {}
    for vh in config.virtual_hosts:
        for d in vh.domains:
            domains[d] = [r.match.prefix or r.match.path for r in vh.routes]
    assert domains["api.default:9000"] == ["/v2", "/"]
    assert domains["api.default"][-1] == "/"


def test_second_listener_on_the_same_address_is_rejected_first_keeps_serving() -> None:
    reg = Reg({"listeners/a": {"port": 10000, "nodes": ["gateway"]}})
    reg.put("listeners/b", {"port": 10000, "nodes": ["*"]})
    assert set(reg.state.listeners) == {"a"}
    problem = reg.state.problems[P + "listeners/b"]
    assert problem.field == "port" and "listener a" in problem.reason
    # Different node sets may share a port: each proxy binds only its own.
    reg.put("listeners/c", {"port": 10000, "nodes": ["sidecar-*"]})
    assert "c" in reg.state.listeners
    # b's "*" also overlaps c's nodes: b waits until both are gone, then takes the port.
    reg.delete("listeners/a")
    assert "listener c" in reg.state.problems[P + "listeners/b"].reason
    reg.delete("listeners/c")
    assert "b" in reg.state.listeners and P + "listeners/b" not in reg.state.problems


def test_rate_limit_bucket_holds_at_least_one_fill() -> None:
    reg = Reg(
        {
            "services/default/web": {"port": 80},
            "listeners/public": {"port": 10000},
            "routes/default/r": {
                "listener": "public",
                "destinations": [{"service": "web"}],
                "rate_limit": {"requests_per_minute": 600000, "burst": 100},
            },
        }
    )
    config = route_pb2.RouteConfiguration.FromString(reg.tr.served[ROUTE]["public"].body)
    route = next(r for vh in config.virtual_hosts for r in vh.routes if r.name == "default/r")
    cfg = local_rate_limit_pb2.LocalRateLimit()
    route.typed_per_filter_config[LOCAL_RATELIMIT].Unpack(cfg)
    bucket = cfg.token_bucket
    per_second = bucket.tokens_per_fill.value / (bucket.fill_interval.ToNanoseconds() / 1e9)
    assert abs(per_second - 10000) < 1
    assert bucket.max_tokens >= bucket.tokens_per_fill.value


def test_last_good_value_returns_when_its_service_comes_back() -> None:
    route = {"listener": "public", "destinations": [{"service": "web"}]}
    reg = Reg(
        {
            "services/default/web": {"port": 80},
            "listeners/public": {"port": 10000},
            "routes/default/r": route,
        }
    )
    reg.put("routes/default/r", b"{not json")
    assert P + "routes/default/r" in reg.state.routes
    reg.delete("services/default/web")
    # The route's last good value still sends to web: both stay in force (an etcd edit
    # does not cut traffic that flows), and the service's key says why.
    assert P + "routes/default/r" in reg.state.routes
    assert reg.state.problems[P + "services/default/web"].last_good_kept
    reg.put("services/default/web", {"port": 80})
    assert P + "services/default/web" not in reg.state.problems
    assert P + "routes/default/r" in reg.state.routes
    assert reg.state.problems[P + "routes/default/r"].last_good_kept
