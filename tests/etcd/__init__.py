"""etcd tier: starts a real etcd and/or meshd (in-process or as a process), never Envoy."""
