"""APG Service Mesh control plane: etcd registry -> validated model -> Envoy xDS."""

from __future__ import annotations

__version__ = "0.1.0"
