"""Golden-file helpers: registry content in, Envoy resources out.

``testdata/in/<case>.yaml`` is a YAML mapping from full registry key to value. A
mapping value is the registry JSON object; a string value is stored as raw bytes
(so a case can also hold bad entries). ``testdata/out/<case>.<kind>.yaml`` is the
list of resources of one type, each as ``MessageToDict`` with proto field names,
sorted by resource name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from tests.support.paths import TESTDATA
from xds_server.ingest.registry import Entry, Reset
from xds_server.ingest.state import RegistryState
from xds_server.model.view import ChangeSet
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource
from xds_server.translate import Translator

PREFIX = "/mesh/"
KINDS: dict[str, str] = {
    "clusters": CLUSTER,
    "endpoints": ENDPOINT,
    "listeners": LISTENER,
    "routes": ROUTE,
}
MESSAGES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
}


def update_requested() -> bool:
    return os.environ.get("UPDATE_GOLDEN") == "1"


def cases() -> list[str]:
    return sorted(p.stem for p in (TESTDATA / "in").glob("*.yaml"))


def load_entries(case: str) -> tuple[Entry, ...]:
    """The registry content of a case, one Entry per key (mod_revision = position)."""
    data = yaml.safe_load((TESTDATA / "in" / f"{case}.yaml").read_text())
    assert isinstance(data, dict), f"{case}: the input must be a mapping of key -> value"
    entries = []
    for revision, (key, value) in enumerate(data.items(), start=1):
        raw = value.encode() if isinstance(value, str) else json.dumps(value).encode()
        entries.append(Entry(str(key), raw, revision))
    return tuple(entries)


def translate(entries: tuple[Entry, ...]) -> tuple[RegistryState, Translator, ChangeSet]:
    """Apply one Reset of ``entries`` and translate everything it put in force."""
    state = RegistryState(PREFIX)
    changes = state.apply(Reset(len(entries) + 1, entries))
    translator = Translator()
    translator.update(state, changes)
    return state, translator, changes


def unpack(resource: Resource) -> Message:
    msg = MESSAGES[resource.type_url]()
    assert resource.any.Unpack(msg), f"{resource.name}: not a {resource.type_url}"
    return msg


def to_dict(msg: Message) -> dict[str, Any]:
    # The JSON round trip turns the OrderedDicts of unpacked Anys into plain dicts.
    data = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    plain: dict[str, Any] = json.loads(json.dumps(data))
    return plain


def messages(translator: Translator, kind: str) -> list[Message]:
    """The translated resources of one kind, sorted by name."""
    index = translator.served[KINDS[kind]]
    return [unpack(index[name]) for name in sorted(index)]


def rendered(translator: Translator) -> dict[str, list[dict[str, Any]]]:
    """Every kind's resources as golden-file data."""
    return {kind: [to_dict(m) for m in messages(translator, kind)] for kind in KINDS}


def out_path(case: str, kind: str) -> Path:
    return TESTDATA / "out" / f"{case}.{kind}.yaml"


def dump(data: list[dict[str, Any]]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def read_expected(case: str, kind: str) -> list[dict[str, Any]]:
    loaded = yaml.safe_load(out_path(case, kind).read_text())
    return [] if loaded is None else list(loaded)
