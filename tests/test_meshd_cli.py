"""The meshd process's own settings (flags are covered by the end-to-end tests)."""

from __future__ import annotations

import gc

from xds_server.cli.meshd import GC_YOUNG_THRESHOLD, tune_collector


def test_tune_collector_raises_the_young_threshold_and_keeps_the_older_ones() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 7, 9)
        tune_collector()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 7, 9)
        gc.set_threshold(GC_YOUNG_THRESHOLD * 2, 7, 9)
        tune_collector()  # a higher one set before stays
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD * 2, 7, 9)
    finally:
        gc.set_threshold(*saved)
