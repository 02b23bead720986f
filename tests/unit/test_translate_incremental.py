"""Incremental translation equals translating the whole state afresh, and Deltas are exact."""

from __future__ import annotations

from hypothesis import given, settings

from tests.support.golden import PREFIX, cases, load_entries
from tests.support.histories import Op, histories
from tests.support.translation import Versions, served_versions, translate_afresh
from xds_server.ingest.registry import Changes, Entry, Event
from xds_server.ingest.state import RegistryState
from xds_server.translate import Delta, Translator


def afresh(state: RegistryState) -> Versions:
    """The index a new Translator builds from everything in force."""
    return served_versions(translate_afresh(state))


def assert_delta_exact(before: Versions, translator: Translator, delta: Delta) -> None:
    after = served_versions(translator)
    for type_url in after:
        expected = {
            name: after[type_url].get(name)
            for name in before[type_url].keys() | after[type_url].keys()
            if before[type_url].get(name) != after[type_url].get(name)
        }
        got = {
            name: None if res is None else res.version
            for name, res in delta.changed[type_url].items()
        }
        assert got == expected, type_url


class Pipeline:
    """State and translator fed one registry event at a time, checked after each."""

    def __init__(self) -> None:
        self.state = RegistryState(PREFIX)
        self.translator = Translator()
        self.revision = 0

    def apply(self, event: Event) -> None:
        before = served_versions(self.translator)
        changes = self.state.apply(Changes(event.revision, (event,)))
        delta = self.translator.update(self.state, changes)
        assert_delta_exact(before, self.translator, delta)
        assert served_versions(self.translator) == afresh(self.state)

    def put(self, entry: Entry) -> None:
        self.revision += 1
        self.apply(Event("put", entry.key, entry.value, self.revision))

    def delete(self, key: str) -> None:
        self.revision += 1
        self.apply(Event("delete", key, b"", self.revision))


def test_golden_cases_built_and_torn_down_one_key_at_a_time() -> None:
    for case in cases():
        entries = load_entries(case)
        for order in (entries, entries[::-1]):
            pipeline = Pipeline()
            for entry in order:
                pipeline.put(entry)
            assert any(pipeline.translator.served.values()), case
            for entry in order:
                pipeline.delete(entry.key)
            assert not any(pipeline.translator.served.values()), case


@settings(max_examples=120, deadline=None)
@given(history=histories)
def test_random_histories_translate_incrementally(history: list[Op]) -> None:
    pipeline = Pipeline()
    for op in history:
        if op.value is None:
            pipeline.delete(op.key)
        else:
            pipeline.put(Entry(op.key, op.value, 0))
