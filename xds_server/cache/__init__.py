"""Snapshot cache: one serialized copy per resource, scopes as name selections."""

from __future__ import annotations

from xds_server.cache.snapshot import WILDCARD_TYPES, ConfigCache, Scope, Watcher

__all__ = ["WILDCARD_TYPES", "ConfigCache", "Scope", "Watcher"]
