"""``python -m integration.bench_tls`` runs end to end with tiny numbers (real etcd, a
plaintext and a TLS meshd, clients over TLS with a join token) and prints every figure line,
plaintext beside TLS and their ratio, for SotW and Delta. Only the lines are checked, never
the values: timing lives in the benchmark, not in tests."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.paths import REPO_ROOT

NUMBER = r"\d+\.\d+"
LINES = (
    ("[1] {p} connect storm, 4 clients within 0.2 s: all complete", "s"),
    ("[1] {p} connect storm, 4 clients within 0.2 s: meshd CPU", "s"),
    ("[1] {p} connect storm, 4 clients within 0.2 s: meshd RSS per client", "KB"),
    ("[2] {p} fan-out, one change to 4 clients: p50", "ms"),
    ("[2] {p} fan-out, one change to 4 clients: p99", "ms"),
    ("[2] {p} fan-out, one change to 4 clients: meshd CPU per change", "ms"),
)


def test_bench_tls_prints_every_figure_line() -> None:
    args = [
        *("--clients", "4", "--services", "3", "--endpoints", "2", "--changes", "2"),
        *("--block", "1", "--storms", "2", "--spread", "0.2", "--settle", "0.2", "--procs", "1"),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "integration.bench_tls", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr[-3000:]}"
    summary = out.split("\nsummary (", 1)[1]
    for protocol in ("sotw", "delta"):
        for label, unit in LINES:
            figures = rf"plaintext {NUMBER} {unit}, TLS {NUMBER} {unit}, TLS/plaintext "
            line = re.escape(label.format(p=protocol)) + ": " + figures
            assert re.search(rf"^  {line}", summary, re.M), (line, summary)
    # Every client of both sides got its whole config and every change.
    assert "ONLY" not in out and "MISSING" not in out, out
    # Each side was stormed twice per protocol, the first side alternating.
    storms = re.findall(r"^  storm (\d) (plaintext|tls):", out, re.M)
    assert storms == [("1", "plaintext"), ("1", "tls"), ("2", "tls"), ("2", "plaintext")] * 2
