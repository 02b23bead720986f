"""Helpers shared by the test tiers (``tests/unit``, ``tests/etcd``, ``tests/e2e``).

Nothing here is a test: fixture plugins (``fixtures_*``, ``behaviour_mesh``, ``rig``, listed in
``tests/conftest.py``), rigs and clients, Hypothesis strategies, golden-file helpers and the one
polling helper, :mod:`tests.support.wait`. Test files import from here, never from each other.
"""
