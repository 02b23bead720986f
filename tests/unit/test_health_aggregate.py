"""Majority of fresh reports decides; stale means unknown; a tie keeps the verdict."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server.health.aggregate import Aggregator, Status


def test_majority_of_fresh_reports_decides() -> None:
    agg = Aggregator(stale_after=10)
    agg.record("e", "p1", True, 0)
    agg.record("e", "p2", False, 0)
    agg.record("e", "p3", False, 1)
    assert agg.evaluate(2) == {"e": Status.UNHEALTHY}
    assert agg.verdict("e") is Status.UNHEALTHY
    assert agg.evaluate(3) == {}  # no change, nothing reported


def test_stale_reports_make_unknown() -> None:
    agg = Aggregator(stale_after=5)
    agg.record("e", "p1", True, 0)
    assert agg.evaluate(1) == {"e": Status.HEALTHY}
    assert agg.evaluate(5.5) == {"e": Status.UNKNOWN}
    assert agg.verdict("e") is Status.UNKNOWN


def test_a_tie_keeps_the_verdict_and_proves_nothing_from_unknown() -> None:
    agg = Aggregator(stale_after=10)
    agg.record("e", "p1", True, 0)
    agg.record("e", "p2", False, 0)
    assert agg.evaluate(1) == {}
    assert agg.verdict("e") is Status.UNKNOWN
    agg.record("e", "p3", True, 1)
    assert agg.evaluate(1) == {"e": Status.HEALTHY}
    agg.record("e", "p4", False, 2)  # 2 vs 2
    assert agg.evaluate(2) == {}
    assert agg.verdict("e") is Status.HEALTHY


def test_older_report_does_not_replace_newer() -> None:
    agg = Aggregator(stale_after=10)
    agg.record("e", "p1", False, 5)
    agg.record("e", "p1", True, 4)
    agg.evaluate(5)
    assert agg.verdict("e") is Status.UNHEALTHY


def test_forgetting_a_reporter_removes_its_vote() -> None:
    agg = Aggregator(stale_after=10)
    agg.record("e", "p1", False, 0)
    agg.evaluate(0)
    agg.forget_reporter("p1")
    assert agg.evaluate(0) == {"e": Status.UNKNOWN}


def test_bad_staleness_is_refused() -> None:
    with pytest.raises(ValueError, match="stale_after"):
        Aggregator(stale_after=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.booleans(), st.floats(0, 20)), max_size=30))
def test_verdict_matches_a_direct_count(reports: list[tuple[str, bool, float]]) -> None:
    agg = Aggregator(stale_after=5)
    latest: dict[str, tuple[float, bool]] = {}
    for reporter, healthy, at in reports:
        agg.record("e", reporter, healthy, at)
        if reporter not in latest or latest[reporter][0] <= at:
            latest[reporter] = (at, healthy)
    now = 20.0
    agg.evaluate(now)
    fresh = [h for at, h in latest.values() if at >= now - 5]
    up, down = fresh.count(True), fresh.count(False)
    if not fresh or up == down:
        assert agg.verdict("e") is Status.UNKNOWN  # from UNKNOWN, a tie stays UNKNOWN
    else:
        assert agg.verdict("e") is (Status.HEALTHY if up > down else Status.UNHEALTHY)
