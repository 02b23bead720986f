"""The admin API refuses, at write time, a route whose ``jwt.jwks.secret`` or
``api_keys.secret`` names a secret that is not in force or of the wrong shape, naming the
field (a real etcd and meshd, a real gRPC client). Before, such a route was written and then
kept out of force by the registry fold, which only reported it afterwards."""

from __future__ import annotations

import grpc

from tests.support.fixtures_admin import AdminMesh, entry, rpc_error, seed
from xds_server.admin.api import admin_pb2 as pb

JWKS = {"keys": [{"kty": "RSA", "n": "sXch", "e": "AQAB", "kid": "k1"}]}


def _route(name: str, **edge: object) -> pb.Entry:
    spec = {"listener": "public", "destinations": [{"service": "web"}], **edge}
    return entry(pb.KIND_ROUTE, name, spec, ns="shop")


async def test_a_route_naming_a_missing_or_wrong_shaped_secret_is_refused_at_write(
    admin_mesh: AdminMesh,
) -> None:
    stub = admin_mesh.stub
    await seed(
        stub,
        [
            entry(pb.KIND_NAMESPACE, "shop", {}),
            entry(pb.KIND_SERVICE, "web", {"port": 8080}, ns="shop"),
            entry(pb.KIND_LISTENER, "public", {"port": 8000}),
            entry(pb.KIND_SECRET, "keys", {"keys": {"acme": "k1"}}, ns="shop"),
            entry(pb.KIND_SECRET, "jwks", {"jwks": JWKS}, ns="shop"),
        ],
    )
    state = admin_mesh.app.controller.state
    await admin_mesh.wait_for(lambda: len(state.secrets) == 2, "the secrets in force")
    cases = [
        (
            {"api_keys": {"secret": "nope"}},
            "spec.api_keys.secret: secret shop/nope is not in force",
        ),
        (
            {"api_keys": {"secret": "jwks"}},
            'spec.api_keys.secret: secret shop/jwks is a jwks secret, not {"keys": ...}',
        ),
        (
            {"jwt": {"issuer": "https://i.example", "jwks": {"secret": "gone"}}},
            "spec.jwt.jwks.secret: secret shop/gone is not in force",
        ),
        (
            {"jwt": {"issuer": "https://i.example", "jwks": {"secret": "keys"}}},
            'spec.jwt.jwks.secret: secret shop/keys is a keys secret, not {"jwks": ...}',
        ),
    ]
    for edge, message in cases:
        code, msg = await rpc_error(
            stub.CreateEntry(pb.CreateEntryRequest(entry=_route("r", **edge)))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
        assert msg == f"routes/shop/r: {message}"
        assert await admin_mesh.registry.get(admin_mesh.prefix + "routes/shop/r") is None
    # A secret written in the same batch counts; the secrets in force are accepted.
    await stub.ApplyEntries(
        pb.ApplyEntriesRequest(
            entries=[
                entry(pb.KIND_SECRET, "more", {"keys": {"zeta": "k2"}}, ns="shop"),
                _route("a", api_keys={"secret": "more"}),
                _route("b", jwt={"issuer": "https://i.example", "jwks": {"secret": "jwks"}}),
            ]
        )
    )
    assert await admin_mesh.registry.get(admin_mesh.prefix + "routes/shop/a") is not None
