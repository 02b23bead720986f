"""Registry histories for property tests: random puts and deletes over a small universe of
keys (``VALUES``: for each key, the values a history may put, valid and not)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

WEB_V1 = {"version": "v1"}
VALUES: dict[str, list[Any]] = {
    "/mesh/services/default/web": [
        {"port": 8080, "subsets": {"v1": WEB_V1}},
        {},
        {"port": 8081, "subsets": {"v2": {"version": "v2"}}},
        {"protocol": "tcp", "port": 5432},
        {
            "port": 8080,
            "load_balancer": {"algorithm": "ring_hash", "session_affinity": {"header": "x-u"}},
            "subsets": {"v1": WEB_V1},
        },
        {"port": 0},
        b"{",
    ],
    "/mesh/services/default/api": [{}, {"port": 9000, "protocol": "grpc"}, {"protocol": "udp"}],
    "/mesh/endpoints/default/web/w1": [
        {"address": "10.0.0.1", "labels": WEB_V1},
        {"address": "10.0.0.2", "port": 81},
        {"address": "x y"},
    ],
    "/mesh/endpoints/default/web/w2": [
        {"address": "10.0.0.3", "port": 82, "labels": {"version": "v2"}},
        {"address": "10.0.0.3", "weight": 0},
    ],
    "/mesh/endpoints/default/api/a1": [{"address": "10.0.1.1"}, {"address": "10.0.1.1", "port": 9}],
    "/mesh/routes/default/r1": [
        {"listener": "public", "destinations": [{"service": "web"}]},
        {"listener": "public", "destinations": [{"service": "web", "subset": "v1"}]},
        {"listener": "*", "destinations": [{"service": "web", "subset": "v2"}]},
        {"listener": "public", "destinations": [{"service": "api"}]},
        {"listener": "public", "destinations": [{"service": "web", "weight": 0}]},
    ],
    "/mesh/routes/default/r2": [
        {"listener": "public", "destinations": [{"service": "web"}, {"service": "api"}]},
        {"listener": "public", "destinations": [{"service": "nope"}]},
        {"listener": "public", "hosts": ["web.default"], "destinations": [{"service": "api"}]},
        b"[]",
    ],
    "/mesh/listeners/public": [
        {"port": 10000},
        {"port": 10001, "nodes": ["gw-*"]},
        {"port": 10000, "protocol": "tcp", "service": "api"},
        {"port": 0},
    ],
    "/mesh/listeners/db": [
        {"port": 5432, "protocol": "tcp", "service": "web"},
        {"port": 5432, "protocol": "tcp", "service": "api"},
        {"port": 5432, "protocol": "tcp"},
    ],
}
KEYS = sorted(VALUES)


@dataclass(frozen=True)
class Op:
    key: str
    value: bytes | None  # None: delete


def encode(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


ops = st.sampled_from(KEYS).flatmap(
    lambda key: st.sampled_from([*VALUES[key], None]).map(
        lambda v: Op(key, None if v is None else encode(v))
    )
)
histories = st.lists(ops, min_size=4, max_size=30)
