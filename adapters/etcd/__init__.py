"""etcd registry backend: :class:`EtcdRegistry`, and :class:`EmbeddedEtcd` to run a private etcd."""

from __future__ import annotations

from adapters.etcd.embedded import EmbeddedEtcd, EmbeddedEtcdError, find_etcd_binary
from adapters.etcd.registry import EtcdRegistry

__all__ = ["EmbeddedEtcd", "EmbeddedEtcdError", "EtcdRegistry", "find_etcd_binary"]
