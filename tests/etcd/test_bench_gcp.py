"""``python -m integration.bench_gcp --small`` runs end to end (real etcd, meshd and the
go-control-plane server of ``integration/gcp/``, built with the machine's Go toolchain, the
same simulated clients against both) and prints every figure line, meshd beside
go-control-plane and their ratio, for SotW and Delta. The values are never checked (timing
lives in the benchmark); what is checked is that both servers served the same resources
for the registry, and that every client of both got its config and every change."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from integration.gcp_server import go_tool
from tests.support.paths import REPO_ROOT

NUMBER = r"\d+(\.\d+)?"
LINES = (
    ("[1] cold start 300x3: start -> every resource servable", "s"),
    ("[1] cold start 300x3: start -> first client complete", "s"),
    ("[1] cold start 300x3: server RSS after", "MB"),
    ("[2] {p} connect storm, 20 clients within 0.2 s: all complete", "s"),
    ("[2] {p} connect storm, 20 clients within 0.2 s: server CPU", "s"),
    ("[2] {p} connect storm, 20 clients within 0.2 s: server RSS per client", "KB"),
    ("[3] {p} endpoint change to 20 clients: p50", "ms"),
    ("[3] {p} endpoint change to 20 clients: p99", "ms"),
    ("[3] {p} endpoint change to 20 clients: server CPU per change", "ms"),
    ("[4] {p} route change to 20 clients: p50", "ms"),
    ("[4] {p} route change to 20 clients: p99", "ms"),
    ("[4] {p} route change to 20 clients: server CPU per change", "ms"),
)


def test_bench_gcp_small_prints_every_figure_line_for_the_same_resources() -> None:
    if go_tool() is None:
        pytest.skip("no Go toolchain on this machine (GO, PATH or /usr/local/go/bin/go)")
    result = subprocess.run(
        [sys.executable, "-m", "integration.bench_gcp", "--small"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        # A first build on a clean Go module and build cache takes minutes here.
        timeout=1200,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr[-3000:]}"
    print(out.splitlines()[0])  # how the Go server was had: built (and how long) or cached
    summary = out.split("\nsummary (", 1)[1]
    same = r"^  \[0\] resource shapes: the same messages from both servers"
    assert re.search(same, summary, re.M), summary
    for protocol in ("sotw", "delta"):
        for label, unit in LINES:
            figures = (
                rf"meshd {NUMBER} {unit}, go-control-plane {NUMBER} {unit}, meshd/go-control-plane "
            )
            line = re.escape(label.format(p=protocol)) + ": " + figures
            assert re.search(rf"^  {line}", summary, re.M), (line, summary)
    # Every client of both sides got its whole config and every change.
    assert "ONLY" not in out and "MISSING" not in out and "!!" not in out, out
