"""A listing stores and resolves new endpoint keys service by service, in runs
(``RegistryState._store_listed``, ``_resolve_run``), and new services of the common shape
inline: it must end exactly where the same entries folded key by key end, whatever the
values, the key order, the parts and the listings broken off before it."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.ingest import state as state_module
from xds_server.ingest.registry import Changes, Entry, Event, Reset
from xds_server.ingest.state import RegistryState

PREFIX = "/mesh/"

SERVICE_VALUES: list[Any] = [{"port": 80}, {}, {"port": 81, "protocol": "grpc"}, b"{"]
ENDPOINT_VALUES: list[Any] = [
    {"address": "10.0.0.1"},
    {"address": "10.0.0.2", "port": 8080, "labels": {"v": "1"}, "zone": "z"},
    {"address": "2001:db8::1", "weight": 7, "draining": True},
    {"address": "db.example"},  # a DNS name: the strict path
    {"address": "10.0.0.3", "weight": 0},  # out of range
    {"address": 5},
    {"address": "10.0.0.4", "extra": 1},
    b"{",
    b"",
]
SERVICES = ["default/a", "default/b", "other/c", "Bad/d", "default/E"]
IDS = ["e1", "e2", "e3", "e-4", "E5", "x.y", ""]


def encode(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


service_entries = st.dictionaries(
    st.sampled_from(SERVICES).map(lambda s: f"{PREFIX}services/{s}"),
    st.sampled_from(SERVICE_VALUES).map(encode),
    max_size=4,
)
endpoint_entries = st.dictionaries(
    st.tuples(st.sampled_from(SERVICES), st.sampled_from(IDS)).map(
        lambda k: f"{PREFIX}endpoints/{k[0]}/{k[1]}"
    ),
    st.sampled_from(ENDPOINT_VALUES).map(encode),
    max_size=14,
)


def entries_of(values: dict[str, bytes], first_revision: int) -> list[Entry]:
    return [
        Entry(key, value, revision, revision % 3, revision)
        for revision, (key, value) in enumerate(values.items(), start=first_revision)
    ]


def snapshot(state: RegistryState) -> tuple[Any, ...]:
    """Everything in force and every problem, endpoints in their order."""
    return (
        dict(state.services),
        {ref: list(eps.items()) for ref, eps in state.endpoints.items()},
        dict(state.problems),
        state.revision,
    )


def listed(state: RegistryState, entries: list[Entry], cuts: list[int], revision: int) -> None:
    bounds = [0, *sorted(cuts), len(entries)]
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        last = n == len(bounds) - 2
        state.apply(Reset(revision, tuple(entries[lo:hi]), n, more=not last))


@settings(max_examples=300, deadline=None)
@given(
    services=service_entries,
    endpoints=endpoint_entries,
    order=st.sampled_from(["keys", "as drawn", "reversed"]),
    data=st.data(),
)
def test_a_listing_in_runs_is_the_entries_one_by_one(
    services: dict[str, bytes], endpoints: dict[str, bytes], order: str, data: st.DataObject
) -> None:
    values = {**endpoints, **services}
    entries = entries_of(values, 10)
    if order == "keys":
        entries.sort()
    elif order == "reversed":
        entries.reverse()
    revision = 10 + len(entries)
    one_by_one = RegistryState(PREFIX)
    one_by_one.apply(
        Changes(
            revision,
            tuple(
                Event("put", e.key, e.value, e.mod_revision, e.lease, e.create_revision)
                for e in entries
            ),
        )
    )
    in_runs = RegistryState(PREFIX)
    cuts = data.draw(st.lists(st.integers(0, len(entries)), max_size=3), label="cuts")
    listed(in_runs, entries, cuts, revision)
    assert snapshot(in_runs) == snapshot(one_by_one)


@settings(max_examples=200, deadline=None)
@given(
    before=endpoint_entries,
    services=service_entries,
    endpoints=endpoint_entries,
    data=st.data(),
)
def test_a_listing_started_over_resolves_what_it_lists(
    before: dict[str, bytes],
    services: dict[str, bytes],
    endpoints: dict[str, bytes],
    data: st.DataObject,
) -> None:
    """A listing broken off (its runs stored, not resolved) and started over at part 0 with
    other values for the same keys ends where it ends with every key stored one by one
    (no runs: what a listing did before them)."""
    broken = sorted(entries_of({**before, **services}, 1))
    entries = sorted(entries_of({**endpoints, **services}, 100))
    revision = 100 + len(entries)
    cuts = data.draw(st.lists(st.integers(0, len(entries)), max_size=3), label="cuts")
    outcomes = []
    for runs in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            if not runs:
                patch.setattr(state_module, "endpoint_head", lambda head, prefix: None)
                patch.setattr(state_module, "service_key_ref", lambda key, prefix: None)
            state = RegistryState(PREFIX)
            state.apply(Reset(5, tuple(broken), 0, more=True))
            listed(state, entries, cuts, revision)
            outcomes.append(snapshot(state))
    assert outcomes[0] == outcomes[1]
