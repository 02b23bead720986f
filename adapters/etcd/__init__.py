"""etcd registry backend: :class:`EtcdRegistry` (one member or a cluster, TLS, users), and
:class:`EmbeddedEtcd` to run a private etcd."""

from __future__ import annotations

from adapters.etcd.embedded import EmbeddedEtcd, EmbeddedEtcdError, ServerTls, find_etcd_binary
from adapters.etcd.errors import EtcdAccessError
from adapters.etcd.members import EtcdTls, EtcdUser
from adapters.etcd.registry import EtcdRegistry

__all__ = [
    "EmbeddedEtcd",
    "EmbeddedEtcdError",
    "EtcdAccessError",
    "EtcdRegistry",
    "EtcdTls",
    "EtcdUser",
    "ServerTls",
    "find_etcd_binary",
]
