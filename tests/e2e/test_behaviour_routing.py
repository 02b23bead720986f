"""Routing behaviour through real Envoy: weighted splits and subsets, matches and their
order, mirroring, fault injection.

Statistical tolerances: Envoy draws a random number per request for weighted clusters,
mirror fractions and fault percentages, so every share is a binomial sample. Bounds sit
at 4-5 standard deviations of that sample (stated per test), so a correct Envoy fails
them less than once in ~100,000 runs; machine load changes latency, never these shares.
"""

from __future__ import annotations

import time

from tests.support.behaviour_mesh import Mesh


def test_weighted_split_over_subsets_and_zero_weight_gets_nothing(mesh: Mesh) -> None:
    backends = {v: mesh.backend(v) for v in ("v1", "v2", "v3")}
    idle = mesh.backend_service("idle")[0]
    mesh.service(
        "web",
        port=backends["v1"].port,
        subsets={v: {"version": v} for v in backends},
    )
    for v, b in backends.items():
        mesh.endpoint("web", v, b.port, labels={"version": v})
    mesh.route(
        "split",
        [
            {"service": "web", "subset": "v1", "weight": 60},
            {"service": "web", "subset": "v2", "weight": 30},
            {"service": "web", "subset": "v3", "weight": 10},
            {"service": "idle", "weight": 0},
        ],
    )
    mesh.http_listener()
    mesh.start_envoy()
    mesh.wait_answer(lambda: mesh.get()[0] == 200, "the split route")
    n = 1000
    v2_before = backends["v2"].stats()["requests"]  # the warm-up request may have landed
    counts = mesh.counts(n)
    assert set(counts) <= {"v1", "v2", "v3"}, counts
    # sd of a share p over 1000 draws is at most 0.016: +-0.065 is > 4 sd.
    for v, weight in (("v1", 0.6), ("v2", 0.3), ("v3", 0.1)):
        assert abs(counts[v] / n - weight) < 0.065, (v, counts)
    assert idle.stats()["requests"] == 0
    # Each subset's cluster holds only its own endpoint: v2 traffic never reached v1.
    assert backends["v2"].stats()["requests"] - v2_before == counts["v2"]


def test_matches_land_where_they_say_and_order_rules_hold(mesh: Mesh) -> None:
    for name in ("a", "b", "c", "d", "e", "f"):
        mesh.backend_service(name)
    mesh.route("api", [{"service": "a"}], match={"prefix": "/api"})
    mesh.route("api-v2", [{"service": "b"}], match={"prefix": "/api/v2"})
    mesh.route("exact", [{"service": "c"}], match={"path": "/api/v2/exact"})
    mesh.route("items", [{"service": "d"}], match={"regex": "^/(items|api/v2)/[0-9]+$"})
    # Same prefix as "api" but a header condition: only a higher priority lets it win.
    mesh.route(
        "canary",
        [{"service": "e"}],
        match={"prefix": "/api", "headers": {"x-canary": "true"}},
        priority=10,
    )
    mesh.route(
        "writes", [{"service": "f"}], match={"prefix": "/api", "methods": ["POST"]}, priority=5
    )
    mesh.http_listener()
    mesh.start_envoy()
    mesh.wait_body("d-0", "/items/42")

    def land(path: str, method: str = "GET", **headers: str) -> str:
        status, body = mesh.request(
            method, path, {k.replace("_", "-"): v for k, v in headers.items()}
        )
        return body if status == 200 else f"HTTP {status}"

    # Specificity at equal priority: exact path, then longest prefix, then regex.
    assert land("/api/users") == "a-0"
    assert land("/api/v2/users") == "b-0"
    assert land("/api/v2/exact") == "c-0"
    assert land("/api/v2/exact?debug=1") == "c-0"  # the query is not part of the path
    assert land("/api/v2/exact/more") == "b-0"  # an exact path is exact
    assert land("/api/v2/123") == "b-0"  # the prefix route comes before the regex
    assert land("/items/42") == "d-0"
    assert land("/items/abc") == "HTTP 404"
    # Headers are exact matches; priority beats specificity.
    assert land("/api/v2/exact", x_canary="true") == "e-0"
    assert land("/api/users", x_canary="yes") == "a-0"
    # Methods.
    assert land("/api/users", "POST") == "f-0"
    assert land("/api/users", "PUT") == "a-0"
    assert land("/api/users", "POST", x_canary="true") == "e-0"  # priority 10 > 5


def test_mirror_receives_a_copy_and_the_client_sees_only_the_primary(mesh: Mesh) -> None:
    (primary,) = mesh.backend_service("web")
    (shadow,) = mesh.backend_service("shadow")
    shadow.control(fail_percent=100, fail_status=500)  # the mirror's answer must not leak
    mesh.route("all", [{"service": "web"}], match={"prefix": "/all"}, mirror={"service": "shadow"})
    mesh.route(
        "some",
        [{"service": "web"}],
        match={"prefix": "/some"},
        mirror={"service": "shadow", "percent": 25},
    )
    mesh.http_listener()
    mesh.start_envoy()
    mesh.wait_body("web-0", "/all")
    mesh.wait_answer(lambda: shadow.stats()["requests"] > 0, "the first mirrored request")
    time.sleep(0.2)  # let in-flight shadow copies of the warm-up land before counting
    before = shadow.stats()["requests"]
    for i in range(50):
        status, body, headers = mesh.get(f"/all/{i}", {"x-trace": str(i)})
        assert (status, body, headers["x-backend"]) == (200, "web-0", "web-0")
    mesh.wait_answer(
        lambda: shadow.stats()["requests"] - before >= 50, "50 mirrored requests", timeout=5
    )
    copies = [r for r in shadow.requests_log() if r["path"].startswith("/all/")]
    assert sorted(int(r["path"].rsplit("/", 1)[1]) for r in copies) == list(range(50))
    # Envoy marks mirrored requests: the Host name gets a "-shadow" suffix (before the
    # port); headers are copied.
    assert all(r["host"].rsplit(":", 1)[0].endswith("-shadow") for r in copies), copies[0]
    assert all(r["headers"]["x-trace"] == r["path"].rsplit("/", 1)[1] for r in copies)

    n = 400
    primary_before = primary.stats()["requests"]
    assert mesh.counts(n, "/some") == {"web-0": n}
    assert primary.stats()["requests"] - primary_before == n
    time.sleep(0.3)  # shadow copies are fire-and-forget: let the last ones arrive
    mirrored = sum(1 for r in shadow.requests_log() if r["path"] == "/some")
    # Binomial(400, 0.25): sd 8.7, so 100 +- 40 is over 4.5 sd.
    assert 60 <= mirrored <= 140, mirrored


def test_fault_aborts_and_delays_the_configured_share(mesh: Mesh) -> None:
    (web,) = mesh.backend_service("web")
    mesh.route(
        "abort",
        [{"service": "web"}],
        match={"prefix": "/abort"},
        fault={"abort_percent": 25, "abort_status": 418},
    )
    mesh.route(
        "delay",
        [{"service": "web"}],
        match={"prefix": "/delay"},
        fault={"delay_percent": 50, "delay_ms": 400},
    )
    mesh.http_listener()
    envoy = mesh.start_envoy()
    mesh.wait_answer(lambda: mesh.get("/abort")[0] in (200, 418), "the abort route")

    n = 800
    before = web.stats()["requests"]
    counts = mesh.counts(n, "/abort")
    assert set(counts) <= {"web-0", "HTTP 418"}, counts
    # Binomial(800, 0.25): sd 0.0153 of the share; +-0.07 is over 4.5 sd.
    assert abs(counts["HTTP 418"] / n - 0.25) < 0.07, counts
    assert web.stats()["requests"] - before == counts["web-0"]  # aborted ones never left Envoy

    def timed(i: int) -> float:
        start = time.monotonic()
        status, _, _ = mesh.get("/delay")
        assert status == 200
        return time.monotonic() - start

    n = 60
    stat = f"http.{mesh.listener}.fault.delays_injected"
    injected_before = envoy.stat(stat) or 0
    latencies = mesh.parallel(n, 10, timed)
    injected = (envoy.stat(stat) or 0) - injected_before
    # An injected delay is never much shorter than configured (Envoy's timers may fire a
    # few ms early), so every injected request is slow; a loaded machine can only add slow
    # ones, never remove them.
    slow = sum(1 for t in latencies if t >= 0.38)
    assert slow >= injected, (slow, injected, sorted(latencies))
    # Binomial(60, 0.5): sd 3.9; 30 +- 18 is over 4.5 sd.
    assert 12 <= injected <= 48, injected
    assert min(latencies) < 0.38, latencies  # not every request was delayed


def test_service_host_with_any_port_reaches_the_service(mesh: Mesh) -> None:
    """``Host: <svc>.<ns>:<any port>`` reaches the service like ``Host: <svc>.<ns>``: a
    client that names the gateway's port (10000 here, any port) is not sent to ``*``."""
    (solo,) = mesh.backend_service("solo")
    mesh.backend_service("catchall")
    mesh.backend_service("api")
    mesh.route("everything", [{"service": "catchall"}], hosts=["*"])
    # A route on the service's own host applies whatever port the Host names, too.
    mesh.route("api", [{"service": "api"}], hosts=[f"solo.{mesh.ns}"], match={"prefix": "/api"})
    mesh.http_listener()
    mesh.start_envoy()
    host = f"solo.{mesh.ns}"
    mesh.wait_body("solo-0", headers={"host": host})
    for spelling in (host, f"{host}:{solo.port}", f"{host}:{mesh.port}", f"{host}:10000"):
        assert mesh.get("/", {"host": spelling})[1] == "solo-0", spelling
        assert mesh.get("/api/x", {"host": spelling})[1] == "api-0", spelling
    # Other hosts still fall through to the "*" route; a port does not make a new name.
    assert mesh.get("/", {"host": "elsewhere.example:10000"})[1] == "catchall-0"
    assert mesh.get("/", {"host": f"{host}x:10000"})[1] == "catchall-0"
