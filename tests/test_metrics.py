"""meshd's /metrics: the figures of issue 2 are there, with real values, after real pushes."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.test_stream import BASE
from tests.xds_client import running_meshd, sotw_client


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_after_pushes_and_a_rejected_entry() -> None:
    entries = {**BASE, "routes/default/bad": b'{"listener": "public", "wieght": 1}'}
    async with running_meshd(entries, metrics=True) as (_, app):
        async with sotw_client(app.xds_port, "gateway"):
            await asyncio.sleep(0.2)
            m = await asyncio.to_thread(scrape, app.metrics_port)
        assert (
            m[("meshd_connected_proxies", (("node_cluster", "gateway"), ("protocol", "sotw")))] == 1
        )
        assert m[("meshd_registry_revision", ())] == app.revision > 0
        assert m[("meshd_registry_rejected_entries", (("kind", "routes"),))] == 1
        for short in ("CDS", "EDS", "LDS", "RDS"):
            assert m[("meshd_xds_pushes_total", (("type", short),))] >= 1
            assert m[("meshd_xds_push_bytes_total", (("type", short),))] > 0
            assert ("meshd_xds_nacks_total", (("type", short),)) not in m or (
                m[("meshd_xds_nacks_total", (("type", short),))] == 0
            )
        assert m[("meshd_resources", (("type", "CDS"),))] == 3
        assert m[("meshd_translate_seconds_count", ())] >= 1
        assert ("meshd_registry_errors_total", ()) in m
