"""mTLS between services with real Envoys, real TLS and meshd's own certificates over SDS.

Sidecars of ``shop/api``, ``shop/web`` and ``shop/legacy`` (permissive) and a gateway
(``edge``) on one loopback host, the namespace ``shop`` strict by default. Checked by what
Envoy and the application see:

- the gateway and the web sidecar reach api's application only through api's sidecar, over
  mTLS (the inbound listener's ``ssl.handshake`` counter rises), and the application learns
  each caller's SPIFFE id from the verified certificate (``x-forwarded-client-cert``);
- a plaintext client is refused by a ``strict`` inbound and served by a ``permissive`` one,
  and so is a TLS client without a certificate or with one of another CA;
- a workload of the mesh posing as another service (its endpoint points at web's sidecar,
  which holds a valid mesh certificate of another identity) is refused by the caller's
  exact SAN check: 503 and Envoy's ``ssl.fail_verify_san`` counter rises.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from integration.harness import EnvoyProcess, http_get
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.mtls_certs import Pem, make_ca, make_workload
from tests.support.mtls_mesh import TD, WAIT, Mesh, start_mtls_mesh
from tests.support.wait import eventually


def _ssl_handshakes(envoy: EnvoyProcess, port: int) -> int:
    stats = envoy.stats(rf"^listener\.0\.0\.0\.0_{port}\.ssl\.handshake$")
    return sum(stats.values())


@pytest.fixture
async def mesh(
    tmp_path: Path, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> AsyncIterator[Mesh]:
    async with start_mtls_mesh(tmp_path, envoy_factory, backend_factory) as m:
        yield m


def _xfcc_uri(body: str) -> str:
    """The caller's URI from the ``x-forwarded-client-cert`` the application received."""
    header = json.loads(body)["headers"].get("x-forwarded-client-cert", "")
    fields = dict(part.split("=", 1) for part in header.split(";") if "=" in part)
    return str(fields.get("URI", ""))


async def test_gateway_and_sidecar_reach_a_sidecar_over_mtls_with_their_identity(
    mesh: Mesh,
) -> None:
    before = _ssl_handshakes(mesh.api, mesh.ports["api_in"])
    body = await mesh.reach("gateway", "api.shop")
    assert _xfcc_uri(body) == f"spiffe://{TD}/gateway/edge"
    body = await mesh.reach("web", "api.shop")
    assert _xfcc_uri(body) == f"spiffe://{TD}/ns/shop/svc/web"
    assert _ssl_handshakes(mesh.api, mesh.ports["api_in"]) >= before + 2
    # A caller cannot forge the header: the sidecar replaces it with the verified identity.
    status, body, _ = await asyncio.to_thread(
        http_get,
        f"http://127.0.0.1:{mesh.ports['gateway_out']}/__echo",
        {
            "host": "api.shop",
            "x-forwarded-client-cert": "URI=spiffe://mesh.local/ns/shop/svc/admin",
        },
    )
    assert status == 200 and _xfcc_uri(body) == f"spiffe://{TD}/gateway/edge"


def _plaintext_get(port: int) -> int | str:
    """A plaintext HTTP/1.1 GET straight to a sidecar's inbound port: the status, or the
    error the client saw."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/__echo")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        conn.close()


async def test_plaintext_is_refused_by_strict_and_accepted_by_permissive(mesh: Mesh) -> None:
    # Both inbound listeners are up once mTLS through them works.
    await mesh.reach("gateway", "api.shop")
    await mesh.reach("gateway", "legacy.shop")
    strict = await asyncio.to_thread(_plaintext_get, mesh.ports["api_in"])
    assert isinstance(strict, str), strict  # the handshake fails: no HTTP response at all
    permissive = await asyncio.to_thread(_plaintext_get, mesh.ports["legacy_in"])
    assert permissive == 200


async def test_a_workload_posing_as_another_service_is_refused_by_the_san_check(
    mesh: Mesh,
) -> None:
    await mesh.reach("gateway", "web.shop")
    fails = mesh.gateway.stat("cluster.pay.shop.ssl.fail_verify_san") or 0
    status, _ = await asyncio.to_thread(mesh.via, "gateway", "pay.shop")
    assert status == 503
    assert (mesh.gateway.stat("cluster.pay.shop.ssl.fail_verify_san") or 0) > fails


def _tls_get(port: int, tmp: Path, cert: Pem | None) -> int | str:
    """A TLS GET straight to a sidecar's inbound port, presenting ``cert`` (or none): the
    status, or the error the client saw. The client does not check the server: the attack
    is on the server's check of the client."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        (tmp / "c.pem").write_bytes(cert.cert)
        (tmp / "k.pem").write_bytes(cert.key)
        context.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", "/__echo")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        conn.close()


async def test_a_client_without_a_mesh_certificate_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.reach("gateway", "api.shop")
    port = mesh.ports["api_in"]
    # TLS without a client certificate.
    assert isinstance(await asyncio.to_thread(_tls_get, port, tmp_path, None), str)
    # A certificate naming the gateway's SPIFFE id, signed by another CA: the chain check fails.
    _, key, ca = make_ca("attacker CA")
    forged = make_workload(key, ca, f"spiffe://{TD}/gateway/edge")
    assert isinstance(await asyncio.to_thread(_tls_get, port, tmp_path, forged), str)
    # The same client with a certificate of the mesh CA gets through: the refusals above
    # were the certificate check, not the client.
    assert mesh.app.ca is not None
    issued = mesh.app.ca.issue_workload(
        f"spiffe://{TD}/gateway/edge",
        datetime.datetime.now(datetime.UTC),
        datetime.timedelta(hours=1),
    )
    genuine = Pem(issued.chain_pem, issued.key_pem)
    assert await asyncio.to_thread(_tls_get, port, tmp_path, genuine) == 200


async def test_hds_probes_of_a_strict_service_go_over_mtls(mesh: Mesh) -> None:
    """The checkers meshd assigns probe ``shop/api`` (strict) as its callers connect: with
    their own certificate, checking api's SPIFFE id. A plaintext probe would fail the
    handshake and mark the endpoint unhealthy."""
    await mesh.reach("gateway", "api.shop")
    before = _ssl_handshakes(mesh.api, mesh.ports["api_in"])
    spec = {
        "port": mesh.ports["api_in"],
        "sidecar": {"inbound_port": mesh.ports["api_in"], "app_port": mesh.ports["api_app"]},
        "health_check": {"path": "/__echo", "interval_ms": 300, "healthy_threshold": 1},
    }
    await mesh.registry.put(f"{mesh.registry.prefix}services/shop/api", json.dumps(spec).encode())

    def verdict() -> tuple[str, int]:
        (health,) = mesh.app.health.services("shop/api")
        (endpoint,) = health.endpoints
        return endpoint.status.name, endpoint.healthy_reports

    await eventually(
        verdict,
        "shop/api's endpoint HEALTHY from HDS probes",
        WAIT,
        until=lambda v: v[0] == "HEALTHY" and v[1] >= 1,
        context=mesh.context,
    )
    assert _ssl_handshakes(mesh.api, mesh.ports["api_in"]) > before
    # ... and it stays so: no checker reports it unhealthy.
    await asyncio.sleep(1.0)
    assert verdict()[0] == "HEALTHY"
