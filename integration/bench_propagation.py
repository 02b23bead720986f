"""Propagation benchmark: etcd write -> Envoy serving the new route.

Real etcd, meshd as its own process (the console script), a real Envoy gateway
and two backends. Each change flips the ``web-split`` route between 100% v1
and 100% v2; the clock starts just before the etcd write and stops when the
first request through Envoy is answered by the new version (Envoy runs with
one worker, so the route switch is atomic). Prints p50/p99/max.

    python -m integration.bench_propagation [--changes 50] [--delta]

Figures are printed, never asserted: timing belongs in benchmarks, not tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import EnvoyProcess, free_port, http_get, start_backend, wait_for
from integration.scenario import seed, split_entries, split_route
from xds_server.bootstrap import bootstrap


def _meshd(etcd: str, xds_port: int, metrics_port: int, workdir: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("meshd")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "xds_server.cli.meshd"]
    log = (workdir / "meshd.log").open("wb")
    return subprocess.Popen(
        [
            *cmd,
            "--etcd",
            etcd,
            "--xds",
            f"127.0.0.1:{xds_port}",
            "--metrics",
            f"127.0.0.1:{metrics_port}",
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _meshd_breakdown(metrics_port: int) -> str:
    """meshd's own share, from its histograms: translate time and change-to-write time."""
    status, text, _ = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    if status != 200:
        return "meshd metrics unavailable"
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")) and sample.labels.get("type") in (
                None,
                "RDS",
            ):
                values[sample.name] = sample.value
    t_sum = values.get("meshd_translate_seconds_sum", 0.0)
    t_n = values.get("meshd_translate_seconds_count", 0.0) or 1
    p_sum = values.get("meshd_xds_push_latency_seconds_sum", 0.0)
    p_n = values.get("meshd_xds_push_latency_seconds_count", 0.0) or 1
    return (
        f"meshd: translate mean {t_sum / t_n * 1000:.2f}ms over {t_n:.0f} batches; "
        f"change->RDS written mean {p_sum / p_n * 1000:.2f}ms over {p_n:.0f} pushes"
    )


def percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p))]


def run(changes: int, delta: bool, workdir: Path) -> dict[str, float]:
    """Run the benchmark; return the figures (ms) it also prints."""
    etcd = EmbeddedEtcd(workdir / "etcd", auto_compaction_retention=None)
    etcd.start_sync()
    loop = asyncio.new_event_loop()
    registry = EtcdRegistry(etcd.endpoint)
    # Backends in their own processes: the polling client must not share a GIL with them.
    v1, v2 = start_backend("v1", subprocess=True), start_backend("v2", subprocess=True)
    listener = free_port()
    xds = free_port()
    meshd = envoy = None
    try:
        ports = [int(b.url.rstrip("/").rsplit(":", 1)[1]) for b in (v1, v2)]
        entries = split_entries(ports[0], ports[1], listener, v1=100, v2=0)
        loop.run_until_complete(seed(registry, entries))
        metrics_port = free_port()
        meshd = _meshd(etcd.endpoint, xds, metrics_port, workdir)
        envoy = EnvoyProcess(
            bootstrap("bench-gw", "gateway", xds_port=xds, admin_port=0, delta=delta),
            workdir,
            name="gateway",
        ).start()
        envoy.wait_ready(15)
        url = f"http://127.0.0.1:{listener}/"
        wait_for(lambda: http_get(url)[1].strip() == "v1", 10, what="first route")
        key = registry.prefix + "routes/default/web-split"
        samples: list[float] = []
        for i in range(changes):
            target = "v2" if i % 2 == 0 else "v1"
            value = json.dumps(split_route(0, 1) if target == "v2" else split_route(1, 0)).encode()
            start = time.perf_counter()
            loop.run_until_complete(registry.put(key, value))
            while http_get(url)[1].strip() != target:
                if time.perf_counter() - start > 10:
                    raise RuntimeError(f"change {i} never reached Envoy")
            samples.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)  # let the ACK settle: each change is measured on its own
        rejected = {k: v for k, v in envoy.stats().items() if k.endswith("update_rejected") and v}
        samples.sort()
        figures = {
            "p50_ms": percentile(samples, 0.50),
            "p99_ms": percentile(samples, 0.99),
            "max_ms": samples[-1],
            "mean_ms": statistics.fmean(samples),
        }
        mode = "delta" if delta else "sotw"
        print(_meshd_breakdown(metrics_port), flush=True)
        print(
            f"propagation ({mode}, {changes} changes, etcd write -> Envoy serving): "
            f"p50={figures['p50_ms']:.2f}ms p99={figures['p99_ms']:.2f}ms "
            f"max={figures['max_ms']:.2f}ms mean={figures['mean_ms']:.2f}ms "
            f"nacks={sum(rejected.values())}",
            flush=True,
        )
        return figures
    finally:
        if envoy is not None:
            envoy.stop()
        if meshd is not None:
            meshd.terminate()
            meshd.wait(10)
        v1.stop()
        v2.stop()
        loop.run_until_complete(registry.close())
        loop.close()
        etcd.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--delta", action="store_true", help="Envoy uses Delta ADS")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prop-") as tmp:
        run(args.changes, args.delta, Path(tmp))
    os._exit(0)  # backends' daemon threads: nothing left to flush


if __name__ == "__main__":
    main()
