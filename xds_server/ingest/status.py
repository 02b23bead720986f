"""Status keys of rejected entries: an output of each build, written off the push path.

Each batch's :class:`~xds_server.ingest.state.ChangeSet` says which registry keys became
rejected or valid again; :class:`StatusWriter` keeps the desired ``<prefix>status/errors/``
value per key and one background task writes them, so a slow or unreachable etcd never
delays a push.
"""

from __future__ import annotations

import asyncio
import json
import logging

from xds_server.errors import RegistryUnavailable, ValidationError
from xds_server.ingest.registry import Registry
from xds_server.model import Problem, status_error_key
from xds_server.model.entries import MAX_FIELD_CHARS, MAX_REASON_CHARS, bounded
from xds_server.model.names import MAX_STATUS_REST
from xds_server.model.view import ChangeSet

__all__ = ["StatusWriter", "status_value"]

log = logging.getLogger("meshd.controller")


class StatusWriter:
    """Writes ``<prefix>status/errors/...`` for rejected entries, off the push path.

    Desired state is kept in memory and written by one background task, so a
    slow or unreachable etcd never delays a push and bursts collapse into the
    last value per key.
    """

    def __init__(self, registry: Registry, prefix: str) -> None:
        self.registry = registry
        self.prefix = prefix
        self._dirty: dict[str, bytes | None] = {}
        self._wake = asyncio.Event()

    def update(self, changes: ChangeSet) -> None:
        """Take the problems ``changes`` set or cleared as the keys' desired values."""
        for key, problem in changes.problems_set.items():
            self._dirty[status_error_key(key, self.prefix)] = status_value(problem)
        for key in changes.problems_cleared:
            self._dirty[status_error_key(key, self.prefix)] = None
        if self._dirty:
            self._wake.set()

    async def run(self) -> None:
        """Write pending values forever, backing off while etcd refuses (cancel to stop)."""
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                if await self._write_pass():
                    backoff = 0.05
                    continue
                await asyncio.sleep(backoff)  # etcd down or a write refused: retry later
                backoff = min(backoff * 2, 2.0)

    async def _write_pass(self) -> bool:
        """Try every pending status write once; False when any has to be retried.

        One key that etcd refuses must not hold back the others: a write etcd refuses as
        invalid (too large) is dropped and logged (ListErrors still reports the problem),
        another failure goes to the back of the queue. etcd being unreachable ends the pass
        (every write would wait for it).
        """
        ok = True
        for key, value in list(self._dirty.items()):
            try:
                if value is None:
                    await self.registry.delete(key)
                else:
                    await self.registry.put(key, value)
            except RegistryUnavailable as exc:  # keep the desired state, retry later
                log.warning("cannot write status %s: %s", key, exc)
                return False
            except ValidationError as exc:  # etcd refuses this very write: retrying cannot help
                log.error("cannot write status %s, not retried: %s", key, exc)
            except Exception as exc:
                log.warning("cannot write status %s: %s", key, exc)
                if self._dirty.get(key, b"") == value:
                    del self._dirty[key]
                    self._dirty[key] = value  # (to the back)
                ok = False
                continue
            if self._dirty.get(key, b"") == value:
                del self._dirty[key]
        return ok


def status_value(problem: Problem) -> bytes:
    """The status value of a rejected entry, its strings bounded (and saying so where cut):
    etcd refuses a request over 1.5 MiB, and the value must always be writable."""
    return json.dumps(
        {
            "key": bounded(problem.key, MAX_STATUS_REST),
            "field": bounded(problem.field, MAX_FIELD_CHARS),
            "error": bounded(problem.message, MAX_FIELD_CHARS + MAX_REASON_CHARS + 64),
            "revision": problem.revision,
            "last_good_kept": problem.last_good_kept,
            # (a warning: the entry is in force as it is, e.g. a certificate expiring soon)
            "level": "warning" if problem.warning else "error",
        },
        sort_keys=True,
    ).encode()
