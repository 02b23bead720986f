"""Policy benchmark: etcd policy edit -> a caller's Envoy answering with the new decision.

Real etcd, meshd as its own process (the console script, with its own CA), and real Envoys
with mesh certificates over SDS: the sidecar of ``shop/api`` (strict mTLS; its application
is a static listener of the same Envoy that answers 200 at once), the sidecar of
``shop/web`` (the caller) and a gateway (``edge``). Each policy edit alternately puts a
``deny`` policy naming ``shop/web`` on ``shop/api`` and deletes it; the clock starts just
before the etcd write and stops when the first request through web's outbound listener
(``Host: api.shop``) is answered 403 (deny) or 200 (allow back).

In the same run, interleaved with the policy edits (so a slow spell of the machine lands on
both), route edits as :mod:`integration.bench_propagation` measures them: the ``web-split``
route flips between 100% v1 and 100% v2 through the gateway, timed to the first request
answered by the new version. Both series print p50/p99/max side by side, with the target
line for policy edits. The probes are those of ``bench_propagation``: one keep-alive
connection each, a minimal client, a 0.2 ms pause between requests.

    python -m integration.bench_policy [--edits 50] [--poll-pause-ms 0.2]
        [--drain-strategy gradual|immediate]

Policies reach api's sidecar in its inbound route configuration (RDS), so no listener is
replaced and the drain strategy should not matter; ``--drain-strategy immediate`` shows
that it does not (docs/benchmarks.md).

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
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.bench_propagation import (
    POLL_PAUSE_MS,
    _answering_listener,
    _meshd_breakdown,
    percentile,
    start_meshd,
)
from integration.harness import EnvoyProcess, free_port, http_get, wait_for
from integration.scenario import seed, split_entries, split_route
from xds_server.cli.bootstrap import bootstrap

TARGET_P99_MS = 20.0
"""The policy-edit target: p99 under 20 ms on this machine."""


class StatusPoller:
    """GET / with a fixed ``Host`` over one keep-alive connection; the status and body.

    As :class:`integration.bench_propagation.Poller`, a pre-built request and the
    (content-length framed) answer read off the socket, plus the status code.
    """

    def __init__(self, port: int, host: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = f"GET / HTTP/1.1\r\nhost: {host}\r\n\r\n".encode()

    def get(self) -> tuple[int, bytes]:
        self.sock.sendall(self.request)
        data = b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += self._recv()
        head = data[:end].lower()
        status = int(head.split(b" ", 2)[1])
        at = head.find(b"content-length:")
        if at < 0:
            raise RuntimeError(f"response without content-length: {head!r}")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0])
        body = data[end + 4 :]
        while len(body) < length:
            body += self._recv()
        return status, body[:length]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("Envoy closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def _figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": percentile(ordered, 0.50),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1],
        "mean_ms": statistics.fmean(ordered),
    }


def _line(what: str, n: int, f: dict[str, float]) -> str:
    return (
        f"{what} ({n} edits): p50={f['p50_ms']:.2f}ms p99={f['p99_ms']:.2f}ms "
        f"max={f['max_ms']:.2f}ms mean={f['mean_ms']:.2f}ms"
    )


def _entries(ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The registry: shop/api (strict, sidecar), shop/web (sidecar, the caller), the gateway
    ``edge`` with the ``web-split`` route of bench_propagation on its listener ``public``."""
    entries: dict[str, dict[str, Any]] = {
        "namespaces/shop": {"mtls": "strict"},
        "services/shop/api": {
            "port": ports["api_in"],
            "sidecar": {"inbound_port": ports["api_in"], "app_port": ports["api_app"]},
        },
        "endpoints/shop/api/a1": {"address": "127.0.0.1"},
        "services/shop/web": {
            "port": ports["web_in"],
            "sidecar": {"inbound_port": ports["web_in"], "app_port": ports["web_app"]},
        },
        "endpoints/shop/web/w1": {"address": "127.0.0.1"},
        "listeners/web-out": {"port": ports["web_out"], "nodes": ["web.shop"]},
    }
    split = split_entries(ports["v1"], ports["v2"], ports["public"], v1=100, v2=0)
    # Only the gateway listens on ``public`` (the sidecars share its loopback host).
    split["listeners/public"]["nodes"] = ["edge"]
    entries.update(split)
    return entries


def _status_is(poller: StatusPoller, status: int) -> bool:
    return poller.get()[0] == status


def _body_is(poller: StatusPoller, body: bytes) -> bool:
    return poller.get()[1] == body


def _measure(
    loop: asyncio.AbstractEventLoop,
    write: Awaitable[int],
    reached: Callable[[], bool],
    pause: float,
    what: str,
) -> tuple[float, int]:
    """Time (ms) from just before the etcd ``write`` (a coroutine not yet started) until
    ``reached()``; and how many probes came before the one that saw it."""
    polls = 0
    start = time.perf_counter()
    loop.run_until_complete(write)
    while not reached():
        polls += 1
        if time.perf_counter() - start > 10:
            raise RuntimeError(f"{what} never reached Envoy")
        if pause:
            time.sleep(pause)
    return (time.perf_counter() - start) * 1000, polls


def run(
    edits: int,
    workdir: Path,
    poll_pause_ms: float = POLL_PAUSE_MS,
    drain_strategy: str = "gradual",
) -> dict[str, float]:
    """Run the benchmark; return the figures (ms) it also prints."""
    etcd = EmbeddedEtcd(workdir / "etcd", auto_compaction_retention=None)
    etcd.start_sync()
    loop = asyncio.new_event_loop()
    registry = EtcdRegistry(etcd.endpoint)
    names = ("api_in", "api_app", "web_in", "web_app", "web_out", "v1", "v2", "public")
    ports = {name: free_port() for name in names}
    xds, metrics_port = free_port(), free_port()
    meshd = None
    envoys: list[EnvoyProcess] = []
    pollers: list[StatusPoller] = []
    try:
        loop.run_until_complete(seed(registry, _entries(ports)))
        meshd = start_meshd(etcd.endpoint, xds, metrics_port, workdir)
        statics = {
            # api's application and the two versions of web-split: static listeners of the
            # Envoy in front of them that answer at once (no backend's latency in a sample).
            "api": [_answering_listener("api", ports["api_app"])],
            "web": [_answering_listener("web", ports["web_app"])],
            "gateway": [_answering_listener(n, ports[n]) for n in ("v1", "v2")],
        }
        for name, cluster in (("api", "api.shop"), ("web", "web.shop"), ("gateway", "edge")):
            config = bootstrap(f"{name}-1", cluster, xds_port=xds, admin_port=0)
            config["static_resources"]["listeners"] = statics[name]
            extra = ("--drain-strategy", drain_strategy)
            envoys.append(EnvoyProcess(config, workdir, name=name, extra_args=extra).start())
        for envoy in envoys:
            envoy.wait_ready(30)
        web_url = f"http://127.0.0.1:{ports['web_out']}/"
        wait_for(
            lambda: http_get(web_url, headers={"host": "api.shop"})[0] == 200,
            30,
            what="web -> api.shop over mTLS",
        )
        gw_url = f"http://127.0.0.1:{ports['public']}/"
        wait_for(lambda: http_get(gw_url)[1].strip() == "v1", 30, what="first route")
        caller = StatusPoller(ports["web_out"], "api.shop")
        gateway = StatusPoller(ports["public"], f"127.0.0.1:{ports['public']}")
        pollers += [caller, gateway]
        policy_key = registry.prefix + "policies/shop/deny-web"
        deny = json.dumps(
            {"target": "api", "action": "deny", "from": [{"identities": ["shop/web"]}]}
        ).encode()
        route_key = registry.prefix + "routes/default/web-split"
        pause = poll_pause_ms / 1000
        policy: list[float] = []
        route: list[float] = []
        polls = 0
        # This process's own collector pauses would land in samples: it can wait.
        gc.collect()
        gc.disable()
        for i in range(edits):
            denying = i % 2 == 0
            want = 403 if denying else 200
            write: Awaitable[int] = (
                registry.put(policy_key, deny) if denying else registry.delete(policy_key)
            )
            ms, n = _measure(loop, write, partial(_status_is, caller, want), pause, f"policy {i}")
            policy.append(ms)
            polls += n
            time.sleep(0.05)  # let the ACK settle: each edit is measured on its own

            target = b"v2\n" if denying else b"v1\n"
            value = json.dumps(split_route(0, 1) if denying else split_route(1, 0)).encode()
            write = registry.put(route_key, value)
            ms, n = _measure(loop, write, partial(_body_is, gateway, target), pause, f"route {i}")
            route.append(ms)
            polls += n
            time.sleep(0.05)
        gc.enable()
        rejected = sum(
            v
            for envoy in envoys
            for k, v in envoy.stats().items()
            if k.endswith("update_rejected") and v
        )
        denied = envoys[0].stats(r"rbac\.denied")
        p, r = _figures(policy), _figures(route)
        print(_meshd_breakdown(metrics_port, "LDS"), flush=True)
        print(_meshd_breakdown(metrics_port, "RDS"), flush=True)
        print(
            f"probe: {polls / (2 * edits) + 1:.1f} requests per sample "
            f"({poll_pause_ms}ms pause between them); nacks={rejected:.0f}; "
            f"api rbac denied {sum(denied.values()):.0f}",
            flush=True,
        )
        print(_line("policy edit (etcd write -> caller's Envoy answers 403/200)", edits, p))
        print(_line("route edit  (etcd write -> gateway serves the new route)", edits, r))
        verdict = "pass" if p["p99_ms"] < TARGET_P99_MS else "fail"
        print(
            f"target: policy edit p99 under {TARGET_P99_MS:.0f} ms on this machine: "
            f"{verdict} (p99={p['p99_ms']:.2f}ms)",
            flush=True,
        )
        return {
            **{f"policy_{k}": v for k, v in p.items()},
            **{f"route_{k}": v for k, v in r.items()},
        }
    finally:
        gc.enable()
        for poller in pollers:
            poller.close()
        for envoy in envoys:
            envoy.stop()
        if meshd is not None:
            meshd.terminate()
            meshd.wait(10)
        loop.run_until_complete(registry.close())
        loop.close()
        etcd.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--edits", type=int, default=50, help="policy edits (and as many route edits)")
    p.add_argument(
        "--poll-pause-ms",
        type=float,
        default=POLL_PAUSE_MS,
        help="pause between probe requests (0: a tight loop, which starves etcd on 2 cores)",
    )
    p.add_argument(
        "--drain-strategy",
        choices=("gradual", "immediate"),
        default="gradual",
        help="Envoy's --drain-strategy (gradual: Envoy's default, as meshctl bootstrap runs it)",
    )
    args = p.parse_args()
    if args.edits < 1:
        p.error("--edits must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        run(args.edits, Path(tmp), args.poll_pause_ms, args.drain_strategy)
    os._exit(0)  # grpc's threads: nothing left to flush


if __name__ == "__main__":
    main()
