"""Propagation benchmark: etcd write -> Envoy serving the new route.

Real etcd, meshd as its own process (the console script), a real Envoy gateway
and two upstreams. Each change flips the ``web-split`` route between 100% v1
and 100% v2; the clock starts just before the etcd write and stops when the
first request through Envoy is answered by the new version (Envoy runs with
one worker, so the route switch is atomic). Prints p50/p99/max.

The measuring apparatus is kept out of the figure as far as it can be: requests
go over one keep-alive connection with a minimal client, and the two upstreams
are static listeners of the same Envoy answering at once, so a sample is the
propagation plus one request through Envoy (~0.2 ms), not a backend's latency.
Between requests the probe pauses (0.2 ms by default): a tight loop kept both
cores busy (this process and Envoy's worker), and etcd then now and then sent
its watch event 10-30 ms after it had answered the put (a loopback capture shows
it leave etcd late), which made the p99 a figure of the probe, not of the mesh.

    python -m integration.bench_propagation [--changes 50] [--delta] [--poll-pause-ms 0.2]

Figures are printed, never asserted: timing belongs in benchmarks, not tests.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import EnvoyProcess, free_port, http_get, wait_for
from integration.scenario import seed, split_entries, split_route
from xds_server.cli.bootstrap import bootstrap


def start_meshd(
    etcd: str, xds_port: int, metrics_port: int, workdir: Path
) -> subprocess.Popen[bytes]:
    """meshd as its own process (the console script next to sys.executable), its data and
    log in ``workdir``."""
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
            "--data-dir",
            str(workdir / "meshd-data"),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _answering_listener(name: str, port: int) -> dict[str, object]:
    """A static Envoy listener that answers every request with ``"<name>\\n"``."""
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": f"{name}\n"}},
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": f"upstream_{name}",
        "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": f"upstream-{name}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _meshd_breakdown(metrics_port: int, xds_type: str = "RDS") -> str:
    """meshd's own share, from its histograms: translate time and change-to-write time
    (of ``xds_type`` pushes: ``RDS`` for a route edit, ``LDS`` for a policy edit)."""
    status, text, _ = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    if status != 200:
        return "meshd metrics unavailable"
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("type") not in (None, xds_type):
                continue
            if sample.name.endswith(("_sum", "_count")):
                values[sample.name] = sample.value
            elif sample.name.endswith("_bucket") and sample.labels.get("le") == "0.01":
                values[sample.name + "_10ms"] = sample.value
    t_sum = values.get("meshd_translate_seconds_sum", 0.0)
    t_n = values.get("meshd_translate_seconds_count", 0.0) or 1
    p_sum = values.get("meshd_xds_push_latency_seconds_sum", 0.0)
    p_n = values.get("meshd_xds_push_latency_seconds_count", 0.0) or 1
    slow = p_n - values.get("meshd_xds_push_latency_seconds_bucket_10ms", p_n)
    return (
        f"meshd: translate mean {t_sum / t_n * 1000:.2f}ms over {t_n:.0f} batches; "
        f"change->{xds_type} written mean {p_sum / p_n * 1000:.2f}ms over {p_n:.0f} pushes, "
        f"{slow:.0f} over 10ms"
    )


class Poller:
    """GET / over one keep-alive connection, with as little client time as Python allows.

    The measured figure ends with one request through Envoy; ``http.client`` spends a few
    hundred microseconds per request on parsing that says nothing about propagation. This
    sends a pre-built request and reads the (content-length framed) answer off the socket.
    """

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = f"GET / HTTP/1.1\r\nhost: {host}:{port}\r\n\r\n".encode()

    def body(self) -> bytes:
        """One request; the response body."""
        self.sock.sendall(self.request)
        data = b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += self._recv()
        head = data[:end].lower()
        at = head.find(b"content-length:")
        if at < 0:
            raise RuntimeError(f"response without content-length: {head!r}")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0])
        body = data[end + 4 :]
        while len(body) < length:
            body += self._recv()
        return body[:length]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("Envoy closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


POLL_PAUSE_MS = 0.2
"""Default pause between probe requests (see the module docstring)."""


def percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p))]


def run(
    changes: int, delta: bool, workdir: Path, poll_pause_ms: float = POLL_PAUSE_MS
) -> dict[str, float]:
    """Run the benchmark; return the figures (ms) it also prints."""
    etcd = EmbeddedEtcd(workdir / "etcd", auto_compaction_retention=None)
    etcd.start_sync()
    loop = asyncio.new_event_loop()
    registry = EtcdRegistry(etcd.endpoint)
    # The upstreams v1 and v2 are static listeners of the gateway Envoy itself that answer
    # at once: the clock stops on a response, and a separate upstream process would add its
    # own wake-ups to every sample (a Python backend took ~0.7 ms per request here).
    upstream_ports = [free_port(), free_port()]
    listener = free_port()
    xds = free_port()
    meshd = envoy = poller = None
    try:
        entries = split_entries(*upstream_ports, listener, v1=100, v2=0)
        loop.run_until_complete(seed(registry, entries))
        metrics_port = free_port()
        meshd = start_meshd(etcd.endpoint, xds, metrics_port, workdir)
        config = bootstrap("bench-gw", "gateway", xds_port=xds, admin_port=0, delta=delta)
        names = ("v1", "v2")
        config["static_resources"]["listeners"] = [
            _answering_listener(n, port) for n, port in zip(names, upstream_ports, strict=True)
        ]
        envoy = EnvoyProcess(config, workdir, name="gateway").start()
        envoy.wait_ready(15)
        url = f"http://127.0.0.1:{listener}/"
        wait_for(lambda: http_get(url)[1].strip() == "v1", 10, what="first route")
        poller = Poller("127.0.0.1", listener)
        key = registry.prefix + "routes/default/web-split"
        samples: list[float] = []
        pause, polls = poll_pause_ms / 1000, 0
        # (sample, of which the etcd put returning, Envoy's route update time after the start)
        puts: list[tuple[float, float, float]] = []
        # This process's own collector pauses (tens of ms with grpc and protobuf loaded)
        # would land in samples: it allocates little while measuring, so it can wait.
        gc.collect()
        gc.disable()
        for i in range(changes):
            v2 = i % 2 == 0
            target = b"v2\n" if v2 else b"v1\n"
            value = json.dumps(split_route(0, 1) if v2 else split_route(1, 0)).encode()
            start_wall = time.time()
            start = time.perf_counter()
            loop.run_until_complete(registry.put(key, value))
            put_ms = (time.perf_counter() - start) * 1000
            while poller.body() != target:
                polls += 1
                if time.perf_counter() - start > 10:
                    raise RuntimeError(f"change {i} never reached Envoy")
                if pause:
                    time.sleep(pause)
            samples.append((time.perf_counter() - start) * 1000)
            # Envoy's own record of when it took the route in (epoch ms): outside the clock.
            applied = max(envoy.stats(r"rds\..*update_time").values(), default=0)
            puts.append((samples[-1], put_ms, applied - start_wall * 1000))
            time.sleep(0.05)  # let the ACK settle: each change is measured on its own
        gc.enable()
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
        slowest, slowest_put, slowest_applied = max(puts)

        print(
            f"probe: {polls / changes + 1:.1f} requests per sample, one every "
            f"{sum(s - p for s, p, _ in puts) / (polls + changes):.2f}ms "
            f"({poll_pause_ms}ms pause between them)",
            flush=True,
        )
        print(
            f"etcd put returning: p50 {statistics.median(p for _, p, _ in puts):.2f}ms; "
            f"slowest sample {slowest:.2f}ms: etcd put returned at {slowest_put:.2f}ms, "
            f"Envoy's RDS update_time at ~{slowest_applied:.0f}ms (1 ms resolution)",
            flush=True,
        )
        print(
            f"propagation ({mode}, {changes} changes, etcd write -> Envoy serving): "
            f"p50={figures['p50_ms']:.2f}ms p99={figures['p99_ms']:.2f}ms "
            f"max={figures['max_ms']:.2f}ms mean={figures['mean_ms']:.2f}ms "
            f"nacks={sum(rejected.values())}",
            flush=True,
        )
        return figures
    finally:
        if poller is not None:
            poller.close()
        if envoy is not None:
            envoy.stop()
        if meshd is not None:
            meshd.terminate()
            meshd.wait(10)
        loop.run_until_complete(registry.close())
        loop.close()
        etcd.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--delta", action="store_true", help="Envoy uses Delta ADS")
    p.add_argument(
        "--poll-pause-ms",
        type=float,
        default=POLL_PAUSE_MS,
        help="pause between probe requests (0: a tight loop, which starves etcd on 2 cores)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prop-") as tmp:
        run(args.changes, args.delta, Path(tmp), args.poll_pause_ms)
    os._exit(0)  # grpc's threads: nothing left to flush


if __name__ == "__main__":
    main()
