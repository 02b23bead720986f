"""Spreading health checks over proxies: k distinct checkers, zones, fair share, stability."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.health.assign import Checker, Target, assign, checkers_of, fair_share

ZONES = st.sampled_from(["", "a", "b", "c"])
checkers_st = st.lists(
    st.builds(Checker, st.integers(0, 60).map(lambda i: f"node-{i}"), ZONES),
    max_size=25,
    unique_by=lambda c: c.node_id,
)
targets_st = st.lists(
    st.builds(Target, st.integers(0, 200).map(lambda i: f"default/svc/ep-{i}"), ZONES),
    max_size=40,
    unique_by=lambda t: t.key,
)


def test_each_endpoint_gets_three_checkers_of_twenty() -> None:
    checkers = [Checker(f"proxy-{i}") for i in range(20)]
    targets = [Target(f"default/web/ep-{j}") for j in range(10)]
    result = assign(targets, checkers)
    inverse = checkers_of(result)
    assert {k: len(v) for k, v in inverse.items()} == {t.key: 3 for t in targets}
    assert max(len(v) for v in result.values()) <= fair_share(10, 20)  # 2


def test_same_zone_is_preferred() -> None:
    checkers = [Checker(f"a-{i}", "a") for i in range(4)] + [
        Checker(f"b-{i}", "b") for i in range(4)
    ]
    targets = [Target("default/web/in-a", "a"), Target("default/web/in-b", "b")]
    inverse = checkers_of(assign(targets, checkers))
    assert all(n.startswith("a-") for n in inverse["default/web/in-a"])
    assert all(n.startswith("b-") for n in inverse["default/web/in-b"])


def test_order_of_inputs_does_not_matter() -> None:
    checkers = [Checker(f"p{i}", "ab"[i % 2]) for i in range(7)]
    targets = [Target(f"ns/s/{j}", "ab"[j % 3 % 2]) for j in range(13)]
    assert assign(targets, checkers) == assign(targets[::-1], checkers[::-1])


def test_bad_k_is_refused() -> None:
    try:
        assign([], [], per_target=0)
    except ValueError as exc:
        assert "per_target" in str(exc)
    else:
        raise AssertionError("per_target=0 accepted")


@settings(max_examples=300, deadline=None)
@given(checkers_st, targets_st, st.integers(1, 4))
def test_every_target_has_k_distinct_checkers_within_fair_share(
    checkers: list[Checker], targets: list[Target], k: int
) -> None:
    result = assign(targets, checkers, k)
    assert set(result) == {c.node_id for c in checkers}
    inverse = checkers_of(result)
    want = min(k, len(checkers))
    for t in targets:
        assert len(inverse.get(t.key, [])) == want
    cap = fair_share(len(targets), len(checkers), k)
    assert all(len(keys) <= cap for keys in result.values())


@settings(max_examples=200, deadline=None)
@given(checkers_st.filter(lambda c: len(c) >= 4), targets_st.filter(lambda t: len(t) >= 5), ZONES)
def test_a_joining_proxy_moves_about_its_own_share(
    checkers: list[Checker], targets: list[Target], zone: str
) -> None:
    before = assign(targets, checkers)
    newcomer = Checker("newcomer", zone)
    after = assign(targets, [*checkers, newcomer])
    moved = sum(len(before[c.node_id] - after[c.node_id]) for c in checkers)
    # Plain rendezvous moves exactly the newcomer's share; the fair-share cap may push a
    # few more pairs along, never many.
    share = len(after["newcomer"])
    # The fair share itself shrinks when a proxy joins (ceil(T*k/N) -> ceil(T*k/(N+1))): a
    # checker above the new cap must give up the difference, wherever its hash ranks.
    cap = fair_share(len({t.key for t in targets}), len(checkers) + 1)
    forced = sum(max(0, len(before[c.node_id]) - cap) for c in checkers)
    assert moved <= 2 * (share + forced) + len(checkers) // 2 + 2, (moved, share, forced)
    # ...and leaving again restores the first answer exactly.
    assert assign(targets, checkers) == before


def test_a_leaving_proxy_mostly_moves_only_its_share() -> None:
    checkers = [Checker(f"p{i}") for i in range(20)]
    targets = [Target(f"ns/s/{j}") for j in range(50)]
    before = assign(targets, checkers)
    after = assign(targets, checkers[1:])
    kept = sum(len(before[c.node_id] & after[c.node_id]) for c in checkers[1:])
    survivors = sum(len(before[c.node_id]) for c in checkers[1:])
    assert kept >= 0.8 * survivors, (kept, survivors)
