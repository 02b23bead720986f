"""Shared pytest configuration: fixtures for real etcd and real Envoy live in plugin modules."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures_etcd",
    "tests.fixtures_envoy",
    "tests.behaviour_mesh",
    "tests.fixtures_admin",
]
