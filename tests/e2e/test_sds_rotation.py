"""Workload certificates over SDS with real Envoys: issued for the proxy's identity, seen in
Envoy's ``/certs`` and on the wire, and rotated at half-life with no failed request.

A sidecar of ``shop/api`` (strict mTLS inbound) and a gateway (``edge``) that calls it over
mTLS. meshd runs with the test-only certificate lifetime of 20 s, so each certificate is
issued again after 10 s. While a load of at least 50 requests/s (two callers, 40/s each)
flows through the gateway and the sidecar (two TLS hops: the gateway's client certificate
and the sidecar's server certificate both rotate), the test watches the serial the sidecar
presents to a Python TLS client and the one Envoy's admin reports, until both changed; not
one request may fail meanwhile. Over SotW and over Delta ADS.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from adapters.etcd import EtcdRegistry
from integration.harness import EnvoyProcess, free_port, http_get
from integration.scenario import seed
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.fixtures_etcd import start_test_etcd
from tests.support.paced import PacedCallers
from tests.support.wait import eventually
from xds_server.app import MeshApp, MeshConfig
from xds_server.cli.bootstrap import bootstrap

TD = "mesh.local"
API_ID = f"spiffe://{TD}/ns/shop/svc/api"
TTL_S = 10.0
WAIT = 30.0  # seconds, on a busy 2-core box: first certificates, then a rotation
RATE_PER_CALLER = 40.0  # requests/s of each of the two load threads


def _certs(envoy: EnvoyProcess) -> list[tuple[int, list[str]]]:
    """(serial, URI SANs) of every certificate chain's leaf in Envoy's ``/certs``."""
    status, body = envoy.admin_get("/certs")
    assert status == 200, body
    out = []
    for entry in json.loads(body).get("certificates", []):
        for cert in entry.get("cert_chain", [])[:1]:
            uris = [s["uri"] for s in cert.get("subject_alt_names", []) if "uri" in s]
            out.append((int(cert["serial_number"], 16), uris))
    return out


def _wire_serial(port: int, tmp: Path, client: tuple[bytes, bytes]) -> int:
    """Serial of the certificate the sidecar's inbound presents, after a full mTLS GET."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # (we read the peer's certificate, not trust it)
    (tmp / "c.pem").write_bytes(client[0])
    (tmp / "k.pem").write_bytes(client[1])
    context.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", "/__echo")
        assert conn.getresponse().status == 200
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        conn.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_certificates_come_over_sds_and_rotate_without_a_failed_request(
    tmp_path: Path, envoy_factory: EnvoyFactory, backend_factory: BackendFactory, delta: bool
) -> None:
    etcd = start_test_etcd(tmp_path / "etcd")
    registry = EtcdRegistry(etcd.endpoint)
    api_app = backend_factory("api")
    app_port = int(api_app.url.rstrip("/").rsplit(":", 1)[1])
    api_in, gateway_out = free_port(), free_port()
    entries: dict[str, dict[str, Any]] = {
        "namespaces/shop": {"mtls": "strict"},
        "services/shop/api": {
            "port": api_in,
            "sidecar": {"inbound_port": api_in, "app_port": app_port},
        },
        "endpoints/shop/api/a1": {"address": "127.0.0.1"},
        "listeners/edge": {"port": gateway_out, "nodes": ["edge"]},
    }
    await seed(registry, entries)
    xds_port = free_port()
    app = MeshApp(
        registry,
        MeshConfig(xds=f"127.0.0.1:{xds_port}", metrics=None, test_only_cert_ttl_s=TTL_S),
    )
    await app.start()
    try:
        api = await asyncio.to_thread(
            envoy_factory,
            bootstrap("api-1", "api.shop", xds_port=xds_port, admin_port=0, delta=delta),
            name="api",
        )
        gateway = await asyncio.to_thread(
            envoy_factory,
            bootstrap("edge-1", "edge", xds_port=xds_port, admin_port=0, delta=delta),
            name="gw",
        )

        def through_gateway() -> int:
            url = f"http://127.0.0.1:{gateway_out}/__echo"
            return http_get(url, headers={"host": "api.shop"})[0]

        await eventually(
            through_gateway,
            "gateway -> api over mTLS",
            WAIT,
            until=lambda s: s == 200,
            ignoring=(OSError,),
            blocking=True,
        )
        # The sidecar's own certificate came over SDS: its identity as URI SAN.
        first = await eventually(
            lambda: _certs(api),
            "api's certificate in /certs",
            WAIT,
            until=lambda certs: any(API_ID in uris for _, uris in certs),
            blocking=True,
        )
        (first_serial,) = {s for s, uris in first if API_ID in uris}
        # ... and the gateway's, its own (each proxy is served the certificate of its node).
        edge = _certs(gateway)
        assert any(f"spiffe://{TD}/gateway/edge" in uris for _, uris in edge), edge
        assert not any(API_ID in uris for _, uris in edge), edge
        assert app.ca is not None
        client = app.ca.issue_workload(
            f"spiffe://{TD}/gateway/probe",
            datetime.datetime.now(datetime.UTC),
            datetime.timedelta(hours=1),
        )
        pem = (client.chain_pem, client.key_pem)
        assert await asyncio.to_thread(_wire_serial, api_in, tmp_path, pem) == first_serial

        # Load through both hops while the certificates rotate: two callers, each paced at
        # 40 requests/s, so the load stays at or above 50/s even when a request is slow.
        load = PacedCallers(through_gateway, callers=2, rate=RATE_PER_CALLER)
        with load:
            wire = await eventually(
                lambda: _wire_serial(api_in, tmp_path, pem),
                "a new serial on the wire",
                WAIT,
                until=lambda s: s != first_serial,
                blocking=True,
                interval=0.5,
            )
            seen = await eventually(
                lambda: _certs(api),
                "the new certificate in /certs",
                WAIT,
                until=lambda certs: any(s == wire and API_ID in u for s, u in certs),
                blocking=True,
            )
            assert any(s == wire for s, _ in seen)
            await asyncio.sleep(1.0)  # (requests across the switch, on both sides of it)
        assert app.issuer.rotations >= 1
        rate, results, failed = load.rate, load.results, load.failed
        assert rate >= 50, f"{len(results)} requests, {rate:.1f}/s: not the load asked for"
        assert failed == [], f"{len(failed)} of {len(results)} failed: {failed[:10]}"
    finally:
        await app.stop(grace=0.2)
        await registry.close()
        etcd.stop()
