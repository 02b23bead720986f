"""Dashboards, alert rules and scrape config against a real Prometheus.

One scenario: real etcd, meshd (metrics and ``/sd/envoy``), a gateway Envoy (SotW) and a
sidecar Envoy (Delta), both found by Prometheus through meshd's HTTP SD, and traffic to a
service whose ``v2`` subset always fails (so errors, outlier ejections and a rate limit
show up; meshd asks for load reports every second, so its edge and per-endpoint series
fill in), and to a ``jwt`` and an ``api_keys`` route without a token or a key (so
authentication denials show up). Debian's ``prometheus`` scrapes it every second with a
copy of the repo's config and rules (``for:`` shortened to 0 s). Then every PromQL
expression of every dashboard panel, and the measure of every alert rule, must return
data, and the error-rate and ejection alerts must fire.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import free_port, http_get
from integration.scenario import seed
from tests.support.fixtures_envoy import BackendFactory, EnvoyFactory
from tests.support.paths import REPO_ROOT
from tests.support.registry_strategies import rsa_jwks
from tests.support.tls_secrets import issue
from tests.support.wait import wait_until
from xds_server.app import MeshApp, MeshConfig
from xds_server.cli.bootstrap import bootstrap

ROOT = REPO_ROOT
OBS = ROOT / "observability"
RULES = OBS / "prometheus" / "rules.yml"
PROM_CONFIG = OBS / "prometheus" / "prometheus.yml"
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval is with 1 s scrapes, rounded up

sys.path.insert(0, str(OBS))
import generate as dashboards  # noqa: E402  (observability/generate.py is a script)

from tests.support.debian_tools import ensure  # noqa: E402


def prometheus_tools() -> tuple[str, str]:
    """``prometheus`` and ``promtool``, installed with apt-get when missing and allowed."""
    prometheus, promtool = ensure("prometheus", "prometheus", "promtool")
    return prometheus, promtool


# --------------------------------------------------------------------------- static checks


def test_promtool_checks_the_config_and_the_rules() -> None:
    _, promtool = prometheus_tools()
    for args in (["check", "rules", str(RULES)], ["check", "config", str(PROM_CONFIG)]):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS" in out.stdout + out.stderr


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    files = dashboards.rendered()
    assert set(files) == {p.name for p in dashboards.DASHBOARDS_DIR.glob("*.json")}
    for name, text in files.items():
        assert (dashboards.DASHBOARDS_DIR / name).read_text() == text, f"run generate.py: {name}"
    titles = {json.loads(t)["title"] for t in files.values()}
    assert titles == {"Mesh overview", "Mesh service detail", "Mesh control plane"}


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    prov = yaml.safe_load((OBS / "grafana/provisioning/dashboards/mesh.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    assert path.replace("${MESH_OBSERVABILITY}", str(OBS)) == str(dashboards.DASHBOARDS_DIR)
    ds = yaml.safe_load((OBS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, expr) for every target of every panel."""
    out = []
    for name, text in dashboards.rendered().items():
        for panel in json.loads(text)["panels"]:
            for target in panel["targets"]:
                out.append((name, panel["title"], target["expr"]))
    return out


_COMPARISON = re.compile(r"^(?P<measure>.+?)\s*(?:>|<|==|!=|>=|<=)\s*(?P<threshold>[0-9.]+)$")


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_rule_is_measure_comparison_threshold() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    for wanted in (
        "MeshServiceHighErrorRate",
        "MeshServiceHighLatency",
        "MeshOutlierEjections",
        "MeshCircuitBreakerOverflow",
        "MeshProxyNacking",
        "MeshProxyStale",
        "MeshdCannotReachEtcd",
        "MeshRegistryEntriesRejected",
        "MeshCertificateExpiresSoon",
    ):
        assert wanted in names
    for rule in rules:
        assert _COMPARISON.match(rule["expr"].strip()), rule["alert"]


# --------------------------------------------------------------------------- live scenario


class Prometheus:
    """A real Prometheus on loopback with its own storage, stopped at the end."""

    def __init__(self, binary: str, config: Path, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a bad expression: say which, and why
            raise AssertionError(f"{params}: HTTP {exc.code} {exc.read().decode()}") from None
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)

        wait_until(ready, "prometheus ready", timeout, interval=0.1, ignoring=(OSError,))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Traffic:
    """Requests to both Envoys from a thread until stopped."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for url in self.urls:
                try:
                    status = http_get(url, timeout=5)[0]
                except OSError:
                    status = 0
                self.statuses[status] = self.statuses.get(status, 0) + 1
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _entries(v1: int, v2: int, public: int, inner: int, secure: int) -> dict[str, dict[str, Any]]:
    # A certificate generated here that expires in 3 days: in force (with a warning), on
    # a TLS listener of the gateway (its ssl stats), and the expiry alert must fire.
    soon = issue("soon.example", ("soon.example",), days=3)
    return {
        "secrets/edge/soon": json.loads(soon.value()),
        "listeners/secure": {
            "address": "127.0.0.1",
            "port": secure,
            "nodes": ["gateway"],
            "tls": {"certificates": ["edge/soon"]},
        },
        "services/default/web": {
            "port": v1,
            "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}},
            "outlier_detection": {
                "consecutive_5xx": 3,
                "interval_ms": 1000,
                "base_ejection_time_ms": 60000,
                "max_ejection_percent": 100,
            },
            "circuit_breaker": {"max_connections": 100, "max_pending_requests": 100},
        },
        "endpoints/default/web/v1": {
            "address": "127.0.0.1",
            "port": v1,
            "labels": {"version": "v1"},
        },
        "endpoints/default/web/v2": {
            "address": "127.0.0.1",
            "port": v2,
            "labels": {"version": "v2"},
        },
        "listeners/public": {"address": "127.0.0.1", "port": public, "nodes": ["gateway"]},
        "listeners/inner": {"address": "127.0.0.1", "port": inner, "nodes": ["sidecar"]},
        "routes/default/web-split": {
            "listener": "*",
            "destinations": [
                {"service": "web", "subset": "v1", "weight": 50},
                {"service": "web", "subset": "v2", "weight": 50},
            ],
        },
        "routes/default/limited": {
            "listener": "*",
            "match": {"prefix": "/limited"},
            "destinations": [{"service": "web", "subset": "v1"}],
            "rate_limit": {"requests_per_minute": 60, "burst": 1},
        },
        # Authentication on two routes of the gateway's listener, asked without a token or
        # key: the denial panel's Envoy stats (jwt_authn, api_key_auth) count them.
        "routes/default/login": {
            "listener": "public",
            "match": {"prefix": "/jwt"},
            "destinations": [{"service": "web", "subset": "v1"}],
            "jwt": {"issuer": "https://login.example", "jwks": {"inline": rsa_jwks()}},
        },
        "secrets/default/partner-keys": {"keys": {"acme": "k-acme"}},
        "routes/default/partner": {
            "listener": "public",
            "match": {"prefix": "/keyed"},
            "destinations": [{"service": "web", "subset": "v1"}],
            "api_keys": {"secret": "partner-keys"},
        },
        # A typo: rejected, reported, counted (the rejected-entries alert reads it).
        "routes/default/typo": {"listener": "*", "destinations": [{"service": "web", "wieght": 1}]},
    }


def _test_config(tmp: Path, metrics_port: int, hold: str = "0s") -> Path:
    """The repo's Prometheus config and rules, pointed at this meshd, every second, each
    rule's ``for:`` shortened to ``hold``."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = hold
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
    config = yaml.safe_load(PROM_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(tmp / "rules.yml")]
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            static["targets"] = [f"127.0.0.1:{metrics_port}"]
        for sd in job.get("http_sd_configs", []):
            assert sd["url"].endswith("/sd/envoy")
            sd["url"] = f"http://127.0.0.1:{metrics_port}/sd/envoy"
            sd["refresh_interval"] = "1s"
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def mesh(
    tmp_path: Path, envoy_factory: EnvoyFactory, backend_factory: BackendFactory
) -> AsyncIterator[dict[str, Any]]:
    etcd = EmbeddedEtcd(tmp_path / "etcd", unsafe_no_fsync=True, auto_compaction_retention=None)
    await etcd.start()
    registry = EtcdRegistry(etcd.endpoint)
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    v2.control(fail_percent=100)
    ports = {n: int(b.url.rstrip("/").rsplit(":", 1)[1]) for n, b in (("v1", v1), ("v2", v2))}
    public, inner, secure = free_port(), free_port(), free_port()
    await seed(registry, _entries(ports["v1"], ports["v2"], public, inner, secure))
    # LRS every second (default 10 s): the edge and per-endpoint panels need reports soon.
    config = MeshConfig(
        xds="127.0.0.1:0", metrics=f"127.0.0.1:{free_port()}", report_interval_ms=1000
    )
    app = MeshApp(registry, config)
    await app.start()
    admin = {"gateway": free_port(), "sidecar": free_port()}
    for name, delta in (("gateway", False), ("sidecar", True)):
        bs = bootstrap(
            f"{name}-1", name, xds_port=app.xds_port, admin_port=admin[name], delta=delta
        )
        await asyncio.to_thread(envoy_factory, bs, name=name)
    try:
        yield {"app": app, "listeners": (public, inner), "admin": admin, "backends": ports}
    finally:
        await app.stop(grace=0.2)
        await registry.close()
        etcd.stop()


async def test_dashboards_and_alerts_against_real_prometheus(
    tmp_path: Path, mesh: dict[str, Any]
) -> None:
    prometheus_bin, _ = prometheus_tools()
    app: MeshApp = mesh["app"]
    public, inner = mesh["listeners"]

    # meshd's HTTP SD lists both Envoys' admin addresses with their node labels.
    with urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/sd/envoy") as resp:
        sd = json.loads(resp.read())
    assert {(g["labels"]["node_cluster"], g["targets"][0]) for g in sd} == {
        (name, f"127.0.0.1:{port}") for name, port in mesh["admin"].items()
    }

    prom = Prometheus(prometheus_bin, _test_config(tmp_path, app.metrics_port), tmp_path)
    urls = [f"http://127.0.0.1:{p}{path}" for p in (public, inner) for path in ("/", "/limited")]
    urls += [f"http://127.0.0.1:{public}{path}" for path in ("/jwt", "/keyed")]  # (no token, key)
    try:
        await asyncio.to_thread(prom.wait_ready)
        with Traffic(urls) as traffic:
            await asyncio.to_thread(_wait_for_data, prom)
            await asyncio.to_thread(_wait_for_alerts, prom)
            await asyncio.to_thread(_wait_for_denials, prom)
            per_endpoint = prom.query('meshd_endpoint_error_ratio{mesh_service="web.default"}')
        for status in (200, 401, 429, 503):
            assert traffic.statuses.get(status), (status, traffic.statuses)
    finally:
        prom.stop()
    # The per-endpoint panel shows the real backends, each under its subset: v2 always
    # fails, v1 never does (Envoy's LRS endpoint stats, through meshd, to Prometheus).
    ratios = {
        (r["metric"]["subset"], r["metric"]["endpoint"]): float(r["value"][1]) for r in per_endpoint
    }
    ports = mesh["backends"]
    assert ratios == {
        ("v1", f"127.0.0.1:{ports['v1']}"): 0.0,
        ("v2", f"127.0.0.1:{ports['v2']}"): 1.0,
    }, ratios


def _measures() -> Iterator[tuple[str, str]]:
    for rule in alert_rules():
        match = _COMPARISON.match(rule["expr"].strip())
        assert match is not None
        yield f"alert {rule['alert']}", match["measure"]


def _wait_for_data(prom: Prometheus, timeout: float = 60) -> None:
    """Every dashboard expression and alert measure returns data (polled: rates need two
    scrapes, per-endpoint stats need traffic)."""
    # Keyed by the expression too: a panel's targets are each checked, not only its last.
    pending = {
        f"{dash} / {title} / {expr}": expr.replace("$__rate_interval", RATE_INTERVAL).replace(
            "$service", "web.default"
        )
        for dash, title, expr in panel_queries()
    }
    pending.update(_measures())

    def without_data() -> dict[str, str]:
        for what, expr in list(pending.items()):
            if prom.query(expr):
                del pending[what]
        return pending

    wait_until(
        without_data,
        "data for every expression",
        timeout,
        until=lambda left: not left,
        interval=0.5,
        context=lambda: "no data for:\n" + "\n".join(f"  {w}: {e}" for w, e in pending.items()),
    )


DENIALS = "Authentication denials by listener"


def _public_rate(result: list[dict[str, Any]]) -> float:
    """The value of listener ``public``'s series in a query ``result`` (0 without one)."""
    for series in result:
        if series["metric"].get("envoy_http_conn_manager_prefix") == "public":
            return float(series["value"][1])
    return 0.0


def _wait_for_denials(prom: Prometheus, timeout: float = 30) -> None:
    """Each target of the authentication-denials panel shows the gateway listener's 401s,
    not only a zero rate: the traffic asks its jwt and api_keys routes without a token or
    a key all along."""
    targets = [expr for _, title, expr in panel_queries() if title == DENIALS]
    assert len(targets) == 3, targets
    for expr in targets:
        measured = expr.replace("$__rate_interval", RATE_INTERVAL)
        wait_until(
            lambda measured=measured: prom.query(measured),
            f"denials on listener public: {measured}",
            timeout,
            until=lambda result: _public_rate(result) > 0,
            interval=0.5,
        )


def _wait_for_alerts(prom: Prometheus, timeout: float = 30) -> None:
    wanted = {
        "MeshServiceHighErrorRate",
        "MeshOutlierEjections",
        "MeshRegistryEntriesRejected",
        "MeshCertificateExpiresSoon",
    }

    def firing(alerts: list[dict[str, Any]]) -> set[str]:
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    alerts = wait_until(
        lambda: prom.get("/api/v1/alerts")["alerts"],
        f"{sorted(wanted)} firing",
        timeout,
        until=lambda alerts: wanted <= firing(alerts),
        interval=0.5,
    )
    by_name = {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}
    assert by_name["MeshServiceHighErrorRate"]["labels"]["mesh_service"] == "web.default"
    assert by_name["MeshOutlierEjections"]["labels"]["mesh_service"] == "web.default"
    assert by_name["MeshRegistryEntriesRejected"]["labels"]["kind"] == "routes"
    soon = by_name["MeshCertificateExpiresSoon"]
    assert (soon["labels"]["namespace"], soon["labels"]["name"]) == ("edge", "soon")
    assert 2 * 86400 < float(soon["value"]) < 3 * 86400 + 60  # (about 3 days left)
    # Every rule group evaluates without error.
    for group in prom.get("/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule


class _Relay:
    """A TCP relay on loopback (real sockets) that the test can cut: what an Envoy sees
    when the network to meshd fails while both keep running."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> _Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()


async def test_proxy_disconnected_alert_fires_on_real_prometheus(
    tmp_path: Path, envoy_factory: EnvoyFactory
) -> None:
    """An Envoy that loses its stream to meshd (and keeps running) is still scraped, so the
    repo's MeshProxyDisconnected rule fires for it. Its ``for:`` (1 m) is shortened to 5 s
    here, still longer than service discovery's refresh (1 s here, 15 s in the repo's
    config): the Envoy must stay a target that long after it is gone from meshd."""
    prometheus_bin, _ = prometheus_tools()
    etcd = EmbeddedEtcd(tmp_path / "etcd", unsafe_no_fsync=True, auto_compaction_retention=None)
    await etcd.start()
    registry = EtcdRegistry(etcd.endpoint)
    app = MeshApp(registry, MeshConfig(xds="127.0.0.1:0", metrics=f"127.0.0.1:{free_port()}"))
    prom: Prometheus | None = None
    try:
        await app.start()
        relay = await _Relay(app.xds_port).start()
        bs = bootstrap("gw-lost", "gateway", xds_port=relay.port, admin_port=free_port())
        envoy = await asyncio.to_thread(envoy_factory, bs, name="gw-lost")
        config = _test_config(tmp_path, app.metrics_port, hold="5s")
        prom = Prometheus(prometheus_bin, config, tmp_path)
        await asyncio.to_thread(prom.wait_ready)
        connected = 'envoy_control_plane_connected_state{node_id="gw-lost"} == 1'
        await asyncio.to_thread(_wait_for_query, prom, connected, "the Envoy scraped, connected")

        await relay.cut()
        await asyncio.to_thread(
            envoy.wait_for,
            lambda: envoy.stat("control_plane.connected_state") == 0,
            10,
            "Envoy notices the lost stream",
        )
        await asyncio.to_thread(_wait_for_alert, prom, "MeshProxyDisconnected", "gw-lost")
    finally:
        if prom is not None:
            prom.stop()
        await app.stop(grace=0.2)
        await registry.close()
        etcd.stop()


def _wait_for_query(prom: Prometheus, expr: str, what: str, timeout: float = 60) -> None:
    wait_until(lambda: prom.query(expr), f"{what}: {expr}", timeout, interval=0.5)


def _wait_for_alert(prom: Prometheus, name: str, node_id: str, timeout: float = 60) -> None:
    def firing(alerts: list[dict[str, Any]]) -> bool:
        return any(
            a["labels"]["alertname"] == name
            and a["labels"].get("node_id") == node_id
            and a["state"] == "firing"
            for a in alerts
        )

    wait_until(
        lambda: prom.get("/api/v1/alerts")["alerts"],
        f"{name} for {node_id} firing",
        timeout,
        until=firing,
        interval=0.5,
    )
