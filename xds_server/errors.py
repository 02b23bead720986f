"""One flat exception hierarchy for the control plane.

User input never raises out of the control loop: a bad registry entry becomes a
reported :class:`~xds_server.model.problems.Problem`. These exceptions are for
the edges (registry I/O, protocol violations, admin calls).
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error raised by the control plane."""


class ValidationError(MeshError):
    """A value does not satisfy the registry contract.

    ``field`` is a dotted path inside the value (``"destinations[1].weight"``),
    empty when the whole value is at fault.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class RegistryUnavailable(MeshError):
    """The registry backend (etcd) cannot be reached right now."""


class RegistryCompacted(MeshError):
    """A watch asked for a revision the registry has already compacted."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


class RegistryConflict(MeshError):
    """An optimistic-concurrency write lost: the entry changed since it was read."""


class ProtocolError(MeshError):
    """A peer broke the xDS protocol (unknown type URL, malformed request)."""


class TxnTooLarge(ValidationError):
    """A transaction has more operations than the registry takes in one (etcd's
    ``--max-txn-ops``, 128 unless configured): it cannot be written atomically as it is."""

    def __init__(self, operations: int, limit: int) -> None:
        super().__init__(
            "",
            f"{operations} operations in one transaction, etcd takes at most {limit} "
            "(--max-txn-ops)",
        )
        self.operations = operations
        self.limit = limit
