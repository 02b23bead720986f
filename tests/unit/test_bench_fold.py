"""The cold-start CPU benchmark runs and prints both figures (a tiny registry)."""

from __future__ import annotations

import gc
import sys

import pytest

from integration import bench_fold


def test_bench_fold_prints_fold_and_translate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_fold", "--services", "3", "--endpoints", "2"])
    bench_fold.main()
    out = capsys.readouterr().out
    assert "fold: 10 entries in 1 pages" in out  # 3 services, 6 endpoints, 1 listener
    assert "translate: 8 resources" in out  # 3 clusters and assignments, listener, routes
    assert gc.isenabled()  # it pauses the collector as meshd does, and turns it back on
