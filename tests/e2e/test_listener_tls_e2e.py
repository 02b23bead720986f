"""Listener TLS from registry secrets with a real Envoy gateway and real TLS clients: SNI
picks each of two certificates, editing a secret rotates it under a load of more than 50
requests/s with no failed request (and no listener change), and a listener with a client
CA refuses a client without a certificate."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509

from adapters.etcd import EtcdRegistry
from integration.harness import free_port
from integration.scenario import seed
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.fixtures_etcd import start_test_etcd
from tests.support.paced import PacedCallers
from tests.support.tls_secrets import Issued, issue
from tests.support.wait import eventually
from xds_server.app import MeshApp, MeshConfig
from xds_server.cli.bootstrap import bootstrap

WAIT = 30.0
RATE_PER_CALLER = 20.0  # requests/s of each of the four load threads (new connections)


def _secret(c: Issued) -> dict[str, Any]:
    return json.loads(c.value())


def _get(port: int, sni: str, tmp: Path, client: Issued | None = None) -> tuple[int, int]:
    """(HTTP status, serial of the certificate the gateway presented) for one HTTPS GET on
    a new connection with SNI ``sni``."""
    # (a bare client context: loading the system's CA store on every call costs more
    # than the handshake, and the test reads which certificate came rather than trusts it)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client is not None:
        (tmp / "cc.pem").write_bytes(client.cert_pem)
        (tmp / "ck.pem").write_bytes(client.key_pem)
        ctx.load_cert_chain(tmp / "cc.pem", tmp / "ck.pem")
    raw = ssl.create_connection(("127.0.0.1", port), timeout=5)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.sock = ctx.wrap_socket(raw, server_hostname=sni)  # (SNI: the name asked for)
    try:
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        conn.request("GET", "/__echo", headers={"Host": "web.default"})
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    finally:
        conn.close()
    return status, x509.load_der_x509_certificate(der).serial_number


async def test_sni_rotation_and_client_ca_through_a_real_gateway(
    tmp_path: Path, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> None:
    etcd = start_test_etcd(tmp_path / "etcd")
    registry = EtcdRegistry(etcd.endpoint)
    web = backend_factory("web")
    app_port = int(web.url.rstrip("/").rsplit(":", 1)[1])
    a, b = issue("a.example", ("a.example",)), issue("b.example", ("b.example",))
    ca = issue("clients CA", is_ca=True)
    https, mutual = free_port(), free_port()
    await seed(
        registry,
        {
            "services/default/web": {"port": app_port},
            "endpoints/default/web/w1": {"address": "127.0.0.1"},
            "secrets/edge/a": _secret(a),
            "secrets/edge/b": _secret(b),
            "secrets/edge/clients": json.loads(ca.ca_value()),
            "listeners/https": {
                "port": https,
                "nodes": ["edge"],
                "tls": {"certificates": ["edge/a", "edge/b"]},
            },
            "listeners/mutual": {
                "port": mutual,
                "nodes": ["edge"],
                "tls": {"certificates": ["edge/a"], "client_ca": "edge/clients"},
            },
        },
    )
    xds_port = free_port()
    app = MeshApp(registry, MeshConfig(xds=f"127.0.0.1:{xds_port}", metrics=None))
    await app.start()
    try:
        gw = await asyncio.to_thread(
            envoy_factory, bootstrap("edge-1", "edge", xds_port=xds_port, admin_port=0), name="gw"
        )
        sa = await eventually(
            lambda: _get(https, "a.example", tmp_path),
            "HTTPS through the gateway",
            WAIT,
            until=lambda r: r[0] == 200,
            ignoring=(OSError,),
            blocking=True,
        )
        assert sa[1] == a.cert.serial_number  # SNI a.example: a's certificate
        sb = await asyncio.to_thread(_get, https, "b.example", tmp_path)
        assert sb == (200, b.cert.serial_number)  # SNI b.example: b's

        # The client-CA listener: no client certificate, no request.
        await eventually(
            lambda: _get(mutual, "a.example", tmp_path, issue("c", ca=ca)),
            "mutual TLS with a client certificate",
            WAIT,
            until=lambda r: r[0] == 200,
            ignoring=(OSError,),
            blocking=True,
        )
        refused = False
        try:
            got = await asyncio.to_thread(_get, mutual, "a.example", tmp_path)
            print("a client without a certificate got", got)
        except (OSError, http.client.HTTPException):
            refused = True
        assert refused, "a client without a certificate got through"

        _, before = gw.admin_get("/stats?filter=listener_manager.listener_modified")
        # Rotation under load: new connections get a2, no request fails.
        a2 = issue("a.example", ("a.example",))
        load = PacedCallers(
            lambda: _get(https, "a.example", tmp_path)[0],
            callers=4,
            rate=RATE_PER_CALLER,
            errors=(OSError, http.client.HTTPException),
        )
        with load:
            await asyncio.sleep(1.0)
            await registry.put("/mesh/secrets/edge/a", a2.value())
            await eventually(
                lambda: _get(https, "a.example", tmp_path)[1],
                "the new certificate on new connections",
                WAIT,
                until=lambda s: s == a2.cert.serial_number,
                blocking=True,
            )
            await asyncio.sleep(1.0)
        rate, results, failed = load.rate, load.results, load.failed
        assert rate >= 50, f"{len(results)} requests, {rate:.1f}/s"
        assert failed == [], f"{len(failed)} of {len(results)} failed: {failed[:10]}"
        _, after = gw.admin_get("/stats?filter=listener_manager.listener_modified")
        assert before == after, (before, after)  # the rotation changed no listener
    finally:
        await app.stop(grace=0.2)
        await registry.close()
        etcd.stop()
