"""Workload certificates as SDS Secrets: the certificate book (lazy issue, half-life
rotation, bounded forgetting), translation into ``default``/``ROOTCA``, the per-cluster
index keys the streams map names to, and redaction in dumps.

The attack tests do what a proxy of one node cluster would do to get another's private
key: ask for it by every name it could write, over SotW and Delta, and check that no
response carries a key that is not its own."""

from __future__ import annotations

import datetime
import json

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from tests.support.stream_mesh import BASE, Mesh
from xds_server.identity.ca import MeshCA, generate_root
from xds_server.identity.issuer import CertificateIssuer
from xds_server.identity.rotation import CertificateBook
from xds_server.model.identity import gateway, sidecar
from xds_server.model.names import ServiceRef
from xds_server.model.view import ChangeSet
from xds_server.resources import SECRET
from xds_server.resources.secrets import (
    REDACTED,
    cluster_secret_key,
    dump_any,
    secret_key,
    served_secret_name,
)
from xds_server.server.delta_stream import DeltaStream
from xds_server.translate.inputs import Inputs

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
TTL = datetime.timedelta(hours=1)
WEB = ServiceRef("default", "web")


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA(*generate_root("mesh.local", T0), "mesh.local")


# -- the book -----------------------------------------------------------------------------


def test_issued_lazily_for_connected_identities_only(ca: MeshCA) -> None:
    book = CertificateBook(TTL)
    assert book.due(T0, {WEB}) == []
    book.connected("web.default")
    book.connected("web.default")  # (two proxies, one identity)
    book.connected("edge")
    assert book.due(T0, {WEB}) == [gateway("edge"), sidecar(WEB)]
    for identity in book.due(T0, {WEB}):
        book.issued(identity, ca.issue_workload(identity.spiffe_id("mesh.local"), T0, TTL), T0)
    assert book.due(T0, {WEB}) == []
    certs = book.certificates({WEB})
    assert set(certs) == {"web.default", "edge"}
    assert book.next_due({WEB}) == T0 + TTL / 2


def test_reissued_at_half_life(ca: MeshCA) -> None:
    book = CertificateBook(TTL)
    book.connected("edge")
    book.issued(
        gateway("edge"), ca.issue_workload(gateway("edge").spiffe_id("mesh.local"), T0, TTL), T0
    )
    assert book.due(T0 + TTL / 2 - datetime.timedelta(seconds=1), set()) == []
    assert book.due(T0 + TTL / 2, set()) == [gateway("edge")]


def test_identity_follows_registration(ca: MeshCA) -> None:
    book = CertificateBook(TTL)
    book.connected("web.default")
    assert book.due(T0, set()) == [gateway("web.default")]  # not registered: a gateway
    book.issued(
        gateway("web.default"),
        ca.issue_workload(gateway("web.default").spiffe_id("mesh.local"), T0, TTL),
        T0,
    )
    assert book.due(T0, {WEB}) == [sidecar(WEB)]  # registered: its sidecar identity


def test_idle_certificates_are_forgotten_beyond_the_bound(ca: MeshCA) -> None:
    book = CertificateBook(TTL, keep_idle=2)
    for i in range(5):
        cluster = f"gw{i}"
        book.connected(cluster)
        cert = ca.issue_workload(gateway(cluster).spiffe_id("mesh.local"), T0, TTL)
        book.issued(gateway(cluster), cert, T0)
        book.disconnected(cluster)
    assert book.certificates(set()) == {}  # none connected: none served
    assert set(book.held()) == {gateway("gw3"), gateway("gw4")}  # the last two kept
    book.connected("gw4")
    assert book.due(T0, set()) == []  # a reconnect reuses its certificate
    assert book.next_due(set()) == T0 + TTL / 2


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked",
    ["default", "ROOTCA", "default~b", "~default~b", "default~", "x~y", "", "*", "b"],
)
def test_secret_names_round_trip_and_stay_in_their_cluster(asked: str) -> None:
    key = secret_key(asked, "a")
    assert served_secret_name(key, "a") == asked
    if asked != "ROOTCA":
        assert (
            key == cluster_secret_key("a") or not key.startswith("default~") or key.endswith("~a")
        )
        assert key != cluster_secret_key("b")


# -- through translation and the streams ----------------------------------------------------


def _mesh_with_secrets(ca: MeshCA) -> tuple[Mesh, dict[str, bytes]]:
    mesh = Mesh(BASE)
    certs = {}
    keys = {}
    for cluster in ("a", "b", "web.default"):
        cert = ca.issue_workload(gateway(cluster).spiffe_id("mesh.local"), T0, TTL)
        certs[cluster] = cert
        keys[cluster] = cert.key_pem
    _secrets(mesh, certs, ca.bundle_pem)
    return mesh, keys


def _secrets(mesh: Mesh, certs: dict[str, object], bundle: bytes) -> None:
    inputs = Inputs(certificates=certs, trust_bundle=bundle)  # type: ignore[arg-type]
    delta = mesh.translator.update(mesh.state, ChangeSet(), inputs)
    mesh.cache.apply(delta, mesh.state.revision)


def _sent_keys(resources: tuple[object, ...]) -> list[bytes]:
    out = []
    for r in resources:
        secret = secret_pb2.Secret.FromString(r.body)  # type: ignore[attr-defined]
        if secret.HasField("tls_certificate"):
            out.append(secret.tls_certificate.private_key.inline_bytes)
    return out


def test_translation_names_every_default_default(ca: MeshCA) -> None:
    mesh, _ = _mesh_with_secrets(ca)
    index = mesh.cache.resources(SECRET)
    assert set(index) == {"ROOTCA", "default~a", "default~b", "default~web.default"}
    assert {r.name for r in index.values()} == {"default", "ROOTCA"}
    for res in index.values():
        assert secret_pb2.Secret.FromString(res.body).name == res.name
    _secrets(mesh, {}, ca.bundle_pem)  # every proxy gone: only the bundle left
    assert set(mesh.cache.resources(SECRET)) == {"ROOTCA"}


ATTACK_NAMES = ("default", "ROOTCA", "default~b", "~default~b", "default~b~a", "b", "*", "")


def test_sotw_proxy_gets_its_own_key_only(ca: MeshCA) -> None:
    mesh, keys = _mesh_with_secrets(ca)
    s, w = mesh.stream()
    req = discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=list(ATTACK_NAMES))
    req.node.id, req.node.cluster = "n1", "a"
    (resp,) = s.on_request(req)
    assert sorted(r.name for r in resp.resources) == ["ROOTCA", "default"]
    assert _sent_keys(resp.resources) == [keys["a"]]
    # a rotation of b's wakes nobody on a; a rotation of a's is pushed to a
    s.on_request(
        discovery_pb2.DiscoveryRequest(
            type_url=SECRET,
            response_nonce=resp.nonce,
            version_info=resp.version,
            resource_names=list(ATTACK_NAMES),
        )
    )
    w.take()
    new_b = ca.issue_workload(gateway("b").spiffe_id("mesh.local"), T0, TTL)
    new_a = ca.issue_workload(gateway("a").spiffe_id("mesh.local"), T0, TTL)
    certs: dict[str, object] = {"b": new_b}
    _secrets(mesh, certs, ca.bundle_pem)
    pushed = mesh.push(s, w)
    assert all(_sent_keys(r.resources) in ([], [new_a.key_pem]) for r in pushed)
    _secrets(mesh, {"a": new_a, "b": new_b}, ca.bundle_pem)
    pushed = mesh.push(s, w)
    assert [k for r in pushed for k in _sent_keys(r.resources)] == [new_a.key_pem]


def test_delta_proxy_gets_its_own_key_only(ca: MeshCA) -> None:
    mesh, keys = _mesh_with_secrets(ca)
    s = DeltaStream(mesh.cache, clock=lambda: 1.0)
    req = discovery_pb2.DeltaDiscoveryRequest(
        type_url=SECRET,
        resource_names_subscribe=list(ATTACK_NAMES),
        initial_resource_versions={"default~b": "x", "~default~b": "y"},
    )
    req.node.id, req.node.cluster = "n1", "a"
    (resp,) = s.on_request(req)
    assert sorted(r.name for r in resp.resources) == ["ROOTCA", "default"]
    assert _sent_keys(resp.resources) == [keys["a"]]
    # names that are nobody's are removed by the name they were asked by, never a key
    assert set(resp.removed) <= set(ATTACK_NAMES) | {"default~b", "~default~b"}
    assert "default" not in resp.removed and "ROOTCA" not in resp.removed
    # unsubscribing "default" and subscribing it again brings back a's key, not b's
    s.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET, response_nonce=resp.nonce))
    unsubscribe = discovery_pb2.DeltaDiscoveryRequest(
        type_url=SECRET, resource_names_unsubscribe=["default"]
    )
    assert s.on_request(unsubscribe) == []
    (again,) = s.on_request(
        discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET, resource_names_subscribe=["default"])
    )
    assert _sent_keys(again.resources) == [keys["a"]]


def test_delta_removal_says_default(ca: MeshCA) -> None:
    mesh, _ = _mesh_with_secrets(ca)
    s = DeltaStream(mesh.cache, clock=lambda: 1.0)
    w = mesh.cache.watch()
    req = discovery_pb2.DeltaDiscoveryRequest(
        type_url=SECRET, resource_names_subscribe=["default", "ROOTCA"]
    )
    req.node.id, req.node.cluster = "n1", "a"
    (resp,) = s.on_request(req)
    mesh.cache.set_interest(w, s.interest())
    s.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET, response_nonce=resp.nonce))
    w.take()
    _secrets(mesh, {}, ca.bundle_pem)  # a's proxies all gone (this one, say, lingering)
    pending, scopes = w.take()
    (out,) = s.on_change(pending, scopes)
    assert out.removed == ("default",)


# -- redaction -------------------------------------------------------------------------------


def test_dumps_and_reprs_never_show_a_key(ca: MeshCA) -> None:
    mesh, keys = _mesh_with_secrets(ca)
    res = mesh.cache.resources(SECRET)["default~a"]
    dumped = json_format.MessageToDict(dump_any(res))
    text = json.dumps(dumped)
    assert "PRIVATE KEY" not in text
    assert REDACTED in text
    assert (
        "CERTIFICATE"
        in secret_pb2.Secret.FromString(
            dump_any(res).value
        ).tls_certificate.certificate_chain.inline_bytes.decode()
    )
    assert "PRIVATE KEY" not in repr(res)
    assert "PRIVATE KEY" not in repr(mesh.cache.resources(SECRET))
    assert keys["a"] not in dump_any(res).value


# -- the issuer's step ------------------------------------------------------------------------


def test_issuer_publishes_on_change_only_and_rotates_at_half_life(ca: MeshCA) -> None:
    now = [T0]
    published: list[dict[str, object]] = []
    issuer = CertificateIssuer(
        TTL,
        lambda: {WEB},
        lambda certs, bundle: published.append(dict(certs)),
        clock=lambda: now[0],
    )
    assert not issuer.step()  # no CA yet: nothing issued, nothing published
    issuer.ca = ca
    issuer.connected("web.default")
    assert issuer.step() and set(published[-1]) == {"web.default"}
    first = published[-1]["web.default"]
    assert not issuer.step()  # nothing changed: nothing published again
    issuer.connected("web.default")  # a second proxy of the same identity
    assert not issuer.step()
    now[0] = T0 + TTL / 2
    assert issuer.step() and issuer.rotations == 1
    assert published[-1]["web.default"] is not first
    issuer.disconnected("web.default")
    issuer.disconnected("web.default")
    assert issuer.step() and published[-1] == {}
    assert issuer._timeout() == issuer.recheck_s  # (nothing in use: no busy wake-ups)
