"""Resilience behaviour through real Envoy: timeouts, retries, circuit breaking, outlier
detection, active health checking and per-route rate limits.

Backends fail deterministically (``fail_percent`` fails exactly P of every 100 requests,
evenly spread), so success shares here are exact rather than statistical. Timing bounds
are one-sided where load could stretch them (a loaded machine makes things later, never
earlier) and generous on the other side (several times the configured interval).
"""

from __future__ import annotations

import time

from tests.support.behaviour_mesh import Mesh


def _start(mesh: Mesh, expect: int) -> None:
    mesh.http_listener()
    mesh.start_envoy()
    mesh.wait_answer(
        lambda: len(mesh.healthy_hosts(f"web.{mesh.ns}")) == expect, f"{expect} endpoints"
    )


def test_timeout_answers_504_after_the_timeout_not_before(mesh: Mesh) -> None:
    (slow,) = mesh.backend_service("web")
    mesh.route("hasty", [{"service": "web"}], match={"prefix": "/hasty"}, timeout_ms=250)
    mesh.route("patient", [{"service": "web"}], match={"prefix": "/patient"}, timeout_ms=3000)
    _start(mesh, 1)
    slow.control(delay_ms=800)
    for _ in range(3):
        start = time.monotonic()
        status, _, _ = mesh.get("/hasty")
        elapsed = time.monotonic() - start
        assert status == 504
        # Not before the timeout (timers may fire a few ms early); well before the backend.
        assert 0.24 <= elapsed < 0.7, elapsed
    start = time.monotonic()
    status, body, _ = mesh.get("/patient")
    assert (status, body) == (200, "web-0")
    assert time.monotonic() - start >= 0.79


def test_retries_hide_a_20_percent_failure_rate(mesh: Mesh) -> None:
    (flaky,) = mesh.backend_service("web")
    mesh.route(
        "retried",
        [{"service": "web"}],
        match={"prefix": "/retried"},
        retries={"attempts": 3, "on": ["5xx"]},
    )
    mesh.route("plain", [{"service": "web"}], match={"prefix": "/plain"})
    _start(mesh, 1)
    flaky.control(fail_percent=20)
    n = 500
    plain = mesh.counts(n, "/plain")
    assert 0.75 <= plain["web-0"] / n <= 0.85, plain  # about 80% without retries
    before = flaky.stats()["requests"]
    retried = mesh.counts(n, "/retried")
    assert retried["web-0"] / n >= 0.99, retried
    # The client's success is bought with retries the backend saw: ~one per failure.
    extra = flaky.stats()["requests"] - before - n
    assert 0.15 * n <= extra <= 0.35 * n, extra


def test_circuit_breaker_overflows_at_once_and_protects_the_backend(mesh: Mesh) -> None:
    (slow,) = mesh.backend_service(
        "web", circuit_breaker={"max_connections": 2, "max_pending_requests": 2}
    )
    mesh.route("web", [{"service": "web"}])
    _start(mesh, 1)
    slow.control(delay_ms=1000)

    def one(i: int) -> tuple[int, float, str]:
        start = time.monotonic()
        status, _, headers = mesh.get("/", timeout=10)
        return status, time.monotonic() - start, headers.get("x-envoy-overloaded", "")

    results = mesh.parallel(12, 12, one)
    ok = [r for r in results if r[0] == 200]
    overflow = [r for r in results if r[0] == 503]
    assert len(ok) + len(overflow) == 12, results
    # 2 connections + 2 pending at most are admitted; the rest overflow. A thread starting
    # late (loaded machine) may find room again, so allow a few more admissions.
    assert len(overflow) >= 6, results
    assert all(h == "true" and t < 0.6 for _, t, h in overflow), overflow  # at once
    assert slow.stats()["max_in_flight"] <= 2, slow.stats()
    assert mesh.envoy is not None
    pending = mesh.envoy.stat(f"cluster.web.{mesh.ns}.upstream_rq_pending_overflow")
    assert pending == len(overflow), (pending, results)


def test_outlier_detection_ejects_then_returns_after_the_ejection_time(mesh: Mesh) -> None:
    good, bad = mesh.backend_service(
        "web",
        2,
        outlier_detection={
            "consecutive_5xx": 3,
            "interval_ms": 100,
            "base_ejection_time_ms": 1000,
            "max_ejection_percent": 50,
        },
    )
    mesh.route("web", [{"service": "web"}])
    _start(mesh, 2)
    bad.control(fail_percent=100)
    cluster = f"web.{mesh.ns}"
    failures = 0
    for _ in range(40):
        status, _, _ = mesh.get()
        failures += status != 200
        if mesh.healthy_hosts(cluster) == [good.port]:
            break
    ejected_at = time.monotonic()
    assert mesh.healthy_hosts(cluster) == [good.port], "the failing endpoint was not ejected"
    # Ejected on the 3rd consecutive 5xx (one more may slip through while that lands).
    assert 3 <= failures <= 4, failures

    seen = bad.stats()["requests"]
    assert mesh.counts(50) == {"web-0": 50}
    assert bad.stats()["requests"] == seen  # traffic goes to the healthy one only

    bad.control(fail_percent=0)
    while bad.stats()["requests"] == seen:
        assert time.monotonic() - ejected_at < 5, "the ejected endpoint never came back"
        assert mesh.get()[0] == 200
        time.sleep(0.01)
    back_after = time.monotonic() - ejected_at
    # Not before base_ejection_time_ms (less the check interval's granularity).
    assert back_after >= 0.85, back_after
    counts = mesh.counts(40)
    assert counts == {"web-0": 20, "web-1": 20}, counts


def _wait_hosts(mesh: Mesh, ports: list[int], what: str) -> None:
    mesh.wait_answer(lambda: mesh.healthy_hosts(f"web.{mesh.ns}") == sorted(ports), what)


def test_active_health_check_removes_and_restores_an_endpoint(mesh: Mesh) -> None:
    good, sick = mesh.backend_service(
        "web",
        2,
        health_check={
            "path": "/health",
            "interval_ms": 100,
            "timeout_ms": 1000,
            "healthy_threshold": 1,
            "unhealthy_threshold": 2,
            "every_proxy": True,  # Envoy's own active check (HDS spreads them otherwise)
        },
    )
    mesh.route("web", [{"service": "web"}])
    _start(mesh, 2)
    assert set(mesh.counts(20)) == {"web-0", "web-1"}

    sick.control(health="fail")
    _wait_hosts(mesh, [good.port], "the sick endpoint failing its health checks")
    seen = sick.stats()["requests"]
    assert mesh.counts(50) == {"web-0": 50}
    assert sick.stats()["requests"] == seen

    sick.control(health="ok")
    _wait_hosts(mesh, [good.port, sick.port], "the endpoint passing its checks again")
    # The admin view updates first; the worker's load balancer follows a moment later.
    mesh.wait_answer(lambda: mesh.get()[1] == "web-1", "traffic reaching it again")
    assert mesh.counts(40) == {"web-0": 20, "web-1": 20}
    assert sick.stats()["health_checks"] > 0


def test_rate_limit_answers_429_beyond_the_bucket_and_only_on_its_route(mesh: Mesh) -> None:
    mesh.backend_service("web")
    mesh.route(
        "limited",
        [{"service": "web"}],
        match={"prefix": "/limited"},
        rate_limit={"requests_per_minute": 60, "burst": 5},
    )
    mesh.route("free", [{"service": "web"}], match={"prefix": "/free"})
    _start(mesh, 1)
    mesh.wait_body("web-0", "/free")
    start = time.monotonic()
    limited = mesh.counts(12, "/limited")
    elapsed = time.monotonic() - start
    # A bucket of 5, refilled by 1 per second: 5 pass, plus one per second elapsed.
    assert 5 <= limited["web-0"] <= 5 + int(elapsed), (limited, elapsed)
    assert limited["HTTP 429"] == 12 - limited["web-0"], limited
    assert mesh.counts(30, "/free") == {"web-0": 30}  # other routes are not limited
    time.sleep(1.1)  # one token refilled
    assert mesh.get("/limited")[0] == 200
