"""The controller's pipeline: each input kind goes through one batch, one translation and
one cache apply; inputs pushed by producers reach the cache within the producer's call."""

from __future__ import annotations

import json

from envoy.config.endpoint.v3 import endpoint_pb2

from adapters.memory import MemoryRegistry
from xds_server.cache import ConfigCache
from xds_server.ingest.controller import Controller
from xds_server.ingest.inputs import Certificates, DnsAnswers, HealthVerdicts
from xds_server.ingest.registry import Changes, Entry, Event, Reset
from xds_server.metrics import Metrics
from xds_server.model import ServiceRef
from xds_server.model.view import ChangeSet, RegistryView
from xds_server.resources import ENDPOINT, SECRET

WEB = ServiceRef("default", "web")
UNHEALTHY = 2  # envoy.config.core.v3.HealthStatus


def _entries(address: str = "10.0.0.1") -> tuple[Entry, ...]:
    return (
        Entry("/mesh/services/default/web", json.dumps({"port": 80}).encode(), 2),
        Entry("/mesh/endpoints/default/web/a", json.dumps({"address": address}).encode(), 2),
    )


def _assignment(cache: ConfigCache) -> endpoint_pb2.ClusterLoadAssignment:
    res = cache.get(ENDPOINT, "web.default")
    assert res is not None
    return endpoint_pb2.ClusterLoadAssignment.FromString(res.any.value)


class _Names:
    """An address source whose answers the test sets."""

    def __init__(self) -> None:
        self.table: dict[str, tuple[str, ...]] = {}

    def lookup(self, name: str) -> tuple[str, ...]:
        return self.table.get(name, ())

    def error(self, name: str) -> str | None:
        return None if name in self.table else "does not resolve: test"


def test_a_registry_update_submitted_is_cached_in_the_call() -> None:
    cache = ConfigCache()
    ctl = Controller(MemoryRegistry(), cache, Metrics())
    ctl.submit(Reset(2, _entries()))
    assert cache.get(ENDPOINT, "web.default") is not None
    assert ctl.batches == 1


def test_health_verdicts_are_translated_into_the_assignment() -> None:
    cache = ConfigCache()
    ctl = Controller(MemoryRegistry(), cache, Metrics())
    ctl.submit(Reset(2, _entries()))
    [lb] = _assignment(cache).endpoints[0].lb_endpoints
    assert lb.health_status != UNHEALTHY
    ctl.submit(HealthVerdicts({WEB: {"a": UNHEALTHY}}, {WEB}))
    [lb] = _assignment(cache).endpoints[0].lb_endpoints
    assert lb.health_status == UNHEALTHY
    assert ctl.inputs.health == {WEB: {"a": UNHEALTHY}}
    assert ctl.batches == 1  # (counts registry batches only)


def test_dns_answers_re_translate_the_services_using_the_names() -> None:
    names = _Names()
    cache = ConfigCache()
    ctl = Controller(MemoryRegistry(), cache, Metrics(), dns=names)
    ctl.submit(Reset(2, _entries("web.internal")))
    assert not _assignment(cache).endpoints
    assert "/mesh/endpoints/default/web/a" in ctl.problems()
    names.table["web.internal"] = ("10.9.0.1",)
    ctl.submit(DnsAnswers({"web.internal"}))
    [lb] = _assignment(cache).endpoints[0].lb_endpoints
    assert lb.endpoint.address.socket_address.address == "10.9.0.1"
    assert "/mesh/endpoints/default/web/a" not in ctl.problems()


def test_an_input_an_observer_submits_is_applied_right_after_the_batch() -> None:
    cache = ConfigCache()
    ctl = Controller(MemoryRegistry(), cache, Metrics())
    seen: list[tuple[int, set[ServiceRef]]] = []

    def observe(view: RegistryView, changes: ChangeSet) -> None:
        seen.append((view.revision, changes.endpoints))
        if changes.endpoints:  # (as HDS does when probes move)
            ctl.submit(HealthVerdicts({WEB: {"a": UNHEALTHY}}, {WEB}))

    ctl.observers.append(observe)
    ctl.submit(Reset(2, _entries()))
    assert seen == [(2, {WEB})]
    [lb] = _assignment(cache).endpoints[0].lb_endpoints
    assert lb.health_status == UNHEALTHY
    # Observers follow registry batches only: the health batch called none.
    value = json.dumps({"address": "10.0.0.2"}).encode()
    ctl.submit(Changes(3, (Event("put", "/mesh/endpoints/default/web/a", value, 3),)))
    assert seen[-1] == (3, {WEB})
    assert len(seen) == 2


def test_inputs_before_the_first_listing_serve_nothing_until_it_is_translated() -> None:
    """A proxy may connect (and its certificate, health or DNS inputs arrive) before meshd
    has read the registry: the cache must not become ready with an empty registry, or a
    proxy that reconnects after a restart is sent config it did not hold."""
    cache = ConfigCache()
    ctl = Controller(MemoryRegistry(), cache, Metrics())
    ctl.submit(Certificates({}, b"bundle"))
    ctl.submit(HealthVerdicts({WEB: {"a": UNHEALTHY}}, {WEB}))
    assert not cache.ready.is_set()
    assert cache.generation == 0
    ctl.submit(Reset(2, _entries()))
    assert cache.ready.is_set()
    [lb] = _assignment(cache).endpoints[0].lb_endpoints
    assert lb.health_status == UNHEALTHY  # (what arrived before is translated with it)
    assert cache.get(SECRET, "ROOTCA") is not None
