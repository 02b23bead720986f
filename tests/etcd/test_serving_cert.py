"""meshd's serving certificate (xDS and admin over TLS) is issued again at half-life.

With the test-only certificate lifetime of 4 s, a TLS client that connects 2 s later is
handed a new certificate on the xDS port and on the admin port (a new serial, still
verified against the trust bundle for the name it dialled), and a gRPC channel opened
before keeps working. The clock of the unit part is given.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from tests.support.wait import eventually
from xds_server.app import MeshApp, MeshConfig
from xds_server.identity.ca import MeshCA, generate_root
from xds_server.identity.serving import ServingCertificate
from xds_server.resources import CLUSTER

TTL_S = 4.0


def test_renewed_once_half_its_lifetime_is_past() -> None:
    now = [datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)]
    ca = MeshCA(*generate_root("mesh.local", now[0]), "mesh.local")
    serving = ServingCertificate(
        ca, ["meshd"], ["127.0.0.1"], lifetime=datetime.timedelta(hours=2), clock=lambda: now[0]
    )
    first, fetch = serving.chain_pem, serving.fetcher()
    now[0] += datetime.timedelta(minutes=59)
    assert fetch() is None and serving.chain_pem == first
    now[0] += datetime.timedelta(minutes=1)
    assert fetch() is not None
    assert serving.chain_pem != first and serving.renewals == 1
    assert fetch() is None  # (the next renewal is an hour later again)
    assert ca.verifies(serving.chain_pem)


@pytest.fixture
async def tls_app(
    etcd_shared: EmbeddedEtcd, etcd_prefix: str, tmp_path: Path
) -> AsyncIterator[MeshApp]:
    registry = EtcdRegistry(etcd_shared.endpoint, prefix=etcd_prefix)
    app = MeshApp(
        registry,
        MeshConfig(
            xds="127.0.0.1:0",
            metrics=None,
            data_dir=str(tmp_path / "meshd"),
            admin="127.0.0.1:0",
            xds_tls=True,
            test_only_cert_ttl_s=TTL_S,
        ),
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0.2)
        await registry.close()


def _serial(port: int, bundle: Path) -> int:
    """The serial of the certificate meshd presents to a client that verifies it."""
    context = ssl.create_default_context(cafile=str(bundle))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


async def _clusters(ads: ads_pb2_grpc.AggregatedDiscoveryServiceStub) -> None:
    """One CDS response on a new ADS stream of ``ads``'s channel."""
    request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    request.node.id, request.node.cluster = "probe-1", "probe"
    call = ads.StreamAggregatedResources(timeout=5)
    await call.write(request)
    response = await call.read()
    assert isinstance(response, discovery_pb2.DiscoveryResponse), response
    assert response.type_url == CLUSTER
    call.cancel()


async def test_new_connections_get_a_renewed_certificate(tls_app: MeshApp, tmp_path: Path) -> None:
    bundle = tmp_path / "meshd" / "ca.pem"
    first = await asyncio.to_thread(_serial, tls_app.xds_port, bundle)
    credentials = grpc.ssl_channel_credentials(bundle.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{tls_app.xds_port}", credentials) as channel:
        ads = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        await _clusters(ads)
        renewed = await eventually(
            lambda: _serial(tls_app.xds_port, bundle),
            "a new serving certificate",
            TTL_S * 3,
            until=lambda serial: serial != first,
            blocking=True,
            interval=0.5,
        )
        # The admin port (its own credentials) is told of the renewal too.
        await eventually(
            lambda: _serial(tls_app.admin_port, bundle),
            "the new serving certificate on the admin port",
            TTL_S * 3,
            until=lambda serial: serial != first,
            blocking=True,
            interval=0.5,
        )
        assert tls_app.serving is not None and tls_app.serving.renewals >= 1
        # The channel opened on the old certificate still answers.
        await _clusters(ads)
    assert renewed != first
