"""``python -m integration.bench_soak --small`` runs end to end (etcd, two meshd replicas,
clients that know both, a writer, a restart of each replica) and prints its figure lines.
Only the lines are checked, never the values: figures live in the benchmark, not in tests."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.paths import REPO_ROOT


def test_bench_soak_prints_its_figure_lines() -> None:
    cmd = [sys.executable, "-m", "integration.bench_soak", "--small", "--minutes", "0.3"]
    cmd += ["--restart-every", "7", "--clients", "6"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr[-3000:]}"
    assert re.search(r"^soak: 6 clients \(6 complete\) over 2 replicas", out, re.M), out
    assert re.search(r"^ +\d+s restarted replica a \(\d+\.\d+s down\)", out, re.M), out
    assert re.search(r"^ +\d+s restarted replica b \(\d+\.\d+s down\)", out, re.M), out
    for name in ("a", "b"):
        assert re.search(rf"^  {name}: (\d+s:\d+/-?\d+ ?)+$", out, re.M), out
    assert re.search(r"^  phase 1 \(\d+-\d+s\) [ab]: RSS [\d.]+ -> [\d.]+ MB", out, re.M), out
    assert re.search(r"^RSS growth after the first restart: worst [-+][\d.]+% per phase", out, re.M)
    figures = r"\d+ changes judged, p99 \d+ms, worst \d+ms \(change -?\d+\), \d+ \(change, client\)"
    assert re.search(rf"^staleness: {figures}", out, re.M), out
