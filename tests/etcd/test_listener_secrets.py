"""Registry secrets on a gateway's TLS listener, against a real etcd and meshd, from the
outside (admin API over gRPC, meshctl, an ADS client, etcd):

- the admin API refuses, at write time, a listener whose ``tls`` names a secret that does
  not exist or has the wrong shape (an etcd edit of the same is reported by the fold;
  through the API it is refused before anything is written);
- a gateway that fetches its listener's certificate over SDS does get the private key, and
  then every view an operator (or an attacker with admin read access) has is grepped for
  ``PRIVATE KEY``: admin reads and the write's answer, GetProxyConfig, CSDS, ``meshctl
  proxy-config`` and ``meshctl get secrets``, etcd's ``status/`` keys, meshd's log.
"""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.fixtures_admin import AdminMesh, entry, rpc_error, seed
from tests.support.key_views import config_views, status_and_log_views
from tests.support.meshctl import meshctl
from tests.support.tls_secrets import issue
from tests.support.xds_client import RawAds
from xds_server.admin.api import admin_pb2 as pb
from xds_server.resources import SECRET

LEAK = "PRIVATE KEY"
CERT = issue("a.example", ("a.example",))
CA = issue("clients", is_ca=True)
SDS_NAME = "secret:edge/a"


def _listener(port: int, tls: dict[str, object]) -> pb.Entry:
    return entry(
        pb.KIND_LISTENER,
        "secure",
        {"address": "127.0.0.1", "port": port, "nodes": ["gateway"], "tls": tls},
    )


async def test_a_listener_naming_a_missing_or_wrong_shaped_secret_is_refused_at_write(
    admin_mesh: AdminMesh,
) -> None:
    stub = admin_mesh.stub
    await seed(
        stub,
        [
            entry(pb.KIND_SECRET, "a", json.loads(CERT.value()), ns="edge"),
            entry(pb.KIND_SECRET, "clients", json.loads(CA.ca_value()), ns="edge"),
        ],
    )
    state = admin_mesh.app.controller.state
    await admin_mesh.wait_for(lambda: len(state.secrets) == 2, "the secrets in force")
    cases = [
        (
            {"certificates": ["edge/nope"]},
            "spec.tls.certificates[0]: secret 'edge/nope' is not in force",
        ),
        (
            {"certificates": ["edge/a", "edge/clients"]},
            'spec.tls.certificates[1]: secret \'edge/clients\' is a ca secret, not {"cert", "key"}',
        ),
        (
            {"certificates": ["edge/a"], "client_ca": "edge/a"},
            "spec.tls.client_ca: secret 'edge/a' is a tls secret, not {\"ca\"}",
        ),
    ]
    for tls, message in cases:
        code, msg = await rpc_error(
            stub.CreateEntry(pb.CreateEntryRequest(entry=_listener(1, tls)))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
        assert msg == f"listeners/secure: {message}"
    # ApplyEntries judges the batch as a whole: its own secret counts, and dry run or not,
    # a bad reference in it refuses all of it.
    code, msg = await rpc_error(
        stub.ApplyEntries(
            pb.ApplyEntriesRequest(
                entries=[
                    entry(pb.KIND_SECRET, "b", json.loads(CERT.value()), ns="edge"),
                    _listener(2, {"certificates": ["edge/b", "edge/c"]}),
                ]
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "edge/c' is not in force" in msg, msg
    assert await admin_mesh.registry.get(admin_mesh.prefix + "secrets/edge/b") is None
    # A secret of the same batch counts (it is written with the listener, in one txn).
    await stub.ApplyEntries(
        pb.ApplyEntriesRequest(
            entries=[
                entry(pb.KIND_SECRET, "b", json.loads(CERT.value()), ns="edge"),
                _listener(2, {"certificates": ["edge/a", "edge/b"], "client_ca": "edge/clients"}),
            ]
        )
    )
    stored = await admin_mesh.registry.get(admin_mesh.prefix + "listeners/secure")
    assert stored is not None and json.loads(stored.value)["tls"]["client_ca"] == "edge/clients"


async def _fetch_key(channel: grpc.aio.Channel, node: str, *, delta: bool) -> tuple[RawAds, bytes]:
    """A gateway proxy asking for its listener's certificate: the key it was sent."""
    ads = RawAds(channel, delta=delta)
    if delta:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=SECRET, resource_names_subscribe=[SDS_NAME]
        )
    else:
        req = discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=[SDS_NAME])
    req.node.id, req.node.cluster = node, "gateway"
    ads.send(req)
    while True:
        resp = await ads.read(15)
        for res in resp.resources:
            secret = secret_pb2.Secret.FromString((res.resource if delta else res).value)
            if secret.name == SDS_NAME and secret.HasField("tls_certificate"):
                return ads, secret.tls_certificate.private_key.inline_bytes


async def test_no_private_key_in_any_view_of_a_gateway_tls_listener(
    admin_mesh: AdminMesh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dumps: dict[str, str] = {}
    created = await admin_mesh.stub.CreateEntry(
        pb.CreateEntryRequest(entry=entry(pb.KIND_SECRET, "a", json.loads(CERT.value()), ns="edge"))
    )
    dumps["CreateEntry answer"] = str(created)
    state = admin_mesh.app.controller.state
    await admin_mesh.wait_for(lambda: "edge/a" in state.secrets, "the secret in force")
    await seed(admin_mesh.stub, [_listener(18443, {"certificates": ["edge/a"]})])
    await admin_mesh.wait_for(lambda: "secure" in state.listeners, "the TLS listener in force")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{admin_mesh.app.xds_port}") as channel:
        sotw, key = await _fetch_key(channel, "gw-1", delta=False)
        delta, delta_key = await _fetch_key(channel, "gw-2", delta=True)
        # The gateway really holds the key, so a view of what it holds would show it.
        assert LEAK.encode() in key and key == delta_key == CERT.key_pem
        ref = pb.EntryRef(kind=pb.KIND_SECRET, namespace="edge", name="a")
        dumps["GetEntry"] = str(await admin_mesh.stub.GetEntry(pb.GetEntryRequest(ref=ref)))
        listing = await admin_mesh.stub.ListEntries(pb.ListEntriesRequest(kind=pb.KIND_SECRET))
        dumps["ListEntries"] = str(listing)
        assert "a.example" in dumps["ListEntries"]  # (the summary is shown)
        dumps.update(await config_views(admin_mesh, ("gw-1", "gw-2"), SDS_NAME))
        for args in ((), ("-o", "json"), ("-o", "yaml")):
            code, out, err = await meshctl("--admin", admin_mesh.address, "get", "secrets", *args)
            assert code == 0 and "edge" in out, err
            dumps[f"meshctl get secrets {args}"] = out + err
        dumps.update(await status_and_log_views(admin_mesh, caplog))
        # (the certificate itself is public: CSDS shows it, as Envoy's config dump does;
        # neither the key's PEM armour nor any piece of its body may show anywhere)
        body = "".join(CERT.key_pem.decode().splitlines()[1:-1])
        chunks = {body[i : i + 32] for i in range(0, len(body) - 32, 32)}
        public = CERT.cert_pem.decode().replace("\n", "")  # (the key's PEM holds its public
        pieces = [LEAK, *(c for c in chunks if c not in public)]  # half too: that may show)
        assert len(pieces) > 2
        leaked = [where for where, text in dumps.items() if any(p in text for p in pieces)]
        assert leaked == []
        assert SDS_NAME in dumps["GetProxyConfig gw-1"]
        sotw.call.cancel()
        delta.call.cancel()
