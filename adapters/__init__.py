"""I/O edges of the control plane: registry backends (etcd, in-memory)."""
