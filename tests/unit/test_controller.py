"""Controller bookkeeping that needs no network: how it applies batches."""

from __future__ import annotations

import gc

from adapters.memory import MemoryRegistry
from xds_server.cache import ConfigCache
from xds_server.ingest.controller import BIG_BATCH, Controller
from xds_server.ingest.registry import Entry, Reset
from xds_server.metrics import Metrics
from xds_server.model.view import ChangeSet, RegistryView
from xds_server.translate.inputs import NO_INPUTS, Inputs
from xds_server.translate.translator import Delta


def test_the_collector_is_paused_for_the_part_that_completes_a_big_listing() -> None:
    """A listing's last part can be one key and still bring the translation of them all:
    the pause follows the listing's size, not the part's."""
    ctl = Controller(MemoryRegistry(), ConfigCache(), Metrics())
    enabled_while_translating: list[bool] = []
    translate = ctl.translator.update

    def update(state: RegistryView, changes: ChangeSet, inputs: Inputs = NO_INPUTS) -> Delta:
        enabled_while_translating.append(gc.isenabled())
        return translate(state, changes, inputs)

    ctl.translator.update = update  # type: ignore[method-assign]
    services = tuple(
        Entry(f"/mesh/services/default/s{i}", b'{"port": 80}', 2) for i in range(BIG_BATCH)
    )
    last = (Entry("/mesh/services/default/last", b'{"port": 80}', 2),)
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        ctl.apply_batch([(0.0, Reset(2, services, 0, more=True))])
        ctl.apply_batch([(0.0, Reset(2, last, 1, more=False))])
        assert enabled_while_translating == [False]
        assert gc.isenabled()
        assert len(ctl.state.services) == BIG_BATCH + 1
        # A small change after the listing is applied with the collector running.
        ctl.apply_batch([(0.0, Reset(3, (*services, *last), 0, more=False))])
        small = (Entry("/mesh/services/default/one", b'{"port": 81}', 4),)
        ctl.apply_batch([(0.0, Reset(4, small, 0, more=False))])
        assert enabled_while_translating[-1] is True
    finally:
        if not was_enabled:
            gc.disable()
        gc.unfreeze()  # (the controller froze what the pause built: give it back)
