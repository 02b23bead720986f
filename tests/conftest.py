"""Shared pytest configuration: fixtures for real etcd, real Envoy, meshd's admin API, the
behaviour tests and the end-to-end rig live in plugin modules of :mod:`tests.support`."""

from __future__ import annotations

pytest_plugins = [
    "tests.support.fixtures_etcd",
    "tests.support.fixtures_envoy",
    "tests.support.behaviour_mesh",
    "tests.support.fixtures_admin",
    "tests.support.rig",
]
