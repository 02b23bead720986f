"""Snapshot cache: one serialized copy per resource, scopes as name selections.

Servers use it through :mod:`xds_server.cache.contract`; the control loop applies
translations to it.
"""

from __future__ import annotations

from xds_server.cache.contract import (
    WILDCARD_TYPES,
    ConfigReader,
    ConfigSink,
    ConfigWatcher,
    Pending,
    ScopeView,
    Watcher,
)
from xds_server.cache.snapshot import ConfigCache

__all__ = [
    "WILDCARD_TYPES",
    "ConfigCache",
    "ConfigReader",
    "ConfigSink",
    "ConfigWatcher",
    "Pending",
    "ScopeView",
    "Watcher",
]
