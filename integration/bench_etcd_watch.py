"""Measure the etcd adapter on a real embedded etcd.

1. put -> consumer latency: N sequential puts, each timed from before ``put()`` until the
   consumer iterating ``updates()`` holds the Changes (p50, p99, max).
2. relist of a big registry: K keys of ~120-byte values (12 MB for 100,000), timed from
   ``updates()`` to the Reset, with the page count.

Run: ``.venv/bin/python -m integration.bench_etcd_watch [--puts 200] [--keys 100000]``.
``--no-fsync`` runs etcd with ``--unsafe-no-fsync`` (how the test fixtures run it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from xds_server.ingest.registry import Reset


def _percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(p / 100 * (len(sorted_ms) - 1)))]


async def _latency(endpoint: str, puts: int) -> dict[str, float]:
    registry = EtcdRegistry(endpoint, "/bench/latency/")
    updates = registry.updates()
    await anext(updates)
    await registry.put("/bench/latency/warm-up", b"")  # creates the watch
    await anext(updates)
    value = json.dumps({"address": "10.0.0.1", "port": 8080, "weight": 100}).encode()
    samples = []
    for i in range(puts):
        started = time.perf_counter()
        await registry.put(f"/bench/latency/endpoints/default/web/{i % 50}", value)
        await anext(updates)
        samples.append((time.perf_counter() - started) * 1000)
    await updates.aclose()
    await registry.close()
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": _percentile(samples, 99),
        "max_ms": samples[-1],
    }


async def _relist(endpoint: str, keys: int) -> dict[str, float]:
    prefix = "/bench/relist/"
    registry = EtcdRegistry(endpoint, prefix)
    value = b'{"address": "10.1.2.3", "port": 8080, "weight": 100, "labels": {"v": "v1"}}' + (
        b" " * 40
    )
    batch = 1000  # EmbeddedEtcd allows 1024 operations per transaction
    for start in range(0, keys, batch):
        names = range(start, min(start + batch, keys))
        await registry.txn(puts={f"{prefix}endpoints/default/svc/{i:07d}": value for i in names})
    started = time.perf_counter()
    updates = registry.updates()
    parts = [await anext(updates)]  # the listing comes page by page (Reset parts)
    while isinstance(parts[-1], Reset) and parts[-1].more:
        parts.append(await anext(updates))
    elapsed = time.perf_counter() - started
    await updates.aclose()
    await registry.close()
    entries = [e for part in parts if isinstance(part, Reset) for e in part.entries]
    size = sum(len(e.key) + len(e.value) for e in entries)
    return {
        "keys": len(entries),
        "mbytes": round(size / 1e6, 1),
        "pages": registry.last_list_pages,
        "seconds": round(elapsed, 2),
    }


async def main() -> None:
    """Start a private etcd, run both measurements, print one JSON line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=200)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as data_dir:
        etcd = EmbeddedEtcd(data_dir, unsafe_no_fsync=args.no_fsync)
        await etcd.start()
        try:
            latency = await _latency(etcd.endpoint, args.puts)
            print(json.dumps({"put_to_consumer": {k: round(v, 2) for k, v in latency.items()}}))
            if args.keys:
                print(json.dumps({"relist": await _relist(etcd.endpoint, args.keys)}))
        finally:
            etcd.stop()


if __name__ == "__main__":
    asyncio.run(main())
