"""In-memory registry backend with the etcd backend's contract, for fast unit tests."""

from __future__ import annotations

from adapters.memory.registry import MemoryRegistry

__all__ = ["MemoryRegistry"]
