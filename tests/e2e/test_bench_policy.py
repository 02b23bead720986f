"""``python -m integration.bench_policy`` runs end to end with a tiny N and prints its
figure lines (policy edits, route edits, the target line). Only the lines are checked,
never the values: timing lives in the benchmark, not in tests."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.paths import REPO_ROOT

FIGURES = r"p50=\d+\.\d+ms p99=\d+\.\d+ms max=\d+\.\d+ms"


def test_bench_policy_prints_its_figure_lines() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "integration.bench_policy", "--edits", "3"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr[-3000:]}"
    assert re.search(rf"^policy edit .*\(3 edits\): {FIGURES}", out, re.M), out
    assert re.search(rf"^route edit .*\(3 edits\): {FIGURES}", out, re.M), out
    target = r"^target: policy edit p99 under 20 ms on this machine: (pass|fail) "
    assert re.search(target, out, re.M), out
