"""``python -m integration.bench_churn --small`` runs end to end (etcd, meshd per service
size, Delta clients, a burst with route changes) and prints its figure lines with their
targets. Only the lines are checked, never the values: figures live in the benchmark."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.paths import REPO_ROOT

FIGURES = r"p50=\d+\.\dms p99=\d+\.\dms max=\d+\.\dms \(\d+ samples, \d+ route changes"


def test_bench_churn_prints_its_figure_lines() -> None:
    cmd = [sys.executable, "-m", "integration.bench_churn", "--small", "--timeout", "60"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr[-3000:]}"
    for size in (200, 5):
        assert re.search(rf"^300 updates to one service of {size} endpoints written", out, re.M)
    lines = {
        "last": r"^  last update at every client: \d+ ms after its write \(target <= 1000 ms\)",
        "route": rf"^  route change during the burst at every client: {FIGURES}.*target p99",
        "calm": rf"^  the same route change before the burst \(no churn\): {FIGURES}",
        "bare": r"^  the route changes of the burst at a bare etcd watcher .*: \d+(, \d+)* ms",
        "cpu": r"^  meshd CPU: \d+\.\d\d s, \d+\.\d{3} ms per update",
        "calm push": r"^  one endpoint update before the burst \(no churn\), .*: \d+(, \d+)* ms$",
        "floor route": rf"^    a route change at every client: {FIGURES}",
        "floor push": r"^    one push of the whole \d+-endpoint assignment, .*: \d+, \d+ ms$",
    }
    for name, pattern in lines.items():
        assert len(re.findall(pattern, out, re.M)) == 2, (name, out)
    ratio = (
        r"^  meshd CPU per update: 200 endpoints .* 5 endpoints .*: \d+\.\d\dx \(target <= 1.5x\)"
    )
    assert re.search(ratio, out, re.M), out
