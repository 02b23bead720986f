"""Registry secrets and listener TLS: validation, warning status, the fold's references,
SDS Secrets and the scope that lets only the proxies using one fetch it, redacted reads."""

from __future__ import annotations

import json

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from tests.support.tls_secrets import issue
from xds_server.admin.api import admin_pb2 as pb
from xds_server.admin.entries import entry_of
from xds_server.errors import ValidationError
from xds_server.ingest.registry import Changes, Entry, Event
from xds_server.ingest.state import RegistryState
from xds_server.model.fields import Obj
from xds_server.model.secret import parse_secret
from xds_server.resources.secrets import ROOT_SECRET, secret_key
from xds_server.resources.types import LISTENER, SECRET
from xds_server.translate.scoping import mesh_scopes
from xds_server.translate.translator import Translator

P = "/mesh/"
A = issue("a.example", ("a.example",))
B = issue("b.example", ("b.example",))


def _obj(value: bytes) -> Obj:
    return Obj(json.loads(value))


def test_a_valid_certificate_shows_only_subject_sans_and_expiry() -> None:
    s = parse_secret("edge", "a", _obj(A.value()))
    assert s.kind == "tls" and s.info is not None
    summary = json.dumps(s.summary())
    assert "a.example" in summary and "not_after" in summary
    assert "PRIVATE KEY" not in summary and "BEGIN" not in summary
    assert "PRIVATE" not in repr(s)


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        (issue("x", days=-1, not_before_days=-2).value(), "cert", "expired"),
        (
            json.dumps({"cert": A.cert_pem.decode(), "key": B.key_pem.decode()}).encode(),
            "key",
            "does not match",
        ),
        (json.dumps({"cert": "nope", "key": A.key_pem.decode()}).encode(), "cert", "PEM"),
        (json.dumps({"cert": A.cert_pem.decode()}).encode(), "key", "required"),
        (json.dumps({"ca": A.cert_pem.decode(), "keys": {"x": "y"}}).encode(), "", "exactly one"),
    ],
)
def test_bad_secrets_are_refused_naming_the_field(value: bytes, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_secret("edge", "a", _obj(value))
    assert err.value.field == field and words in err.value.reason


def test_jwks_and_api_key_shapes_are_accepted_for_route_auth() -> None:
    jwks = parse_secret("edge", "j", Obj({"jwks": {"keys": [{"kty": "RSA", "n": "x"}]}}))
    assert jwks.kind == "jwks" and json.loads(jwks.jwks_json)["keys"][0]["kty"] == "RSA"
    keys = parse_secret("edge", "k", Obj({"keys": {"bob": "k2", "alice": "k1"}}))
    assert keys.api_keys == (("alice", "k1"), ("bob", "k2"))
    assert "k1" not in json.dumps(keys.summary())
    with pytest.raises(ValidationError, match="same key"):
        parse_secret("edge", "k", Obj({"keys": {"a": "k", "b": "k"}}))


class _Reg:
    def __init__(self) -> None:
        self.state = RegistryState(P)
        self.rev = 0

    def put(self, key: str, value: bytes | dict[str, object]) -> None:
        self.rev += 1
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.changes = self.state.apply(Changes(self.rev, (Event("put", P + key, raw, self.rev),)))


GW = {"port": 8443, "nodes": ["edge-gw"], "tls": {"certificates": ["edge/a", "edge/b"]}}


def test_a_listener_naming_a_missing_secret_is_rejected_until_it_exists() -> None:
    reg = _Reg()
    reg.put("listeners/gw", GW)
    problem = reg.state.problems[P + "listeners/gw"]
    assert problem.field == "tls.certificates[0]" and "edge/a" in problem.reason
    assert "gw" not in reg.state.listeners
    reg.put("secrets/edge/a", A.value())
    reg.put("secrets/edge/b", B.value())
    assert "gw" in reg.state.listeners and P + "listeners/gw" not in reg.state.problems


def test_a_ca_secret_cannot_serve_as_a_certificate() -> None:
    reg = _Reg()
    reg.put("secrets/edge/a", A.ca_value())
    reg.put("secrets/edge/b", B.value())
    reg.put("listeners/gw", GW)
    assert "is a ca secret" in reg.state.problems[P + "listeners/gw"].reason


def test_a_certificate_expiring_within_7_days_is_in_force_with_a_warning() -> None:
    reg = _Reg()
    reg.put("secrets/edge/a", issue("a", ("a",), days=3).value())
    problem = reg.state.problems[P + "secrets/edge/a"]
    assert problem.warning and problem.field == "cert" and "7 days" in problem.reason
    assert "edge/a" in reg.state.secrets
    reg.put("secrets/edge/a", A.value())  # renewed: the warning goes
    assert P + "secrets/edge/a" not in reg.state.problems


def test_rotation_changes_only_the_sds_secret_and_only_users_may_fetch_it() -> None:
    reg = _Reg()
    reg.put("secrets/edge/a", A.value())
    reg.put("secrets/edge/b", B.value())
    reg.put("secrets/other/c", B.value())
    reg.put("listeners/gw", GW)
    tr = Translator()
    tr.update(reg.state, _all(reg))
    listener = listener_pb2.Listener.FromString(tr.served[LISTENER]["gw"].body)
    sock = listener.filter_chains[0].transport_socket
    ctx = tls_pb2.DownstreamTlsContext()
    sock.typed_config.Unpack(ctx)
    names = [c.name for c in ctx.common_tls_context.tls_certificate_sds_secret_configs]
    assert names == ["secret:edge/a", "secret:edge/b"]
    assert "secret:edge/a" in tr.served[SECRET]
    # Rotation: a new certificate for edge/a changes its Secret and nothing else.
    a2 = issue("a.example", ("a.example",))
    reg.put("secrets/edge/a", a2.value())
    delta = tr.update(reg.state, reg.changes)
    assert set(delta.changed[SECRET]) == {"secret:edge/a"} and not delta.changed[LISTENER]
    body = secret_pb2.Secret.FromString(tr.served[SECRET]["secret:edge/a"].body)
    assert body.tls_certificate.certificate_chain.inline_bytes == a2.cert_pem
    # Scope: the gateway's node cluster may fetch edge/a; another one, or other/c, never.
    rule = mesh_scopes(reg.state.listeners)
    usable = rule("edge-gw").names[SECRET]
    assert secret_key("secret:edge/a", "edge-gw", usable) == "secret:edge/a"
    assert secret_key("secret:other/c", "edge-gw", usable) not in tr.served[SECRET]
    other = rule("web.default").names.get(SECRET, frozenset())
    assert secret_key("secret:edge/a", "web.default", other) not in tr.served[SECRET]
    assert secret_key(ROOT_SECRET, "x") == ROOT_SECRET


def test_admin_reads_of_a_secret_never_echo_key_material() -> None:
    key = P + "secrets/edge/a"
    entry = entry_of(Entry(key, A.value(), 3, 0, 3), P)
    assert entry.ref.kind == pb.KIND_SECRET and not entry.raw
    text = str(entry)
    assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text
    assert "a.example" in text
    bad = entry_of(Entry(key, b'{"cert": "-----BEGIN PRIVATE KEY-----"}', 4, 0, 4), P)
    assert "PRIVATE KEY" not in str(bad) and not bad.raw


def _all(reg: _Reg):  # type: ignore[no-untyped-def]
    from xds_server.model.view import ChangeSet

    return ChangeSet(
        revision=reg.rev,
        listeners=set(reg.state.listeners),
        secrets=set(reg.state.secrets),
    )
