"""Load balancing behaviour through real Envoy: algorithms, session affinity, endpoint
weights and draining.

Tolerances: round robin is deterministic (Envoy runs one worker here, ``--concurrency 1``),
so its shares are exact up to the rotation's starting point. Random choices are binomial
samples with bounds at 4.5+ standard deviations (stated per test). Hash-based affinity is
deterministic per key. None of this depends on machine load; least_request does (it
reacts to in-flight requests), and its bound is set far from the round-robin 50% it
must beat (see that test).
"""

from __future__ import annotations

import http.client
import itertools
from collections import Counter
from typing import Any

import pytest

from integration.backend import Backend
from tests.support.behaviour_mesh import Mesh


def _single_service(mesh: Mesh, count: int, **spec: Any) -> list[Backend]:
    backends = mesh.backend_service("web", count, **spec)
    mesh.route("web", [{"service": "web"}])
    mesh.http_listener()
    mesh.start_envoy()
    # Every endpoint known to Envoy before measuring (EDS may land after the listener).
    mesh.wait_answer(
        lambda: len(mesh.healthy_hosts(f"web.{mesh.ns}")) == count, f"{count} endpoints"
    )
    return backends


def test_round_robin_spreads_evenly_in_turn(mesh: Mesh) -> None:
    _single_service(mesh, 3, load_balancer={"algorithm": "round_robin"})
    seq = [mesh.get()[1] for _ in range(300)]
    counts = Counter(seq)
    assert set(counts) == {"web-0", "web-1", "web-2"}, counts
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    # In turn: no endpoint twice in a row.
    assert all(a != b for a, b in itertools.pairwise(seq)), seq[:12]


def test_random_spreads_without_a_pattern(mesh: Mesh) -> None:
    _single_service(mesh, 3, load_balancer={"algorithm": "random"})
    n = 600
    seq = [mesh.get()[1] for _ in range(n)]
    counts = Counter(seq)
    # Binomial(600, 1/3): sd 11.5; 200 +- 55 is over 4.5 sd.
    assert all(abs(counts[f"web-{i}"] - 200) <= 55 for i in range(3)), counts
    # Unlike round robin, random repeats endpoints back to back (~1/3 of the time;
    # (2/3)^599 is the chance it never would).
    repeats = sum(1 for a, b in itertools.pairwise(seq) if a == b)
    assert repeats > 100, repeats


def test_least_request_favours_the_fast_endpoint(mesh: Mesh) -> None:
    _fast, slow = _single_service(mesh, 2, load_balancer={"algorithm": "least_request"})
    slow.control(delay_ms=150)

    def one(i: int) -> str:
        status, body, _ = mesh.get()
        assert status == 200
        return body

    counts = Counter(mesh.parallel(200, 8, one))
    # Envoy picks the less loaded of two random choices: the slow endpoint, holding several
    # in-flight requests, wins only when both choices fall on it (~1/4), so the fast one
    # expects ~75%. sd of that share over 200 requests is 0.031; round robin would give
    # exactly 50%. 0.6 is 5 sd below the expectation and far above 50%.
    assert counts["web-0"] / 200 >= 0.6, counts
    assert slow.stats()["requests"] == counts["web-1"]


def _affinity_request(mesh: Mesh, kind: str, key: str) -> tuple[str, dict[str, str]]:
    """One request carrying session key ``key`` as the affinity ``kind`` expects."""
    if kind == "source_ip":
        # Every 127.x.y.z is loopback on Linux: a distinct source address per key.
        n = int(key)
        conn = http.client.HTTPConnection(
            "127.0.0.1", mesh.port, timeout=5, source_address=(f"127.0.{n // 250}.{n % 250 + 2}", 0)
        )
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            return resp.read().decode().strip(), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
    headers = {"cookie": f"SESSIONID={key}"} if kind == "cookie" else {"x-user": key}
    status, body, got = mesh.get("/", headers)
    assert status == 200, body
    return body, got


AFFINITY = {
    "cookie": {"cookie": "SESSIONID", "ttl_ms": 60000},
    "header": {"header": "x-user"},
    "source_ip": {"source_ip": True},
}


@pytest.mark.parametrize("algorithm", ["ring_hash", "maglev"])
@pytest.mark.parametrize("kind", list(AFFINITY))
def test_session_affinity_sticks_per_key_and_spreads_keys(
    mesh: Mesh, kind: str, algorithm: str
) -> None:
    _single_service(
        mesh,
        3,
        load_balancer={"algorithm": algorithm, "session_affinity": AFFINITY[kind]},
    )
    sticky = {_affinity_request(mesh, kind, "7")[0] for _ in range(100)}
    assert len(sticky) == 1, sticky
    # 40 keys over 3 endpoints: the chance that a hash puts them all on one endpoint is
    # ~3 * (1/3)^40 for an even ring; ring_hash/maglev tables are close to even.
    spread = Counter(_affinity_request(mesh, kind, str(k))[0] for k in range(10, 50))
    assert len(spread) >= 2, spread


def test_cookie_affinity_sets_the_cookie_a_client_then_sticks_with(mesh: Mesh) -> None:
    _single_service(
        mesh,
        3,
        load_balancer={"algorithm": "ring_hash", "session_affinity": AFFINITY["cookie"]},
    )
    status, first, headers = mesh.get("/")
    assert status == 200
    cookie = headers.get("set-cookie", "")
    assert cookie.startswith("SESSIONID="), headers  # Envoy generated the session key
    value = cookie.split(";", 1)[0]
    assert {mesh.get("/", {"cookie": value})[1] for _ in range(100)} == {first}


def test_endpoint_weights_set_the_shares_and_draining_gets_nothing_new(mesh: Mesh) -> None:
    light, heavy, drained = (mesh.backend(f"w{i}") for i in range(3))
    mesh.service("web", port=light.port)
    mesh.endpoint("web", "light", light.port, weight=100)
    mesh.endpoint("web", "heavy", heavy.port, weight=300)
    mesh.endpoint("web", "drained", drained.port, weight=100)
    mesh.route("web", [{"service": "web"}])
    mesh.http_listener()
    mesh.start_envoy()
    mesh.wait_answer(lambda: len(mesh.healthy_hosts(f"web.{mesh.ns}")) == 3, "3 endpoints")
    assert mesh.counts(100)["w2"] > 0  # before draining, the third endpoint gets traffic

    mesh.endpoint("web", "drained", drained.port, weight=100, draining=True)
    mesh.wait_answer(
        lambda: len(mesh.healthy_hosts(f"web.{mesh.ns}")) == 2, "the endpoint draining"
    )
    before = drained.stats()["requests"]
    n = 800
    counts = mesh.counts(n)
    assert drained.stats()["requests"] == before
    assert set(counts) == {"w0", "w1"}, counts
    # Weighted round robin (Envoy's EDF scheduler) is deterministic: 1:3 up to rounding.
    assert abs(counts["w1"] / n - 0.75) < 0.02, counts
