"""Shared pytest configuration.

Fixtures for real etcd, real Envoy, meshd's admin API, the behaviour tests and the end-to-end
rig live in plugin modules of :mod:`tests.support`. Tests live in one tier folder each, and
the folder gives every test in it the marker of the same name (registered in pyproject.toml):

- ``tests/unit``: in-process only, no network and no subprocess (``make test-fast``);
- ``tests/etcd``: starts a real etcd and/or meshd, but no Envoy;
- ``tests/e2e``: real Envoy, real gRPC xDS clients, Prometheus, the demo, Docker checks and
  other outside tools: everything end to end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.fixtures_etcd",
    "tests.support.fixtures_envoy",
    "tests.support.behaviour_mesh",
    "tests.support.fixtures_admin",
    "tests.support.rig",
]

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "etcd", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tier; a test outside the tier folders is an error."""
    for item in items:
        path = item.path.resolve()
        if not path.is_relative_to(TESTS):
            continue
        tier = path.relative_to(TESTS).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(
                f"{item.nodeid}: a test file belongs in one of tests/{{{','.join(TIERS)}}}/"
            )
        item.add_marker(tier)
