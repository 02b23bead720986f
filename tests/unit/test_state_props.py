"""Properties of parse_entry and RegistryState over random keys, values and histories."""

from __future__ import annotations

import itertools
import json
from typing import Any, NamedTuple

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.support.histories import Op, histories
from xds_server.errors import ValidationError
from xds_server.ingest.registry import Changes, Entry, Event, Reset
from xds_server.ingest.state import RegistryState
from xds_server.model import Endpoint, Entity, Listener, Problem, Route, Service, parse_entry
from xds_server.model import names as names_module
from xds_server.model.endpoint import decode_endpoint, parse_endpoint
from xds_server.model.fields import Obj, parse_json_object
from xds_server.model.names import endpoint_head, parse_key, service_key_ref, service_ref
from xds_server.model.service import MAX_MS, decode_plain_service, parse_service
from xds_server.model.view import ChangeSet

PREFIX = "/mesh/"
FAST = settings(max_examples=80, deadline=None)


def forced(state: RegistryState) -> dict[str, Entity]:
    """Every entity in force, by the registry key it came from."""
    out: dict[str, Entity] = {}
    for ref, svc in state.services.items():
        out[f"{PREFIX}services/{ref.namespace}/{ref.name}"] = svc
    for ref, eps in state.endpoints.items():
        for ep_id, ep in eps.items():
            out[f"{PREFIX}endpoints/{ref.namespace}/{ref.name}/{ep_id}"] = ep
    out.update(state.routes)
    for name, listener in state.listeners.items():
        out[f"{PREFIX}listeners/{name}"] = listener
    return out


def resolves(entity: Entity, services: dict[Any, Service]) -> bool:
    """The contract's reference rules, written independently of state.py."""
    if isinstance(entity, Endpoint):
        svc = services.get(entity.service)
        return svc is not None and (entity.port is not None or svc.port is not None)
    if isinstance(entity, Route):
        for d in entity.destinations:
            svc = services.get(d.service)
            if svc is None or svc.protocol == "tcp":
                return False
            if d.subset and d.subset not in svc.subset_names:
                return False
        return True
    if isinstance(entity, Listener) and entity.service is not None:
        return entity.service in services
    return True


def held(state: RegistryState, content: dict[str, Entry]) -> dict[str, Service]:
    """Services in force that are not their key's value in the registry (deleted, or
    changed to another valid value): kept for the routes and listeners that need them."""
    out = {}
    for ref, svc in state.services.items():
        key = f"{PREFIX}services/{ref.namespace}/{ref.name}"
        entry = content.get(key)
        value = parse_entry(key, entry.value, PREFIX)[1] if entry is not None else None
        if value != svc and not isinstance(value, Problem):  # (invalid: last good kept)
            out[key] = svc
    return out


def touches(entity: Entity, refs: set[Any]) -> bool:
    """Does ``entity`` refer to (or belong to) one of the services ``refs``?"""
    if isinstance(entity, Service):
        return entity.ref in refs
    if isinstance(entity, Endpoint):
        return entity.service in refs
    if isinstance(entity, Route):
        mirror = {entity.mirror.service} if entity.mirror is not None else set()
        return bool(({d.service for d in entity.destinations} | mirror) & refs)
    tracing = {entity.tracing.service} if entity.tracing is not None else set()
    return bool(({entity.service} | tracing) & refs)


def assert_held_for_a_reason(state: RegistryState, content: dict[str, Entry]) -> None:
    """A held service says so on its key, and some route or listener in force needs it: it
    would not resolve with the registry's value of that service."""
    for key, svc in held(state, content).items():
        assert state.problems[key].last_good_kept, key
        entry = content.get(key)
        value = parse_entry(key, entry.value, PREFIX)[1] if entry is not None else None
        registered = {**state.services}
        if isinstance(value, Service):
            registered[svc.ref] = value
        else:
            del registered[svc.ref]
        users = [
            e
            for e in (*state.routes.values(), *state.listeners.values())
            if touches(e, {svc.ref}) and not resolves(e, registered)
        ]
        assert users, key


def assert_references_hold(state: RegistryState) -> None:
    """Nothing in force points at something that is not in force."""
    for key, entity in forced(state).items():
        assert resolves(entity, state.services), (key, entity)


def assert_changeset_exact(
    before: tuple[dict[str, Entity], dict[str, Problem]],
    state: RegistryState,
    changes: ChangeSet,
) -> None:
    """The ChangeSet names exactly the differences between two snapshots."""
    old_force, old_problems = before
    new_force = forced(state)
    expected = ChangeSet(revision=changes.revision)
    for key in old_force.keys() | new_force.keys():
        if old_force.get(key) == new_force.get(key):
            continue
        entity = new_force.get(key) or old_force[key]
        if isinstance(entity, Service):
            expected.services.add(entity.ref)
        elif isinstance(entity, Endpoint):
            expected.endpoints.add(entity.service)
        elif isinstance(entity, Route):
            expected.routes.add(key)
        else:
            expected.listeners.add(entity.name)
    for key, problem in state.problems.items():
        if old_problems.get(key) != problem:
            expected.problems_set[key] = problem
    expected.problems_cleared = set(old_problems) - set(state.problems)
    assert changes == expected


# -- (a) nothing raises, every rejected key is reported -------------------------------------

FIELD_NAMES = [
    "protocol", "port", "connect_timeout_ms", "load_balancer", "algorithm", "session_affinity",
    "cookie", "header", "source_ip", "ttl_ms", "circuit_breaker", "max_connections",
    "outlier_detection", "health_check", "path", "every_proxy", "subsets", "address", "weight",
    "labels", "zone", "draining", "listener", "hosts", "match", "prefix", "regex", "headers",
    "methods", "destinations", "service", "subset", "timeout_ms", "retries", "attempts", "on",
    "per_try_timeout_ms", "priority", "rate_limit", "requests_per_minute", "burst", "nodes",
]  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["http", "tcp", "ring_hash", "web", "/", "*", "10.0.0.1", "GET", "5xx"])
)
field_keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(field_keys, inner, max_size=5),
    max_leaves=10,
)
json_objects = st.dictionaries(field_keys, json_values, max_size=8)
any_bytes = (
    st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps(v).encode())
    | json_objects.map(lambda v: json.dumps(v).encode())
)

segment = st.text(alphabet="abcAB-_.:/0\n é*", max_size=8)
any_keys = (
    st.text(max_size=40)
    | st.builds(
        lambda kind, parts: PREFIX + kind + "/" + "/".join(parts),
        st.sampled_from(["services", "endpoints", "routes", "listeners", "status", "x"]),
        st.lists(segment, max_size=4),
    )
    | st.sampled_from(
        [
            "/mesh/services/default/web",
            "/mesh/endpoints/default/web/w1",
            "/mesh/routes/default/r",
            "/mesh/listeners/public",
        ]
    )
)


@FAST
@given(key=any_keys, value=any_bytes)
def test_parse_entry_never_raises(key: str, value: bytes) -> None:
    ref, result = parse_entry(key, value, PREFIX, revision=5)
    if isinstance(result, Problem):
        assert result.key == key
        assert result.revision == 5
        assert not result.last_good_kept
        assert isinstance(result.field, str)
        assert result.reason
    else:
        assert ref is not None


PREFIXES = [PREFIX, "/mesh", "/", "/other/"]


def keys_under(heads: list[str], last: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """Lists of registry keys: arbitrary ones, and ones made of a prefix, one of ``heads``
    and a ``last`` segment (the shapes the key shortcuts and their memos see)."""
    built = st.builds(
        lambda prefix, head, tail: prefix + head + "/" + tail,
        st.sampled_from(PREFIXES),
        st.sampled_from(heads),
        last,
    )
    return st.lists(any_keys | built, max_size=8)


@FAST
@given(
    keys=keys_under(
        ["endpoints/default/web", "endpoints/Default/web", "mesh/endpoints/a/b"], segment
    ),
    prefixes=st.permutations(PREFIXES),
)
def test_parse_key_memo_changes_no_outcome(keys: list[str], prefixes: list[str]) -> None:
    """parse_key remembers endpoint key heads it validated; a key parses the same with
    the memo as without it, under any prefix."""

    def outcome(key: str, prefix: str) -> object:
        try:
            return parse_key(key, prefix)
        except ValidationError as exc:
            return (exc.field, exc.reason)

    for key, prefix in itertools.product(keys, prefixes):
        remembered = outcome(key, prefix)
        saved = dict(names_module._ENDPOINT_HEADS)
        names_module._ENDPOINT_HEADS.clear()
        assert outcome(key, prefix) == remembered
        names_module._ENDPOINT_HEADS.update(saved)


@FAST
@given(
    keys=keys_under(
        [
            "endpoints/default/web",
            "endpoints/Default/web",
            "mesh/endpoints/a/b",
            "services/default",
            "services/Bad",
            "services",
            "mesh/services/a",
        ],
        segment | st.sampled_from(["web", "Web", "w-1", "-w"]),
    ),
    prefixes=st.permutations(PREFIXES),
)
def test_key_shortcuts_are_parse_keys(keys: list[str], prefixes: list[str]) -> None:
    """endpoint_head (a listing's runs) names the service of an endpoint key exactly when
    parse_key reads the key as an endpoint, its id aside; service_key_ref names the service
    of a key exactly when parse_key reads it as a service; remembered or not."""
    for key, prefix in itertools.product(keys, prefixes):
        head = key.rpartition("/")[0]
        for memo in (True, False):
            if not memo:
                names_module._ENDPOINT_HEADS.clear()
                names_module._SERVICE_HEADS.clear()
            for shortcut, parsed, kind in (
                (endpoint_head(head, prefix), head + "/e1", "endpoints"),
                (service_key_ref(key, prefix), key, "services"),
            ):
                try:
                    ref = parse_key(parsed, prefix)
                except ValidationError:
                    assert shortcut is None, (key, prefix, kind)
                    continue
                expected = ref.service_ref if ref.kind == kind else None
                assert shortcut == expected, (key, prefix, kind)


@FAST
@given(puts=st.lists(st.tuples(any_keys, any_bytes), min_size=1, max_size=6))
def test_apply_never_raises_and_reports_every_rejected_key(puts: list[tuple[str, bytes]]) -> None:
    state = RegistryState(PREFIX)
    content: dict[str, bytes] = {}
    for revision, (key, value) in enumerate(puts, start=1):
        state.apply(Changes(revision, (Event("put", key, value, revision),)))
        content[key] = value
    force = forced(state)
    for key, value in content.items():
        _, result = parse_entry(key, value, PREFIX)
        if isinstance(result, Problem):
            assert state.problems[key].key == key
            assert (state.problems[key].field, state.problems[key].reason) == (
                result.field,
                result.reason,
            )
        else:
            assert key in force or key in state.problems, key
            if key in state.problems:
                assert state.problems[key].key == key
    assert set(state.problems) <= set(content)
    assert set(force) <= set(content)
    assert_references_hold(state)


# -- (b), (c) histories over a small universe of keys -------------------------------------------


def expected_from_scratch(content: dict[str, Entry]) -> dict[str, Entity]:
    """What a registry with no history serves: valid values whose references resolve."""
    valid = {}
    for key, entry in content.items():
        _, result = parse_entry(key, entry.value, PREFIX, created=entry.create_revision)
        if not isinstance(result, Problem):
            valid[key] = result
    services = {e.ref: e for e in valid.values() if isinstance(e, Service)}
    return {k: e for k, e in valid.items() if resolves(e, services)}


def replay(history: list[Op]) -> tuple[RegistryState, dict[str, Entry]]:
    """Apply a history one op at a time, checking (c) and exact ChangeSets after each."""
    state = RegistryState(PREFIX)
    content: dict[str, Entry] = {}
    put_since_delete: dict[str, list[Entity]] = {}
    put_ever: dict[str, list[Entity]] = {}
    created: dict[str, int] = {}  # etcd's create_revision: kept until the key is deleted
    for revision, op in enumerate(history, start=1):
        before = (forced(state), dict(state.problems))
        if op.value is None:
            event = Event("delete", op.key, b"", revision)
            content.pop(op.key, None)
            put_since_delete.pop(op.key, None)
            created.pop(op.key, None)
        else:
            born = created.setdefault(op.key, revision)
            event = Event("put", op.key, op.value, revision, 0, born)
            content[op.key] = Entry(op.key, op.value, revision, 0, born)
            _, result = parse_entry(op.key, op.value, PREFIX, revision=revision, created=born)
            if not isinstance(result, Problem):
                put_since_delete.setdefault(op.key, []).append(result)
                put_ever.setdefault(op.key, []).append(result)
        changes = state.apply(Changes(revision, (event,)))
        assert changes.revision == revision
        assert_changeset_exact(before, state, changes)
        # (c) nothing invalid is in force: each entity is a valid value put for its key
        # (since it was deleted, unless it is a service kept for what needs it: held, or
        # put back invalid while held, which keeps the held value as its last good one).
        kept = held(state, content)
        for key, entity in forced(state).items():
            problem = state.problems.get(key)
            service_kept = isinstance(entity, Service) and bool(problem and problem.last_good_kept)
            values = put_ever if key in kept or service_kept else put_since_delete
            assert entity in values.get(key, []), (key, entity)
        assert_references_hold(state)
        assert_held_for_a_reason(state, content)
        assert set(state.problems) <= set(content) | set(kept)
    return state, content


@settings(max_examples=200, deadline=None)
@given(history=histories)
def test_changes_one_by_one_agree_with_one_reset(history: list[Op]) -> None:
    incremental, content = replay(history)
    revision = len(history)
    from_scratch = RegistryState(PREFIX)
    from_scratch.apply(Reset(revision, tuple(content.values())))
    expected = expected_from_scratch(content)

    assert forced(from_scratch) == expected
    assert set(from_scratch.problems) == set(content) - set(expected)
    assert not any(p.last_good_kept for p in from_scratch.problems.values())
    # History only adds last good values (and services held for their dependents):
    # whatever a fresh start serves, so does the history, but what held services touch.
    incremental_force = forced(incremental)
    kept = {svc.ref for svc in held(incremental, content).values()}
    for key, entity in expected.items():
        if touches(entity, kept):
            continue
        assert incremental_force.get(key) == entity, key
        assert key not in incremental.problems, key
    for key, entry in content.items():
        assert key in incremental_force or key in incremental.problems, key
        _, parsed = parse_entry(key, entry.value, PREFIX, revision=entry.mod_revision)
        if isinstance(parsed, Problem):  # schema problems do not depend on history
            assert from_scratch.problems[key] == parsed
            kept = incremental.problems[key]
            assert (kept.field, kept.reason, kept.revision) == (
                parsed.field,
                parsed.reason,
                parsed.revision,
            )
            assert kept.last_good_kept == (key in incremental_force)

    # Relisting the same content changes nothing.
    assert incremental.apply(Reset(revision, tuple(content.values()))) == ChangeSet(
        revision=revision
    )


def relisted(
    content: dict[str, Entry], relist: list[Op], revision: int
) -> tuple[dict[str, Entry], int]:
    """The registry after ``relist`` is applied to ``content`` (at ``revision``), and the
    revision it ends at: what a later listing returns."""
    target = dict(content)
    for op in relist:
        revision += 1
        if op.value is None:
            target.pop(op.key, None)
        else:
            old = target.get(op.key)
            born = old.create_revision if old is not None else revision
            target[op.key] = Entry(op.key, op.value, revision, 0, born)
    return target, revision


_A1 = "/mesh/endpoints/default/api/a1"
_A1_VALUE = b'{"address": "10.0.1.1"}'


@settings(max_examples=60, deadline=None)
@given(history=histories, relist=histories)
@example(  # an endpoint came into force against a held service and left with it
    history=[
        Op(_A1, _A1_VALUE),
        Op(_A1, _A1_VALUE),
        Op(
            "/mesh/routes/default/r1",
            b'{"listener": "public", "destinations": [{"service": "api"}]}',
        ),
        Op("/mesh/services/default/api", b"{}"),
    ],
    relist=[
        Op(_A1, _A1_VALUE),
        Op(_A1, b'{"address": "10.0.1.1", "port": 9}'),
        Op("/mesh/routes/default/r1", None),
        Op("/mesh/services/default/api", None),
    ],
)
def test_reset_after_a_history_is_exact(history: list[Op], relist: list[Op]) -> None:
    """A Reset to other content reports exactly what changed and serves only valid values."""
    state, content = replay(history)
    target, revision = relisted(content, relist, len(history))
    before = (forced(state), dict(state.problems))
    changes = state.apply(Reset(revision, tuple(target.values())))
    assert_changeset_exact(before, state, changes)
    assert_references_hold(state)
    assert_held_for_a_reason(state, target)
    kept = held(state, target)
    assert set(state.problems) <= set(target) | set(kept)
    assert set(forced(state)) <= set(target) | set(kept)
    refs = {svc.ref for svc in kept.values()}
    for key, entity in expected_from_scratch(target).items():
        if not touches(entity, refs):
            assert forced(state).get(key) == entity, key


@settings(max_examples=80, deadline=None)
@given(history=histories, relist=histories, data=st.data())
def test_a_listing_in_parts_is_the_listing_in_one(
    history: list[Op], relist: list[Op], data: st.DataObject
) -> None:
    """A listing delivered in parts (etcd's pages) ends exactly where the same listing in
    one Reset does, leaves what is in force alone until its last part, and a part 0 in the
    middle (a listing that broke off and started over) discards what the broken one saw."""
    whole, content = replay(history)
    parts_state, _ = replay(history)
    target, revision = relisted(content, relist, len(history))
    entries = tuple(target.values())
    expected = whole.apply(Reset(revision, entries))

    if data.draw(st.booleans(), label="a broken-off listing first"):
        # An earlier listing of the old content, cut short: keys it saw that the new one
        # does not name must still be deleted, and values it stored must still be resolved.
        old = tuple(content.values())
        broken = old[: data.draw(st.integers(0, len(old)), label="broken after")]
        parts_state.apply(Reset(len(history), broken, 0, more=True))
    before = (forced(parts_state), dict(parts_state.problems))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(entries)), max_size=4), label="cuts"))
    bounds = [0, *cuts, len(entries)]
    merged = ChangeSet(revision=revision)
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        last = n == len(bounds) - 2
        merged.merge(parts_state.apply(Reset(revision, entries[lo:hi], n, more=not last)))
        if not last:
            assert parts_state.listing
            assert (forced(parts_state), dict(parts_state.problems)) == before
    assert not parts_state.listing
    assert forced(parts_state) == forced(whole)
    assert parts_state.problems == whole.problems
    assert merged.services == expected.services and merged.endpoints == expected.endpoints
    assert merged.routes == expected.routes and merged.listeners == expected.listeners


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(10**40), max_value=10**40)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    ).map(lambda v: {"v": v})
    | st.binary(max_size=64).map(lambda b: b.decode("latin-1"))
)
def test_json_decoding_is_the_json_modules(value: Any) -> None:
    """The fast decoder (orjson) never changes what a value means: every value decodes to
    what the json module makes of it, or is refused with the json module's message."""
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else None
    if raw is None:
        raw = json.dumps(value).encode()
    for candidate in (raw, raw.replace(b"1", b"1" * 25, 1), b'{"a": "\\ud800", "b": 1e400}'):
        try:
            expected: Any = json.loads(candidate.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            expected = None
        try:
            got: Any = parse_json_object(candidate)
        except ValidationError as exc:
            got = None
            assert exc.reason.startswith(("invalid JSON", "value is not UTF-8", "value must be"))
        if isinstance(expected, dict):
            assert repr(got) == repr(expected)  # repr: 1 is not 1.0, and nan is nan
        else:
            assert got is None


class _Spoil(NamedTuple):
    """How a value's bytes may be off, for the fast-path tests below."""

    spacing: int | None  # JSON indentation
    tail: bytes  # bytes after the object
    duplicate: bool  # its first key repeated in front
    inside: bytes  # raw bytes inside a string: invalid UTF-8, a surrogate, a control character

    def clean(self, inside_ok: tuple[bytes, ...] = (b"",)) -> bool:
        """Nothing in it makes the value malformed (``inside_ok``: what the string takes)."""
        return not self.tail.strip() and not self.duplicate and self.inside in inside_ok


_SPOILS = st.builds(
    _Spoil,
    st.sampled_from([None, 0, 2]),
    st.sampled_from([b"", b"", b"", b" ", b"\n", b"x", b"}", b'{"port": 1}']),
    st.sampled_from([False, False, False, True]),
    st.sampled_from([b"", b"", b"", b"\xff", b"\xed\xa0\x80", b"\x00", b"\xc3\xa9"]),
)


def _changes(values: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[list[Any]]:
    """Up to two fields changed, each to one of ``values`` (edges, wrong types, blocks)."""
    return st.lists(
        st.sampled_from(sorted(values)).flatmap(lambda k: values[k].map(lambda v: (k, v))),
        max_size=2,
    )


def _value_bytes(fields: dict[str, Any], spoil: _Spoil, string_head: bytes) -> bytes:
    """``fields`` as JSON, spoiled: indented, followed by the tail, with the first key once
    more in front, and with ``string_head`` + the inside bytes + ``"`` in front (a raw
    ``"key": "...`` pair whose string holds them)."""
    raw = json.dumps(fields, indent=spoil.spacing).encode("utf-8", "surrogatepass") + spoil.tail
    if spoil.duplicate and fields:
        first = next(iter(fields))
        raw = raw.replace(b"{", b'{"' + first.encode() + b'": 7,', 1)
    if spoil.inside:
        raw = raw.replace(b"{", b"{" + string_head + spoil.inside + b'",', 1)
    return raw


_endpoint_field_values: dict[str, st.SearchStrategy[Any]] = {
    "address": st.sampled_from(
        [None, "10.0.0.1", "::1", "0:0::1", "001.2.3.4", "db.local", "", 5, "fe80::1%eth0"]
    ),
    "port": st.sampled_from([None, 0, 1, 65535, 65536, -1, "80", 80.0, True, 2**64]),
    "weight": st.sampled_from([None, 0, 1, 1000, 1001, "1", 1.0, False, 2**63]),
    "labels": st.sampled_from(
        [None, {}, {"app": "a"}, {"Bad Key": "x"}, {"a": 1}, [], "x", {"x" * 70: "v"}]
    ),
    "zone": st.sampled_from([None, "", "z" * 128, "z" * 129, 5, "\ud800"]),
    "draining": st.sampled_from([None, True, False, 0, 1, "true"]),
    "extra": st.just(1),
}


@settings(max_examples=400, deadline=None)
@given(
    base=st.fixed_dictionaries(
        {"address": st.sampled_from(["10.0.0.1", "::1"])},
        optional={
            "port": st.sampled_from([1, 8080]),
            "labels": st.just({"app": "a"}),
            "zone": st.just("z1"),
            "draining": st.booleans(),
        },
    ),
    changed=_changes(_endpoint_field_values),
    spoil=_SPOILS,
)
def test_endpoint_fast_decoding_is_the_strict_paths(
    base: dict[str, Any],
    changed: list[tuple[str, Any]],
    spoil: _Spoil,
) -> None:
    """The msgspec fast path for endpoint values (decode_endpoint) never changes an
    outcome: whatever it accepts, the strict reader accepts as the same Endpoint, and
    whatever it refuses goes to the strict reader, which words the error."""
    raw = _value_bytes({**base, **dict(changed)}, spoil, b'"zone": "')
    ref = service_ref("default", "svc")
    fast = decode_endpoint(ref, "e1", raw, lease=3)
    try:
        strict: Endpoint | None = parse_endpoint(ref, "e1", Obj(parse_json_object(raw)), lease=3)
    except ValidationError:
        strict = None
    if fast is not None:
        assert fast == strict
        assert repr(fast) == repr(strict)  # same types too (True is not 1)
    elif not changed and spoil.clean(inside_ok=(b"", b"\xc3\xa9")):
        raise AssertionError(f"the fast path refused a well-formed value: {raw!r}")


_SERVICE_EDGES: dict[str, list[Any]] = {
    "protocol": [None, "http", "grpc", "tcp", "HTTP", "udp", "", 5, True],
    "port": [None, 0, 1, 65535, 65536, -1, "80", 80.0, True, 2**64],
    "connect_timeout_ms": [None, 0, 1, MAX_MS, MAX_MS + 1, 250.0, 1.5, "250", False, 2**63],
    "load_balancer": [None, {}, {"algorithm": "random"}, {"algorithm": "x"}, []],
    "subsets": [None, {}, {"v1": {"version": "v1"}}],
    "extra": [1],
}


def _same_service_outcome(raw: bytes) -> bool:
    """Whether the fast path took ``raw``; when it did, it is what the strict path makes."""
    ref = service_ref("default", "svc")
    fast = decode_plain_service(ref, raw)
    try:
        strict: Service | None = parse_service(ref, Obj(parse_json_object(raw)))
    except ValidationError:
        strict = None
    if fast is not None:
        assert fast == strict, raw
        assert repr(fast) == repr(strict), raw  # same types too (True is not 1)
    return fast is not None


@pytest.mark.parametrize(
    ("field", "value"), [(k, v) for k, values in _SERVICE_EDGES.items() for v in values]
)
def test_service_fast_decoding_at_each_edge(field: str, value: Any) -> None:
    """The msgspec fast path for plain Service values (decode_plain_service) at every
    edge of every field, alone and beside the other plain fields."""
    for others in ({}, {"protocol": "grpc", "port": 8080, "connect_timeout_ms": 250}):
        _same_service_outcome(json.dumps({**others, field: value}).encode())


@settings(max_examples=400, deadline=None)
@given(
    base=st.fixed_dictionaries(
        {},
        optional={
            "protocol": st.sampled_from(["http", "http2", "grpc", "tcp"]),
            "port": st.sampled_from([1, 8080]),
            "connect_timeout_ms": st.sampled_from([1, 250]),
        },
    ),
    changed=_changes({k: st.sampled_from(v) for k, v in _SERVICE_EDGES.items()}),
    spoil=_SPOILS,
)
def test_service_fast_decoding_is_the_strict_paths(
    base: dict[str, Any],
    changed: list[tuple[str, Any]],
    spoil: _Spoil,
) -> None:
    """The fast path for plain Service values never changes an outcome: whatever it
    accepts, the strict reader accepts as the same Service, and whatever it refuses goes
    to the strict reader, which words the error."""
    raw = _value_bytes({**base, **dict(changed)}, spoil, b'"protocol": "http')
    accepted = _same_service_outcome(raw)
    if not accepted and not changed and spoil.clean():
        raise AssertionError(f"the fast path refused a well-formed value: {raw!r}")
