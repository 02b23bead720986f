"""The admin gRPC API: registry CRUD over etcd, proxy status, events, auth (issue 5).

``api/`` is generated from ``proto/apg/mesh/admin/v1/admin.proto`` by ``proto/generate.py``.
"""
