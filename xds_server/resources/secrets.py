"""Names of SDS Secrets: what a proxy asks for, and where the cache keeps it.

Every proxy asks for its own certificate by the same name, ``default`` (Istio's
convention, and what the listeners and clusters name over SDS), so the name on the wire
says nothing about whose it is. The cache keeps each node cluster's under an index key of
its own, ``default~<node cluster>``, while the resource's name (and the Secret body's
``name``) stays ``default``: the bytes sent are the ones Envoy expects, every stream of a
node cluster shares one resource, and versions stay content hashes.

A stream turns the names a client asks for into index keys with :func:`secret_key`, with
its own node cluster, and back with :func:`served_secret_name` (Delta's
``removed_resources``). A name the client writes can never become another node
cluster's key: every name but the shared :data:`ROOT_SECRET` gets the stream's own
cluster appended, and a name that already holds the separator maps to a key that never
exists. Which node cluster a stream is, is the authenticator's to vouch for.
"""

from __future__ import annotations

from collections.abc import Collection

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.api_key_auth.v3 import api_key_auth_pb2 as key_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import any_pb2

from xds_server.resources.resource import Resource
from xds_server.resources.types import ROUTE, SECRET

CERT_SECRET = "default"
"""The Secret holding a proxy's own certificate chain and private key."""
ROOT_SECRET = "ROOTCA"
"""The Secret holding the mesh's trust bundle (a validation context), shared by all."""

_SEP = "~"


REGISTRY_PREFIX = "secret:"
"""Names of registry secrets (``secret:<ns>/<name>``, shared by every proxy that uses one,
kept under their own name): a proxy gets one only when its scope lists it."""


def secret_key(name: str, node_cluster: str, usable: Collection[str] = ()) -> str:
    """The index key of the Secret ``name`` as a proxy of ``node_cluster`` asks for it.
    ``usable``: the registry secrets that proxy's listeners use (its scope's); any other
    registry secret maps to a key that never exists, so naming one gets nothing."""
    if name == ROOT_SECRET:
        return name
    if name.startswith(REGISTRY_PREFIX):
        return name if name in usable else _SEP + name
    if _SEP in name or not name:
        # (no index key starts with the separator: this one never exists)
        return _SEP + name
    return f"{name}{_SEP}{node_cluster}"


def served_secret_name(key: str, node_cluster: str) -> str:
    """The name a proxy of ``node_cluster`` knows the Secret at index key ``key`` by."""
    if key.startswith(_SEP):
        return key[1:]
    suffix = _SEP + node_cluster
    if key.endswith(suffix):
        return key[: -len(suffix)]
    return key


def cluster_secret_key(node_cluster: str) -> str:
    """Where the cache keeps the ``default`` Secret of ``node_cluster``'s proxies."""
    return f"{CERT_SECRET}{_SEP}{node_cluster}"


REDACTED = "[redacted]"
"""What a private key's inline bytes read as in any dump (the word Envoy's config dump
uses)."""


def redact_secret(secret: secret_pb2.Secret) -> None:
    """Blank the private parts of ``secret`` in place, as Envoy's config dump does: a dump
    shows that a key is there, never the key."""
    if secret.HasField("tls_certificate"):
        cert = secret.tls_certificate
        if cert.HasField("private_key"):
            cert.private_key.inline_string = REDACTED  # (a oneof: clears the bytes)
        if cert.HasField("password"):
            cert.password.inline_string = REDACTED
    if secret.HasField("generic_secret"):
        secret.generic_secret.secret.inline_string = REDACTED


_API_KEYS_URL = "type.googleapis.com/" + key_pb2.ApiKeyAuthPerRoute.DESCRIPTOR.full_name


def redact_api_keys(config: route_pb2.RouteConfiguration) -> None:
    """Blank the API keys of routes' ``api_key_auth`` configs in place: Envoy reads them
    from the route configuration, and a dump shows which clients have one, never a key."""
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            packed = route.typed_per_filter_config
            for name in [n for n, a in packed.items() if a.type_url == _API_KEYS_URL]:
                keys = key_pb2.ApiKeyAuthPerRoute()
                packed[name].Unpack(keys)
                for credential in keys.credentials:
                    credential.key = REDACTED
                packed[name].Pack(keys)


def dump_any(res: Resource) -> any_pb2.Any:
    """``res`` as a protobuf Any for a dump (CSDS, the admin API's proxy config): a
    Secret's private key and routes' API keys redacted, anything else as it is."""
    if res.type_url == ROUTE and _API_KEYS_URL.encode() in res.body:
        config = route_pb2.RouteConfiguration.FromString(res.body)
        redact_api_keys(config)
        packed = any_pb2.Any()
        packed.Pack(config)
        return packed
    if res.type_url != SECRET:
        return res.any
    secret = secret_pb2.Secret.FromString(res.body)
    redact_secret(secret)
    packed = any_pb2.Any()
    packed.Pack(secret)
    return packed
