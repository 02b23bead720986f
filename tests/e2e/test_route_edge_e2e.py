"""Route ``jwt``, ``api_keys``, ``websocket`` and ``cors`` with a real Envoy gateway, real
clients and tokens signed here: what Envoy answers each kind of caller, what reaches the
backend, and that a WebSocket outlives route edits.

One gateway per test, on its own etcd and meshd; the backend is ``integration/backend.py``
(its request log shows the headers that reached it; ``/__ws`` is its WebSocket echo).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import BackendHandle, EnvoyProcess, free_port
from integration.scenario import seed
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.fixtures_etcd import start_test_etcd
from tests.support.wait import eventually
from tests.support.ws_client import upgrades
from xds_server.app import MeshApp, MeshConfig
from xds_server.cli.bootstrap import bootstrap

WAIT = 30.0
ISSUER = "https://login.example"
KID = "k1"
WEB = {"service": "web"}


@dataclass
class Edge:
    """A gateway (listener ``public`` on ``port``) in front of backend ``web``."""

    registry: EtcdRegistry
    etcd: EmbeddedEtcd
    gateway: EnvoyProcess
    web: BackendHandle
    port: int

    def request(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, dict[str, str], str]:
        """(status, response headers lower-cased, body) on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()

    def last_headers(self) -> dict[str, str]:
        """The headers of the last request that reached the backend."""
        log = self.web.requests_log()
        assert log, "no request reached the backend"
        headers: dict[str, str] = log[-1]["headers"]
        return headers

    async def put(self, key: str, value: dict[str, Any]) -> None:
        await self.registry.put(self.registry.prefix + key, json.dumps(value).encode())

    async def until(self, path: str, status: int, headers: dict[str, str] | None = None) -> None:
        """Until ``path`` answers ``status`` (the routes are in the gateway)."""
        await eventually(
            lambda: self.request(path, headers)[0],
            f"{path} to answer {status}",
            WAIT,
            until=lambda s: s == status,
            ignoring=(OSError, http.client.HTTPException),
            blocking=True,
        )


@pytest.fixture
async def edge(
    tmp_path: Path, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> AsyncIterator[Edge]:
    etcd = start_test_etcd(tmp_path / "etcd")
    registry = EtcdRegistry(etcd.endpoint)
    web = backend_factory("web")
    port = free_port()
    await seed(
        registry,
        {
            "services/default/web": {"protocol": "http", "port": web.port},
            "endpoints/default/web/w1": {"address": "127.0.0.1"},
            "listeners/public": {"address": "127.0.0.1", "port": port, "nodes": ["edge"]},
            "routes/default/open": {"listener": "public", "destinations": [WEB]},
        },
    )
    xds_port = free_port()
    app = MeshApp(registry, MeshConfig(xds=f"127.0.0.1:{xds_port}", metrics=None))
    await app.start()
    try:
        gw = await asyncio.to_thread(
            envoy_factory, bootstrap("edge-1", "edge", xds_port=xds_port, admin_port=0), name="gw"
        )
        out = Edge(registry, etcd, gw, web, port)
        await out.until("/open", 200)
        yield out
    finally:
        await app.stop(grace=0.2)
        await registry.close()
        etcd.stop()


# --- JWT ---------------------------------------------------------------------------------


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]}


def _token(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "api", "sub": "alice", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": KID})


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _jwt_route(prefix: str, jwks: dict[str, Any]) -> dict[str, Any]:
    return {
        "listener": "public",
        "match": {"prefix": prefix},
        "destinations": [WEB],
        "jwt": {
            "issuer": ISSUER,
            "audiences": ["api"],
            "jwks": jwks,
            "forward_claims": {"sub": "x-user"},
        },
    }


async def test_jwt_inline_and_from_a_secret(edge: Edge) -> None:
    key, other = _rsa(), _rsa()
    await edge.put("secrets/default/login-jwks", {"jwks": _jwks(key)})
    await edge.put("routes/default/jwt-inline", _jwt_route("/inline", {"inline": _jwks(key)}))
    await edge.put("routes/default/jwt-secret", _jwt_route("/fromsecret", {"secret": "login-jwks"}))
    await edge.until("/inline", 401)
    await edge.until("/fromsecret", 401)
    now = int(time.time())
    for path in ("/inline", "/fromsecret"):
        status, _, _ = await asyncio.to_thread(edge.request, path, _bearer(_token(key)))
        assert status == 200, path
        seen = edge.last_headers()
        assert seen.get("x-user") == "alice", (path, seen)  # the claim reached the backend
        assert "authorization" not in seen, (path, seen)  # the token did not

        refusals = {
            "missing": {},
            "expired": _bearer(_token(key, iat=now - 3600, exp=now - 600)),
            "wrong issuer": _bearer(_token(key, iss="https://elsewhere.example")),
            "bad signature": _bearer(_token(other)),
            "not a JWT": _bearer("not.a.token"),
        }
        for what, headers in refusals.items():
            status, got, body = await asyncio.to_thread(edge.request, path, headers)
            assert status == 401, (path, what, status, body)
            assert "bearer" in got.get("www-authenticate", "").lower(), (path, what, got)
        status, _, body = await asyncio.to_thread(
            edge.request, path, _bearer(_token(key, aud="billing"))
        )
        assert status == 403, (path, "another audience", status, body)
    # The open route is not checked: the JWT filter has requirements per route only.
    assert (await asyncio.to_thread(edge.request, "/open"))[0] == 200


# --- API keys ----------------------------------------------------------------------------


async def test_api_keys_enforced_on_their_route_only(edge: Edge) -> None:
    await edge.put("secrets/default/partner-keys", {"keys": {"acme": "k-acme-1", "zeta": "k-z"}})
    await edge.put(
        "routes/default/keys",
        {
            "listener": "public",
            "match": {"prefix": "/partner"},
            "destinations": [WEB],
            "api_keys": {"secret": "partner-keys"},
        },
    )
    await edge.until("/partner", 401)
    status, _, _ = await asyncio.to_thread(edge.request, "/partner", {"x-api-key": "k-acme-1"})
    assert status == 200
    seen = edge.last_headers()
    assert seen.get("x-client-name") == "acme", seen
    assert "x-api-key" not in seen, seen  # the key itself stays at the gateway
    for headers in ({}, {"x-api-key": "k-wrong"}, {"x-api-key": ""}, {"x-other": "k-acme-1"}):
        status, _, body = await asyncio.to_thread(edge.request, "/partner", headers)
        assert status == 401, (headers, status, body)
    # The filter is disabled in the listener: other routes of the listener are not checked,
    # and a client cannot pose as one by sending x-client-name itself to the keyed route.
    status, _, _ = await asyncio.to_thread(edge.request, "/open", {})
    assert status == 200
    status, _, _ = await asyncio.to_thread(
        edge.request, "/partner", {"x-api-key": "k-z", "x-client-name": "acme"}
    )
    assert status == 200
    assert edge.last_headers().get("x-client-name") == "zeta"

    # Editing the secret: the old key stops working, the new one works.
    await edge.put("secrets/default/partner-keys", {"keys": {"acme": "k-acme-2"}})
    await edge.until("/partner", 200, {"x-api-key": "k-acme-2"})
    status, _, _ = await asyncio.to_thread(edge.request, "/partner", {"x-api-key": "k-acme-1"})
    assert status == 401


# --- WebSocket ---------------------------------------------------------------------------

MESSAGES = 400
ROUTE_TIMEOUT_MS = 3_000
"""The WebSocket route's timeout: the held connection must outlast it (and its edit's),
which takes seconds where Envoy's default (15 s) would take the whole 15."""


def _rds_updates(gateway: EnvoyProcess) -> int:
    """Route configurations of listener ``public`` the gateway accepted so far."""
    return sum(v for k, v in gateway.stats().items() if k.endswith("rds.public.update_success"))


async def test_websocket_holds_through_route_edits(edge: Edge) -> None:
    ws_route = {
        "listener": "public",
        "match": {"prefix": "/__ws"},
        "destinations": [WEB],
        "websocket": True,
        "timeout_ms": ROUTE_TIMEOUT_MS,
    }
    await edge.put("routes/default/ws", ws_route)
    # The same path without ``websocket`` (selected by a header): upgrades stay refused.
    await edge.put(
        "routes/default/no-ws",
        {**ws_route, "websocket": False, "match": {"prefix": "/__ws", "headers": {"x-no": "1"}}},
    )
    url = f"ws://127.0.0.1:{edge.port}/__ws"

    async def connects(headers: dict[str, str] | None = None) -> bool:
        return await upgrades(url, headers)

    await eventually(connects, "a WebSocket through the gateway", WAIT)
    assert not await connects({"x-no": "1"}), "a route without websocket let an upgrade through"

    before = _rds_updates(edge.gateway)
    started = time.monotonic()
    async with websockets.connect(url, open_timeout=5) as ws:
        for i in range(MESSAGES):
            sent = f"message {i} " + "x" * (i % 200)
            await ws.send(sent)
            assert await ws.recv() == sent, i
            if i == 100:  # another route's match changes
                await edge.put(
                    "routes/default/open",
                    {
                        "listener": "public",
                        "match": {"prefix": "/", "headers": {"x-v": "2"}},
                        "destinations": [WEB],
                    },
                )
            if i == 200:  # this route's own timeout changes
                await edge.put("routes/default/ws", {**ws_route, "timeout_ms": 4_000})
            if i in (101, 201):  # (the edit is in the gateway before the exchange goes on)
                want = before + (1 if i == 101 else 2)
                await eventually(
                    lambda: _rds_updates(edge.gateway),
                    f"route edit {want - before} in the gateway",
                    WAIT,
                    until=lambda n, want=want: n >= want,
                    blocking=True,
                )
            # Paced to outlast the route's timeout, before and after its edit: an upgraded
            # stream must not be cut by it.
            await asyncio.sleep(0.016)
        held = time.monotonic() - started
        await ws.ping()
    assert held > 4 + 1, held
    assert _rds_updates(edge.gateway) >= before + 2
    # Both edits took: the open route now needs its header.
    assert (await asyncio.to_thread(edge.request, "/open"))[0] == 404
    assert (await asyncio.to_thread(edge.request, "/open", {"x-v": "2"}))[0] == 200


# --- CORS --------------------------------------------------------------------------------


async def test_cors_preflight_answered_by_the_gateway(edge: Edge) -> None:
    await edge.put(
        "routes/default/cors",
        {
            "listener": "public",
            "match": {"prefix": "/cors"},
            "destinations": [WEB],
            "cors": {
                "allow_origins": ["https://app.example"],
                "allow_methods": ["GET", "PUT"],
                "allow_headers": ["x-custom"],
                "expose_headers": ["x-trace"],
                "max_age_s": 600,
                "allow_credentials": True,
            },
        },
    )

    def preflight(origin: str, path: str = "/cors") -> tuple[int, dict[str, str]]:
        status, headers, _ = edge.request(
            path,
            {
                "origin": origin,
                "access-control-request-method": "PUT",
                "access-control-request-headers": "x-custom",
            },
            method="OPTIONS",
        )
        return status, headers

    await eventually(
        lambda: preflight("https://app.example")[1].get("access-control-allow-origin"),
        "the gateway to answer preflights",
        WAIT,
        until=lambda v: v == "https://app.example",
        blocking=True,
    )
    served = len(edge.web.requests_log())
    status, got = await asyncio.to_thread(preflight, "https://app.example")
    assert status == 200
    assert got["access-control-allow-origin"] == "https://app.example"
    assert got["access-control-allow-methods"] == "GET,PUT"
    assert got["access-control-allow-headers"] == "x-custom"
    assert got["access-control-max-age"] == "600"
    assert got["access-control-allow-credentials"] == "true"
    assert len(edge.web.requests_log()) == served, "the preflight reached the backend"

    status, got = await asyncio.to_thread(preflight, "https://evil.example")
    assert not any(k.startswith("access-control-") for k in got), got

    # A simple request from the allowed origin gets the response headers too.
    status, got, _ = await asyncio.to_thread(
        edge.request, "/cors", {"origin": "https://app.example"}
    )
    assert status == 200
    assert got["access-control-allow-origin"] == "https://app.example"
    assert got["access-control-expose-headers"] == "x-trace"
    # Another route of the listener has no CORS policy: no allow headers for anyone.
    status, got = await asyncio.to_thread(preflight, "https://app.example", "/open")
    assert "access-control-allow-origin" not in got, got
