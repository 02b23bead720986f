"""Endpoint churn translated incrementally equals a translation from scratch.

Random sequences of endpoint and service changes (endpoints added, modified in every
field the model has, removed; services whose port or subsets change, deleted and created
again; health verdicts and DNS answers moving), applied as the controller does: registry
events folded into the state (one or several per update, updates merged into one batch),
health and DNS as refreshes of the services they concern. After every step the
incremental translator serves the same names, bytes and versions as a new translator
given everything in force, and every assignment is the reference encoding's
(``endpoint.service_assignments``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.translation import translate_afresh
from xds_server.ingest.registry import Changes, Entry, Event, Reset
from xds_server.ingest.state import RegistryState
from xds_server.model import ServiceRef
from xds_server.model.view import ChangeSet
from xds_server.resources.types import ENDPOINT
from xds_server.translate import Translator, assignments, eds_wire, translator
from xds_server.translate.endpoint import service_assignments
from xds_server.translate.inputs import Inputs

PREFIX = "/mesh/"
SERVICES = ("web", "api")
IDS = [f"e{i:02d}" for i in range(14)]
NAMES = ("a.svc.test", "b.svc.test")

SERVICE_VALUES: list[dict[str, Any]] = [
    {"port": 8080},
    {"port": 8080, "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}}},
    {"port": 9090, "subsets": {"v1": {"version": "v1"}}},
    {"subsets": {"canary": {"version": "v2", "track": "canary"}}},
    {"port": 8080, "protocol": "grpc", "subsets": {"eu": {"region": "eu"}}},
]

endpoint_values = st.fixed_dictionaries(
    {"address": st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::5", *NAMES, "x y"])},
    optional={
        "port": st.sampled_from([80, 8081, 65535]),
        "weight": st.sampled_from([1, 2, 100, 1000]),
        "zone": st.sampled_from(["", "zone-a", "zone-b", "z" * 100]),
        "draining": st.booleans(),
        "labels": st.dictionaries(
            st.sampled_from(["version", "track", "region"]),
            st.sampled_from(["v1", "v2", "canary", "eu"]),
            max_size=3,
        ),
    },
)

Step = tuple[Any, ...]

endpoint_put = st.tuples(
    st.just("endpoint"), st.sampled_from(SERVICES), st.sampled_from(IDS), endpoint_values
)
endpoint_delete = st.tuples(
    st.just("endpoint"), st.sampled_from(SERVICES), st.sampled_from(IDS), st.none()
)
service_put = st.tuples(
    st.just("service"), st.sampled_from(SERVICES), st.sampled_from(SERVICE_VALUES)
)
service_delete = st.tuples(st.just("service"), st.sampled_from(SERVICES), st.none())
health_change = st.tuples(
    st.just("health"),
    st.sampled_from(SERVICES),
    st.dictionaries(st.sampled_from(IDS), st.sampled_from([0, 1, 2, 3]), max_size=6),
)
health_republished = st.tuples(st.just("republish"))
dns_change = st.tuples(
    st.just("dns"),
    st.sampled_from(NAMES),
    st.sampled_from([(), ("10.1.0.1",), ("10.1.0.1", "10.1.0.2"), ("fd00::1",)]),
)
route_put = st.tuples(
    st.just("route"),
    st.sampled_from(
        [
            {"listener": "public", "destinations": [{"service": "web", "subset": "v1"}]},
            {"listener": "public", "destinations": [{"service": "api"}]},
            {"listener": "public", "destinations": [{"service": "web", "subset": "canary"}]},
        ]
    ),
)
route_delete = st.tuples(st.just("route"), st.none())
registry_step = endpoint_put | endpoint_delete | service_put | service_delete | route_put
# Several registry events translated as one batch (the controller's burst): each folded as
# an update of its own and their ChangeSets merged, or all of them in one watch response.
burst = st.tuples(
    st.just("burst"),
    st.lists(endpoint_put | endpoint_delete | registry_step, min_size=2, max_size=8),
    st.booleans(),
)
# The registry listed again (after a compaction: a Reset), with a few keys changed by it,
# then a few events, all in one batch.
relist = st.tuples(
    st.just("relist"),
    st.lists(endpoint_put | endpoint_delete, max_size=3),
    st.lists(endpoint_put | endpoint_delete, max_size=3),
)

# Each history starts from services that hold several endpoints: single changes to them are
# then moved piece by piece (a change to most of a service's endpoints rebuilds it whole).
seed = st.tuples(
    st.just("burst"),
    st.tuples(
        service_put.map(lambda s: ("service", "web", s[2])),
        service_put.map(lambda s: ("service", "api", s[2])),
    ).flatmap(
        lambda services: st.lists(endpoint_put, min_size=8, max_size=28).map(
            lambda eps: [*services, *eps]
        )
    ),
    st.booleans(),
)

steps = st.lists(
    st.one_of(
        endpoint_put,
        endpoint_put,
        endpoint_put,
        endpoint_delete,
        service_put,
        service_delete,
        route_put,
        route_delete,
        health_change,
        health_republished,
        dns_change,
        burst,
        relist,
    ),
    min_size=1,
    max_size=40,
)


@dataclass
class World:
    """The registry state, the inputs, and a translator fed incrementally."""

    state: RegistryState = field(default_factory=lambda: RegistryState(PREFIX))
    translator: Translator = field(default_factory=Translator)
    health: dict[ServiceRef, dict[str, int]] = field(default_factory=dict)
    dns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    raw: dict[str, bytes] = field(default_factory=dict)
    revision: int = 0

    def __post_init__(self) -> None:
        # One resolver for the whole history, as the controller's (its answers move).
        self.resolve = lambda name: self.dns.get(name, ())
        self.inputs = Inputs(addresses=self.resolve)
        # Every service's cluster in one route configuration: all of them are served.
        self.fold([("listener",)])

    def event(self, step: Step) -> Event:
        """The registry event of a step (and the registry's raw keys after it)."""
        self.revision += 1
        kind = step[0]
        if kind == "listener":
            key, value = f"{PREFIX}listeners/public", {"port": 10000}
        elif kind == "route":
            key, value = f"{PREFIX}routes/default/r1", step[1]
        elif kind == "endpoint":
            _, svc, eid, value = step
            key = f"{PREFIX}endpoints/default/{svc}/{eid}"
        else:
            _, svc, value = step
            key = f"{PREFIX}services/default/{svc}"
        if value is None:
            self.raw.pop(key, None)
            return Event("delete", key, b"", self.revision)
        self.raw[key] = json.dumps(value).encode()
        return Event("put", key, self.raw[key], self.revision)

    def fold(
        self,
        registry_steps: list[Step],
        refresh: set[ServiceRef] | None = None,
        together: bool = False,
        changes: ChangeSet | None = None,
    ) -> None:
        """Fold registry steps and translate them once (after ``changes`` already folded):
        one update each, their ChangeSets merged, or ``together`` in one update.
        ``refresh``: services whose inputs moved (translated whole, as the controller does)."""
        changes = changes or ChangeSet()
        events = [self.event(step) for step in registry_steps]
        if together and events:
            changes.merge(self.state.apply(Changes(self.revision, tuple(events))))
        else:
            for event in events:
                changes.merge(self.state.apply(Changes(event.revision, (event,))))
        if refresh:
            refresh &= self.state.services.keys()
            ids = {r: i for r, i in changes.endpoint_ids.items() if r not in refresh}
            changes = replace(changes, endpoints=changes.endpoints | refresh, endpoint_ids=ids)
        self.translator.update(self.state, changes, self.inputs)

    def relist(self, listed: list[Step], after: list[Step]) -> None:
        """A Reset of the registry with ``listed`` applied to it, then ``after``, one batch."""
        for step in listed:
            self.event(step)
        self.revision += 1
        entries = tuple(Entry(k, v, self.revision) for k, v in sorted(self.raw.items()))
        changes = self.state.apply(Reset(self.revision, entries))
        self.fold(after, changes=changes)

    def step(self, step: Step) -> None:
        kind = step[0]
        if kind in ("endpoint", "service", "route"):
            self.fold([step])
        elif kind == "burst":
            self.fold(list(step[1]), together=step[2])
        elif kind == "relist":
            self.relist(list(step[1]), list(step[2]))
        elif kind == "health":
            ref = ServiceRef("default", step[1])
            self.health = {**self.health, ref: dict(step[2])}
            self.inputs = replace(self.inputs, health=self.health)
            self.fold([], {ref})
        elif kind == "republish":
            # HDS publishes every service's verdicts as new mappings, most of them equal.
            self.health = {ref: dict(h) for ref, h in self.health.items()}
            self.inputs = replace(self.inputs, health=self.health)
        elif kind == "dns":
            _, name, addresses = step
            self.dns[name] = addresses
            users = {r for r, names in self.translator.dns_names.items() if name in names}
            self.fold([], users)

    def check(self) -> None:
        state = self.state
        fresh = translate_afresh(state, self.inputs)
        for type_url, served in self.translator.served.items():
            expected = fresh.served[type_url]
            assert served.keys() == expected.keys(), type_url
            for name, res in served.items():
                assert (res.body, res.version) == (expected[name].body, expected[name].version)
        assert self.translator.dns_names == fresh.dns_names
        for ref, svc in state.services.items():
            eps = state.endpoints.get(ref, {})
            for res in service_assignments(svc, eps, self.resolve, self.health.get(ref)):
                assert self.translator.served[ENDPOINT][res.name].body == res.body


@pytest.fixture(params=[2, assignments.INCREMENTAL_MIN], ids=["kept-from-2", "kept-from-default"])
def kept_from(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Services keep their assignments piece by piece from this many endpoints (small, so
    that short histories exercise it; and the default, so the whole path is also run)."""
    monkeypatch.setattr(translator, "INCREMENTAL_MIN", request.param)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(start=seed, history=steps)
def test_endpoint_churn_translates_as_from_scratch(
    kept_from: None, start: Step, history: list[Step]
) -> None:
    world = World()
    for step in [start, *history]:
        world.step(step)
        world.check()


def test_an_endpoint_update_in_a_big_service_encodes_that_endpoint_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: every update planned and encoded all 2,000 endpoints of the service."""
    world = World()
    world.fold([("service", "big", {"port": 8080, "subsets": {"v1": {"version": "v1"}}})])
    steps = [
        ("endpoint", "big", f"e{i}", {"address": f"10.0.{i >> 8}.{i & 255}", "labels": {}})
        for i in range(2000)
    ]
    world.fold(steps)  # (one batch: the assignments are built once)
    encoded: list[tuple[Any, ...]] = []
    for name in ("encode_lb_endpoint", "lb_endpoint"):
        real = getattr(eds_wire, name)

        def counted(*row: Any, _real: Any = real) -> bytes:
            encoded.append(row)
            return bytes(_real(*row))

        monkeypatch.setattr(eds_wire, name, counted)
    world.fold([("endpoint", "big", "e7", {"address": "10.9.9.9", "weight": 5})])
    assert encoded == [("10.9.9.9", 8080, 0, 5)]
    cla = world.translator.served[ENDPOINT]["big.default"]
    assert b"\x12\x0810.9.9.9\x18" in cla.body and b"\x12\x0810.0.0.7\x18" not in cla.body
    world.check()
