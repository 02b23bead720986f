"""Fixtures that start a real etcd (filled in by the etcd adapter work)."""
