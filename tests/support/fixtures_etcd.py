"""Fixtures that start a real etcd, and registries on it or in memory.

- ``etcd``: a private EmbeddedEtcd per test (~150 ms); the test may stop, restart or
  compact it.
- ``etcd_shared``: one EmbeddedEtcd per session. Tests that use it keep to their own
  ``etcd_prefix`` and must not stop, restart or compact it.
- ``etcd_prefix``: a registry prefix unique to the test (``/t/<n>-<test name>/``).
- ``etcd_registry``: an EtcdRegistry on ``etcd_shared`` under ``etcd_prefix``, closed after.
- ``memory_registry``: a MemoryRegistry under ``/mesh/``, closed after.

:class:`RegistryView` consumes ``updates()`` in the background and checks the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from adapters.memory import MemoryRegistry
from tests.support.wait import eventually
from xds_server.ingest.registry import Changes, Event, Registry, RegistryUpdate, Reset

_prefix_numbers = itertools.count(1)


def start_test_etcd(data_dir: Path) -> EmbeddedEtcd:
    """An EmbeddedEtcd tuned for tests (no fsync, no periodic compaction), started."""
    server = EmbeddedEtcd(data_dir, unsafe_no_fsync=True, auto_compaction_retention=None)
    server.start_sync()
    return server


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EmbeddedEtcd]:
    """A fresh etcd of this test's own, stopped afterwards."""
    server = start_test_etcd(tmp_path / "etcd")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def etcd_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """One etcd for the whole session: isolate by ``etcd_prefix``, never disrupt it."""
    server = start_test_etcd(tmp_path_factory.mktemp("etcd-shared"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix no other test in the session uses."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"/t/{next(_prefix_numbers)}-{name}/"


@pytest.fixture
async def etcd_registry(etcd_shared: EmbeddedEtcd, etcd_prefix: str) -> AsyncIterator[EtcdRegistry]:
    """An EtcdRegistry on the shared etcd under this test's prefix."""
    registry = EtcdRegistry(etcd_shared.endpoint, prefix=etcd_prefix)
    try:
        yield registry
    finally:
        await registry.close()


@pytest.fixture
async def memory_registry() -> AsyncIterator[MemoryRegistry]:
    """An empty MemoryRegistry under ``/mesh/``."""
    registry = MemoryRegistry()
    try:
        yield registry
    finally:
        await registry.close()


class RegistryView:
    """A consumer of ``registry.updates()`` that checks the contract on every update.

    It rebuilds the key -> value view the way a real consumer does (a Reset replaces it,
    Changes patch it) and fails on anything a consumer could trip over: a first update that
    is not a Reset, a revision that goes back, a Changes not newer than what came before (a
    duplicate), a status key or a key outside the prefix. Use ``async with``; the check
    failures surface from :meth:`wait_for` and on exit. Entering waits for the first Reset.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.data: dict[str, bytes] = {}
        self.revision = 0
        self.resets = 0  # complete listings
        self._listing: dict[str, bytes] | None = None  # a listing being received in parts
        self._parts = 0
        self.changes: list[Changes] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RegistryView:
        """Start consuming and return once the first Reset is applied."""
        self._task = asyncio.get_running_loop().create_task(self._consume())
        try:
            await self.wait_for(lambda: self.resets > 0, "the first Reset")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            if task.done():
                task.result()  # re-raise a contract failure
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def events(self) -> list[Event]:
        """Every event of every Changes so far, in order."""
        return [event for changes in self.changes for event in changes.events]

    async def wait_for(
        self, predicate: Callable[[], bool], what: str = "condition", timeout: float = 5.0
    ) -> None:
        """Wait until ``predicate()`` holds; AssertionError on timeout (with the view's
        revision) or at once when ``updates()`` ended (with its failure, if any).

        Checked every 10 ms (for state such as ``connected``, too).
        """

        def probe() -> str | None:
            if self._task is not None and self._task.done():
                self._task.result()
                raise AssertionError(f"updates() ended while waiting for {what}")
            return None if predicate() else f"the view at revision {self.revision}"

        await eventually(probe, what, timeout, until=lambda view: view is None, interval=0.01)

    async def wait_revision(self, revision: int, timeout: float = 5.0) -> None:
        """Wait until the view has seen ``revision``."""
        await self.wait_for(lambda: self.revision >= revision, f"revision {revision}", timeout)

    async def _consume(self) -> None:
        async for update in self.registry.updates():
            self.apply(update)

    def apply(self, update: RegistryUpdate) -> None:
        """Check ``update`` against the contract and fold it into the view."""
        if isinstance(update, Reset):
            assert update.revision >= self.revision, "a Reset went back in revisions"
            if update.part == 0:
                self._listing = {}
            else:
                assert self._listing is not None, "a Reset part without its part 0"
                assert update.part == self._parts + 1, "Reset parts out of order"
                assert update.revision == self.revision, "parts of one listing at two revisions"
            self._parts = update.part
            for entry in update.entries:
                self._check_key(entry.key)
                assert 0 < entry.mod_revision <= update.revision, entry
                assert entry.key not in self._listing, "a key appears twice in one listing"
                self._listing[entry.key] = entry.value
            if not update.more:  # the listing is complete: it replaces the view
                self.data, self._listing = self._listing, None
                self.resets += 1
        else:
            assert self.resets, "the first update must be a Reset"
            assert self._listing is None, "Changes before a listing completed"
            assert update.events, "an empty Changes"
            last = self.revision
            for event in update.events:
                self._check_key(event.key)
                assert last <= event.revision <= update.revision, (self.revision, update)
                assert event.revision > self.revision, f"duplicate or stale event {event}"
                last = event.revision
                if event.kind == "put":
                    self.data[event.key] = event.value
                else:
                    self.data.pop(event.key, None)
            self.changes.append(update)
        self.revision = update.revision

    def _check_key(self, key: str) -> None:
        prefix = self.registry.prefix
        assert key.startswith(prefix), f"{key} is outside {prefix}"
        assert not key.startswith(prefix + "status/"), f"status key {key} delivered"
