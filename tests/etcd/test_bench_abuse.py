"""``python -m integration.bench_abuse --small`` runs end to end (etcd, meshd, well-behaved
clients, every abuser at a tiny size) and prints its figure lines. Only the lines are
checked, never the values: figures live in the benchmark, not in tests."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.paths import REPO_ROOT

FIGURES = r"p50=\d+\.\d+ms p99=\d+\.\d+ms max=\d+\.\d+ms"


def test_bench_abuse_prints_its_figure_lines() -> None:
    cmd = [sys.executable, "-m", "integration.bench_abuse", "--small", "--clients", "4"]
    cmd += ["--services", "10", "--endpoints", "2", "--changes", "3", "--settle", "0.3"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr[-3000:]}"
    assert re.search(r"^meshd RSS: baseline \d+ MB, peak \d+ MB .* after \d+ MB", out, re.M), out
    assert re.search(rf"^change latency without abuse: {FIGURES}", out, re.M), out
    assert re.search(rf"^change latency under abuse: +{FIGURES}", out, re.M), out
    assert re.search(r"^p99 under abuse / without: \d+\.\d+x", out, re.M), out
    assert re.search(r"^slowest etcd write of a change .*: \d+ ms without abuse, \d+ ms", out, re.M)
    for abuser in ("names", "flips", "never read", "node clusters", "half-open"):
        assert re.search(rf"^  abuser: .*{abuser}", out, re.M), (abuser, out)


def test_bench_abuse_aims_the_abusers_at_a_decoy_when_asked() -> None:
    """``--decoy``: the same attack on a second meshd, the clients' one untouched (the
    floor: what the attack costs the clients through the machine alone)."""
    cmd = [sys.executable, "-m", "integration.bench_abuse", "--small", "--clients", "4"]
    cmd += ["--services", "10", "--endpoints", "2", "--changes", "3", "--settle", "0.3"]
    cmd += ["--decoy", "--only", "flip,deaf"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr[-3000:]}"
    assert re.search(r"^the abusers were aimed at a decoy meshd", out, re.M), out
    assert re.search(rf"^change latency under abuse: +{FIGURES}", out, re.M), out
    for abuser in ("flips", "never read"):
        assert re.search(rf"^  abuser: \d+ .*{abuser}", out, re.M), (abuser, out)
    # The decoy answered them: the burst of the client that never reads took turns there.
    assert re.search(r"^  refusals: .*limit=request_burst \d+", out, re.M), out
