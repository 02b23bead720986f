"""Translating a whole registry state at once: what an incremental translation must equal."""

from __future__ import annotations

from typing import Any

from xds_server.ingest.state import RegistryState
from xds_server.model.view import ChangeSet
from xds_server.translate import Translator

Versions = dict[str, dict[str, str]]
"""Per type URL, each served resource's version."""


def translate_afresh(state: RegistryState, *inputs: Any) -> Translator:
    """A new Translator that has translated everything in force in ``state`` (``inputs``:
    what :meth:`Translator.update` takes after the change set, such as DNS answers)."""
    translator = Translator()
    translator.update(
        state,
        ChangeSet(
            services=set(state.services),
            endpoints=set(state.endpoints),
            routes=set(state.routes),
            listeners=set(state.listeners),
        ),
        *inputs,
    )
    return translator


def served_versions(translator: Translator) -> Versions:
    """What ``translator`` serves, as versions per type and name."""
    return {t: {n: r.version for n, r in res.items()} for t, res in translator.served.items()}
