"""``meshctl health``, ``topology``, ``recommend`` and ``red`` as a real process against a
real meshd.

The registry, verdicts and load are those of ``tests/support/health_feed.py`` (fed through
the HDS / LRS entry points of the running meshd).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.debian_tools import ensure
from tests.support.fixtures_admin import AdminMesh
from tests.support.health_feed import feed_load, report, seed_mesh
from tests.support.meshctl import meshctl, spawn_meshctl


def rows(out: str) -> list[list[str]]:
    """A table's lines split on runs of two or more spaces (cells may contain one)."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]


async def test_health_table_json_yaml_and_errors(admin_mesh: AdminMesh) -> None:
    await seed_mesh(admin_mesh)
    report(admin_mesh.app, {"ep-0": True, "ep-1": False, "db-0": True})
    admin = ("--admin", admin_mesh.address)
    (code, out, err), (jcode, jout, _), (ycode, yout, _) = await asyncio.gather(
        meshctl("health", *admin),
        meshctl("health", "web", "-n", "shop", "-o", "json", *admin),
        meshctl("health", "-n", "shop", "-o", "yaml", *admin),
    )
    assert code == 0, err
    table = rows(out)
    assert table[0] == ["SERVICE", "HEALTHY", "ZONES", "CHECK", "NOTE"]
    assert table[1] == ["ops/db", "1/1", "- 1/1", "hds", "-"]
    assert table[2] == ["shop/api", "0/1", "- 0/1", "none", "-"]
    assert table[3] == ["shop/web", "1/4", "zone-a 1/2, zone-b 0/2", "hds", "-"]
    header = ["SERVICE", "ENDPOINT", "ADDRESS", "ZONE", "STATUS", "REPORTS(H/U)", "CHECKERS"]
    assert table[4] == header
    by_endpoint = {r[1]: r for r in table[5:]}
    assert by_endpoint["ep-0"] == [
        "shop/web",
        "ep-0",
        "127.0.0.1",
        "zone-a",
        "HEALTHY",
        "3/0",
        "c1,c2,c3",
    ]
    assert [by_endpoint[e][4] for e in ("ep-1", "ep-2", "ep-3", "api-0", "db-0")] == [
        "UNHEALTHY",
        "UNKNOWN",
        "DRAINING",
        "UNKNOWN",
        "HEALTHY",
    ]

    assert jcode == 0
    (web,) = json.loads(jout)["services"]
    assert web["service"] == "shop/web" and (web["healthy"], web["total"]) == (1, 4)
    assert {e["id"]: e["status"] for e in web["endpoints"]} == {
        "ep-0": "HEALTHY",
        "ep-1": "UNHEALTHY",
        "ep-2": "UNKNOWN",
        "ep-3": "DRAINING",
    }
    assert web["zones"] == [
        {"zone": "zone-a", "healthy": 1, "total": 2},
        {"zone": "zone-b", "healthy": 0, "total": 2},
    ]
    assert web["all_unhealthy"] is False and web["check_mode"] == "hds"
    assert ycode == 0
    assert [s["service"] for s in yaml.safe_load(yout)["services"]] == ["shop/api", "shop/web"]

    # All unhealthy: the table says Envoy is in panic mode (traffic still goes to all).
    report(admin_mesh.app, {"ep-0": False, "ep-2": False})
    (code, out, _), (ncode, _, nerr) = await asyncio.gather(
        meshctl("health", "shop/web", *admin), meshctl("health", "nope", "-n", "shop", *admin)
    )
    assert code == 0
    assert rows(out)[1] == [
        "shop/web",
        "0/4",
        "zone-a 0/2, zone-b 0/2",
        "hds",
        "ALL UNHEALTHY (Envoy panic mode)",
    ]
    assert ncode == 1 and "NOT_FOUND" in nerr and "shop/nope" in nerr


async def test_topology_table_json_dot(admin_mesh: AdminMesh) -> None:
    await seed_mesh(admin_mesh)
    feed_load(admin_mesh.app)
    admin = ("--admin", admin_mesh.address)
    (code, out, err), (jcode, jout, _), (dcode, dot, derr) = await asyncio.gather(
        meshctl("topology", *admin),
        meshctl("topology", "--window", "30", "-o", "json", *admin),
        meshctl("topology", "-o", "dot", *admin),
    )
    assert code == 0, err
    assert rows(out) == [
        ["SOURCE", "DESTINATION", "RPS", "ERROR_RATE", "IN_FLIGHT", "IDLE", "ALLOWED"],
        ["gateway", "ops/db", "5.00", "0.0%", "0", "no", "yes"],
        ["gateway", "shop/api", "0.00", "0.0%", "0", "yes", "yes"],
        ["gateway", "shop/web", "20.00", "10.0%", "0", "no", "yes"],
        ["shop/web", "shop/api", "2.00", "0.0%", "0", "no", "no"],
        ["window 60s"],
    ]

    assert jcode == 0
    doc = json.loads(jout)
    assert doc["window_seconds"] == 30
    assert {n["id"]: n["kind"] for n in doc["nodes"]} == {
        "gateway": "proxy_group",
        "ops/db": "service",
        "shop/api": "service",
        "shop/web": "service",
    }
    web = next(e for e in doc["edges"] if e["destination"] == "shop/web")
    assert web == {
        "source": "gateway",
        "destination": "shop/web",
        "rps": 20.0,
        "error_rate": pytest.approx(0.1),
        "in_flight": 0,
        "idle": False,
        "allowed": True,
        "endpoints": [
            {
                "subset": "",
                "endpoint": "127.0.0.1:9001",
                "rps": 12.0,
                "error_rate": 0.0,
                "in_flight": 0,
            },
            {
                "subset": "",
                "endpoint": "127.0.0.1:9002",
                "rps": 8.0,
                "error_rate": 0.25,
                "in_flight": 0,
            },
        ],
    }

    assert dcode == 0, derr
    lines = dot.splitlines()
    assert lines[0] == "digraph mesh {" and lines[-1] == "}"
    assert '  "gateway" [shape=ellipse];' in lines
    assert '  "shop/web";' in lines
    assert (
        '  "gateway" -> "shop/api" [label="idle", style=dashed, fontcolor=gray50, color=gray50];'
        in lines
    )
    assert (
        '  "gateway" -> "shop/web" [label="20.0 rps, 10.0% errors", penwidth=2.3, color=red];'
        in lines
    )
    assert '  "shop/web" -> "shop/api" [label="2.0 rps (no route)", penwidth=1.5, color=red];' in (
        lines
    )

    code, _, err = await meshctl("topology", "--window", "100000", *admin)
    assert code == 1 and "window_seconds: must be at most 300" in err
    code, _, err = await meshctl("topology", "-o", "png", *admin)
    assert code == 2 and "invalid choice: 'png'" in err  # argparse's usage error
    code, _, err = await meshctl("health", "-o", "dot", *admin)
    assert code == 2 and "invalid choice: 'dot'" in err  # dot is for topology only


FAKE_DOT = """\
#!{python}
import sys
assert sys.argv[1:] == ["-Tsvg"], sys.argv
src = sys.stdin.read()
assert src.startswith("digraph mesh {{"), src[:40]
sys.stdout.write("<svg fake-dot>" + str(src.count("->")) + " edges</svg>\\n")
"""


async def test_topology_svg_through_dot_on_path(admin_mesh: AdminMesh, tmp_path: Path) -> None:
    """``-o svg`` pipes the DOT text through ``dot -Tsvg`` found on PATH (a stand-in here,
    so the wiring is tested on machines without Graphviz), and says clearly when there is
    no ``dot`` at all."""
    await seed_mesh(admin_mesh)
    feed_load(admin_mesh.app)
    admin = ("--admin", admin_mesh.address)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dot").write_text(FAKE_DOT.format(python=sys.executable))
    (fake / "dot").chmod(0o755)
    empty = tmp_path / "empty"
    empty.mkdir()
    (code, out, err), (ncode, nout, nerr) = await asyncio.gather(
        meshctl("topology", "-o", "svg", *admin, env={"PATH": str(fake)}),
        meshctl("topology", "-o", "svg", *admin, env={"PATH": str(empty)}),
    )
    assert code == 0, err
    assert out == "<svg fake-dot>4 edges</svg>\n"
    assert ncode == 1 and nout == ""
    assert "-o svg needs Graphviz's `dot` on PATH" in nerr and "-o dot" in nerr


async def test_topology_svg_with_real_graphviz(admin_mesh: AdminMesh) -> None:
    ensure("graphviz", "dot")
    await seed_mesh(admin_mesh)
    feed_load(admin_mesh.app)
    code, out, err = await meshctl("topology", "-o", "svg", "--admin", admin_mesh.address)
    assert code == 0, err
    assert "<svg" in out and "shop/web" in out and "idle" in out


async def test_recommend_table_and_json(admin_mesh: AdminMesh) -> None:
    await seed_mesh(admin_mesh)
    admin = ("--admin", admin_mesh.address)
    code, out, _ = await meshctl("recommend", *admin)
    assert code == 0
    before = rows(out)
    assert before[1] == ["ops/db", "0.00", "100", "1", "1", "ok"]
    assert before[2] == ["shop/web", "0.00", "5", "3", "1", "scale_down"]  # no load yet
    feed_load(admin_mesh.app)
    (code, out, _), (jcode, jout, _) = await asyncio.gather(
        meshctl("recommend", *admin), meshctl("recommend", "--window", "30", "-o", "json", *admin)
    )
    assert code == 0
    assert rows(out) == [
        ["SERVICE", "RPS", "TARGET_PER_ENDPOINT", "ENDPOINTS", "RECOMMENDED", "ACTION"],
        ["ops/db", "5.00", "100", "1", "1", "ok"],
        ["shop/web", "20.00", "5", "3", "4", "scale_up"],
        ["window 60s"],
    ]
    assert jcode == 0
    doc = json.loads(jout)
    assert doc["window_seconds"] == 30
    assert doc["services"][1] == {
        "service": "shop/web",
        "observed_rps": 20.0,
        "target_rps_per_endpoint": 5,
        "current_endpoints": 3,
        "recommended_endpoints": 4,
        "action": "scale_up",
    }


async def test_red_table_json_yaml(admin_mesh: AdminMesh) -> None:
    await seed_mesh(admin_mesh)
    feed_load(admin_mesh.app)
    admin = ("--admin", admin_mesh.address)
    (
        (code, out, err),
        (jcode, jout, jerr),
        (ycode, yout, _),
        (ncode, _, nerr),
    ) = await asyncio.gather(
        meshctl("red", *admin),
        meshctl("red", "shop/web", "--window", "30", "-o", "json", *admin),
        meshctl("red", "-n", "ops", "-o", "yaml", *admin),
        meshctl("red", "nope", "-n", "shop", *admin),
    )
    assert code == 0, err
    assert rows(out) == [
        ["SERVICE", "RPS", "ERRORS/S", "ERROR_RATE", "IN_FLIGHT", "DURATION"],
        ["ops/db", "5.00", "0.00", "0.0%", "0", "-"],
        ["shop/api", "2.00", "0.00", "0.0%", "0", "-"],
        ["shop/web", "20.00", "2.00", "10.0%", "0", "-"],
        ["SERVICE", "SUBSET", "ENDPOINT", "RPS", "ERROR_RATE", "IN_FLIGHT"],
        ["shop/web", "-", "127.0.0.1:9001", "12.00", "0.0%", "0"],
        ["shop/web", "-", "127.0.0.1:9002", "8.00", "25.0%", "0"],
        ["window 60s (duration: not in load reports; see Envoy's stats)"],
    ]
    assert jcode == 0, jerr
    doc = json.loads(jout)
    assert doc["window_seconds"] == 30
    (web,) = doc["services"]
    assert web["service"] == "shop/web" and web["rps"] == 20.0 and web["error_rps"] == 2.0
    assert web["duration_ms"] is None  # unknown, not 0
    assert [(e["endpoint"], e["rps"], e["error_rate"]) for e in web["endpoints"]] == [
        ("127.0.0.1:9001", 12.0, 0.0),
        ("127.0.0.1:9002", 8.0, 0.25),
    ]
    assert ycode == 0
    assert [s["service"] for s in yaml.safe_load(yout)["services"]] == ["ops/db"]
    assert ncode == 1 and "NOT_FOUND" in nerr and "shop/nope" in nerr
    code, _, err = await meshctl("red", "--window", "-1", *admin)
    assert code == 1 and "--window must be >= 0" in err


async def test_viewer_of_another_namespace(admin_mesh_tokens: AdminMesh) -> None:
    mesh = admin_mesh_tokens
    await seed_mesh(mesh, "edit-all")
    report(mesh.app, {"ep-0": True, "db-0": True})
    feed_load(mesh.app)
    env = {"MESHCTL_ADMIN": mesh.address, "MESHCTL_TOKEN": "view-shop"}
    (code, _, err), (hcode, hout, _), (tcode, tout, _), (rcode, rout, _) = await asyncio.gather(
        meshctl("health", "ops/db", env=env),
        meshctl("health", "-o", "json", env=env),
        meshctl("topology", "-o", "json", env=env),
        meshctl("recommend", "-o", "json", env=env),
    )
    (redcode, redout, _), (rdcode, _, rderr) = await asyncio.gather(
        meshctl("red", "-o", "json", env=env), meshctl("red", "ops/db", env=env)
    )
    assert redcode == 0 and [s["service"] for s in json.loads(redout)["services"]] == [
        "shop/api",
        "shop/web",
    ]
    assert rdcode == 2 and "PERMISSION_DENIED" in rderr
    assert code == 2 and "PERMISSION_DENIED" in err and "ops" in err
    assert hcode == 0 and [s["service"] for s in json.loads(hout)["services"]] == [
        "shop/api",
        "shop/web",
    ]
    assert tcode == 0 and "ops/" not in tout and "shop/web" in tout
    assert rcode == 0 and [s["service"] for s in json.loads(rout)["services"]] == ["shop/web"]
    code, out, err = await meshctl("health", "ops/db", "--token", "edit-all", env=env)
    assert code == 0 and "ops/db" in out, err


async def test_watch_shows_health_transitions(admin_mesh: AdminMesh) -> None:
    await seed_mesh(admin_mesh)
    proc = await spawn_meshctl("watch", "--type", "health", "--admin", admin_mesh.address)
    try:
        await admin_mesh.wait_for(lambda: admin_mesh.app.events.watchers > 0, "the watch", 15)
        report(admin_mesh.app, {"ep-1": False})
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert " health key=" in line
        assert f"key={admin_mesh.prefix}endpoints/shop/web/ep-1" in line
        assert line.rstrip().endswith("shop/web/ep-1 UNKNOWN -> UNHEALTHY (shop/web: 0/4 healthy)")
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0
