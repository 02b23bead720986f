"""A hand-driven pipeline for stream tests: registry state -> translator -> cache, with no
server, plus ``BASE``, the small registry most stream, metrics and client tests serve."""

from __future__ import annotations

import json
from typing import Any

from xds_server.cache import ConfigCache
from xds_server.ingest.registry import Changes, Entry, Event, Reset
from xds_server.ingest.state import RegistryState
from xds_server.server.stream import Response, SotwStream
from xds_server.translate import Translator

P = "/mesh/"


class Mesh:
    """Registry state -> translator -> cache, driven by hand."""

    def __init__(self, content: dict[str, dict[str, Any]]) -> None:
        self.state = RegistryState(P)
        self.cache = ConfigCache()
        self.translator = Translator(served=self.cache.served())
        self.rev = 1
        entries = tuple(Entry(P + k, json.dumps(v).encode(), 1) for k, v in content.items())
        self._apply(Reset(1, entries))

    def _apply(self, update: Reset | Changes) -> None:
        changes = self.state.apply(update)
        delta = self.translator.update(self.state, changes)
        self.cache.apply(delta, self.state.revision)

    def change(self, puts: dict[str, dict[str, Any]], deletes: tuple[str, ...] = ()) -> None:
        self.rev += 1
        events = [Event("put", P + k, json.dumps(v).encode(), self.rev) for k, v in puts.items()]
        events += [Event("delete", P + k, b"", self.rev) for k in deletes]
        self._apply(Changes(self.rev, tuple(events)))

    def stream(self) -> tuple[SotwStream, Any]:
        s = SotwStream(self.cache, clock=lambda: 1000.0)
        w = self.cache.watch()
        return s, w

    def push(self, s: SotwStream, w: Any) -> list[Response]:
        pending, scopes = w.take()
        return s.on_change(pending, scopes)


BASE: dict[str, dict[str, Any]] = {
    "services/default/web": {"port": 8080, "subsets": {"v1": {"version": "v1"}}},
    "services/default/api": {"port": 9090},
    "endpoints/default/web/a": {"address": "10.0.0.1", "labels": {"version": "v1"}},
    "endpoints/default/api/a": {"address": "10.0.0.2"},
    "listeners/public": {"port": 10000, "nodes": ["gateway"]},
    "listeners/inner": {"port": 10001},
    "routes/default/r": {
        "listener": "public",
        "destinations": [{"service": "web", "subset": "v1"}],
    },
}
