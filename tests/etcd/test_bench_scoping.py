"""The scoping benchmark: its registry is what it says, and a small run prints every figure
with the sidecars that do not call the changed service sent nothing (so the benchmark cannot
rot between long runs). No timing is asserted: figures are for ``python -m
integration.bench_scoping`` on a quiet machine, printed, never checked here."""

from __future__ import annotations

import subprocess
import sys

from integration.bench_scoping import declarations, parse_args, registry_entries


def test_the_declarations_are_what_the_run_says() -> None:
    args = parse_args(["--small"])
    declared = declarations(args)
    target = f"s{args.sidecars}"
    assert len(declared) == args.sidecars
    for i, names in enumerate(declared):
        assert len(set(names)) == len(names) == args.upstreams
        assert f"s{i}" not in names  # (not itself)
        assert (target in names) == (i < args.dependents)
    assert declarations(args) == declared  # seeded: the same every run
    scoped = dict(registry_entries(args, scoped=True))
    plain = dict(registry_entries(args, scoped=False))
    assert scoped["services/default/s0"]["upstreams"] == declared[0]
    assert "upstreams" not in plain["services/default/s0"]
    assert "upstreams" not in scoped[f"services/default/{target}"]
    assert len(scoped) == len(plain) == 1 + args.services * (1 + args.endpoints)


def test_a_small_run_prints_every_figure_and_sends_the_others_nothing() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "integration.bench_scoping", "--small"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = out.stdout.split("\nsummary", 1)[1]
    for figure in ("[1] config per sidecar", "[2] meshd memory per client", "[4] 2 edits"):
        assert figure in summary, out.stdout
    assert summary.count("[3] fan-out") == 2
    assert "the other 30 sidecars were sent 0 responses" in summary
    assert "the other sidecars 0 (target 0)" in summary
