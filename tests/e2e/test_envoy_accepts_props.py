"""Property: whatever registry content validation accepts translates to config real Envoy
accepts.

Hypothesis generates whole registries (services, endpoints, listeners, routes with every
field of the schema, values drawn from the full ranges the model allows, and some that it
refuses; listeners' ``tls`` with registry secrets: certificates, a chain, a client CA,
some missing or of the wrong shape), meshd's state keeps what validates, the translator
turns it into Envoy resources, and ``envoy --mode validate`` checks a bootstrap embedding
them as static resources (EDS and RDS inlined, see tests/support/envoy_validate.py).

Starting Envoy costs ~0.3 s, so the examples are collected first and validated afterwards,
several Envoys at a time: on this 2-core machine 100 examples take ~10-14 s in all. A
failure names the example's file, which holds the registry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings

from tests.support.envoy_validate import envoy_validate, static_bootstrap
from tests.support.golden import translate
from tests.support.registry_strategies import registries
from xds_server.ingest.registry import Entry

# ENVOY_PROPS_EXAMPLES=1000 for a longer hunt; the default keeps the suite's share ~10 s.
EXAMPLES = int(os.environ.get("ENVOY_PROPS_EXAMPLES", "100"))
PARALLEL = 4

_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "database": None,  # examples are checked after the run: nothing to replay from a DB
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _entries(registry: dict[str, dict[str, Any]]) -> tuple[Entry, ...]:
    return tuple(
        Entry(key, json.dumps(value).encode(), i)
        for i, (key, value) in enumerate(registry.items(), start=1)
    )


def test_validated_registries_translate_to_config_envoy_accepts(tmp_path: Path) -> None:
    written: dict[str, Path] = {}
    accepted_routes = 0

    @settings(max_examples=EXAMPLES, **_SETTINGS)
    @given(registries())
    def collect(registry: dict[str, dict[str, Any]]) -> None:
        nonlocal accepted_routes
        state, translator, _ = translate(_entries(registry))
        accepted_routes += len(state.routes)
        name = f"ex{len(written):03d}"
        (tmp_path / f"{name}.registry.json").write_text(json.dumps(registry, indent=1))
        path = tmp_path / f"{name}.json"
        path.write_text(json_format.MessageToJson(static_bootstrap(translator)))
        written[name] = path

    collect()
    assert len(written) >= EXAMPLES // 2
    # Some routes got through (how deep the generator reaches is checked deterministically
    # below: over random examples the count varies, 22 to 49 of 100 have been seen).
    assert accepted_routes > 0
    names = sorted(written)
    failed: dict[str, str] = {}
    for start in range(0, len(names), PARALLEL):
        batch = {n: written[n] for n in names[start : start + PARALLEL]}
        for n, (code, text) in envoy_validate(batch).items():
            if code != 0:
                failed[n] = f"{tmp_path / n}.registry.json: {text[-2000:]}"
    assert not failed, failed


def test_the_generator_reaches_translated_routes() -> None:
    """The registries drawn are deep enough to matter: many routes pass validation and get
    translated. Derandomized, so the count is the same on every run (a random run varies
    too much for a floor that would catch a generator gone shallow)."""
    accepted_routes = compiled_policies = tls_listeners = client_ca = 0

    @settings(max_examples=100, derandomize=True, **_SETTINGS)
    @given(registries())
    def count(registry: dict[str, dict[str, Any]]) -> None:
        nonlocal accepted_routes, compiled_policies, tls_listeners, client_ca
        state, _, _ = translate(_entries(registry))
        accepted_routes += len(state.routes)
        with_tls = [ls.tls for ls in state.listeners.values() if ls.tls is not None]
        tls_listeners += len(with_tls)
        client_ca += sum(1 for tls in with_tls if tls.client_ca is not None)
        compiled_policies += sum(
            1
            for p in state.policies.values()
            for ref, svc in state.services.items()
            if svc.sidecar is not None and p.selects(ref)
        )

    count()
    assert accepted_routes >= 25, accepted_routes
    # Policies reach RBAC filters of sidecar inbound listeners, in some of the examples.
    assert compiled_policies >= 10, compiled_policies
    # Listeners terminate TLS with registry secrets (some with a client CA) in force.
    assert tls_listeners >= 10 and client_ca >= 3, (tls_listeners, client_ca)
