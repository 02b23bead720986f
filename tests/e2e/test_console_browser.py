"""The console in headless Chromium against real etcd, meshd, Envoy and backends (issue 26).

One walk through as a platform engineer during a rollout: log in; see a service's
endpoints and a verdict change when a backend fails; move a split from 90/10 to 50/50
with the editor and see Envoy's traffic follow; see the gateway's edge get its rate in
the topology; see a NACK's text on the proxies page; see an etcd edit on the events page
within a second. A second walk with a viewer token for one namespace: no editor, nothing
of the other namespace. Every page is saved as a screenshot (tests/support/browser.py).

meshd runs in the test's event loop; every Selenium call blocks, so each browser step
runs in a thread (``asyncio.to_thread``) while meshd serves.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.etcd import EmbeddedEtcd, EtcdRegistry
from integration.harness import BackendProcess, EnvoyProcess, count_bodies, free_port, http_get
from tests.support.browser import browser_binaries, chromium, on_page, screenshot
from tests.support.fixtures_envoy import EnvoyFactory
from tests.support.nack import serve_rejected_route
from tests.support.rig import Load
from tests.support.wait import eventually
from xds_server.admin.auth import Authenticator, parse_tokens
from xds_server.app import MeshApp, MeshConfig
from xds_server.cli.bootstrap import bootstrap

TOKENS = {
    "tokens": [
        {"token": "edit-all", "role": "editor", "namespaces": ["*"]},
        {"token": "view-shop", "role": "viewer", "namespaces": ["shop"]},
    ]
}
INTERVAL_MS = 1000


@dataclass
class Rig:
    registry: EtcdRegistry
    app: MeshApp
    envoy: EnvoyProcess
    backends: dict[str, BackendProcess]
    gateway_url: str

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.app.console_port}"

    async def put(self, key: str, value: dict[str, Any]) -> None:
        await self.registry.put(self.registry.prefix + key, json.dumps(value).encode())


@pytest.fixture
async def rig(tmp_path: Path, envoy_factory: EnvoyFactory) -> AsyncIterator[Rig]:
    browser_binaries()  # (skips, saying why, before anything starts)
    etcd = EmbeddedEtcd(tmp_path / "etcd", unsafe_no_fsync=True)
    await etcd.start()
    registry = EtcdRegistry(etcd.endpoint)
    backends = {
        name: BackendProcess(label)
        for name, label in (("web-a", "web"), ("web-b", "web"), ("v2", "web-v2"), ("shop", "shop"))
    }
    app: MeshApp | None = None
    try:
        public = free_port()
        check = {
            "path": "/health",
            "interval_ms": INTERVAL_MS,
            "timeout_ms": 500,
            "healthy_threshold": 1,
            "unhealthy_threshold": 2,
        }
        entries: dict[str, dict[str, Any]] = {
            "listeners/public": {"address": "127.0.0.1", "port": public},
            "services/default/web": {"port": 8080, "health_check": check},
            "endpoints/default/web/ep-a": {"address": "127.0.0.1", "port": backends["web-a"].port},
            "endpoints/default/web/ep-b": {"address": "127.0.0.1", "port": backends["web-b"].port},
            "services/default/web-v2": {"port": backends["v2"].port},
            "endpoints/default/web-v2/ep-0": {"address": "127.0.0.1"},
            "routes/default/split": {
                "listener": "public",
                "destinations": [
                    {"service": "web", "weight": 90},
                    {"service": "web-v2", "weight": 10},
                ],
            },
            "services/shop/cart": {"port": backends["shop"].port},
            "endpoints/shop/cart/ep-0": {"address": "127.0.0.1"},
            "routes/shop/cart": {
                "listener": "public",
                "match": {"prefix": "/cart"},
                "destinations": [{"service": "cart"}],
            },
        }
        for key, value in entries.items():
            await registry.put(registry.prefix + key, json.dumps(value).encode())
        app = MeshApp(
            registry,
            MeshConfig(
                xds=f"127.0.0.1:{free_port()}",
                metrics=None,
                admin="127.0.0.1:0",
                console="127.0.0.1:0",
                auth=Authenticator(parse_tokens(TOKENS)),
                report_interval_ms=INTERVAL_MS,
            ),
        )
        await app.start()
        boot = bootstrap("gw-1", "gateway", xds_port=app.xds_port, admin_port=0)
        envoy = await asyncio.to_thread(envoy_factory, boot, name="gw-1")
        url = f"http://127.0.0.1:{public}/"
        await eventually(
            lambda: http_get(url)[0] == 200,
            "the gateway serves",
            15,
            interval=0.2,
            blocking=True,
            ignoring=(OSError,),
        )
        yield Rig(registry, app, envoy, backends, url)
    finally:
        if app is not None:
            await app.stop(grace=0.2)
        for b in backends.values():
            b.stop()
        await registry.close()
        etcd.stop()


def _login(driver: Any, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base + "/services")
    on_page(lambda: "/login" in driver.current_url, "redirected to the login form", 10)
    field = driver.find_element(By.ID, "token")
    assert driver.find_element(By.CSS_SELECTOR, "label[for=token]").text  # (labelled)
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    on_page(lambda: driver.current_url.endswith("/services"), "back on the page asked", 10)


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def _endpoint_health(driver: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#endpoints tbody tr")
    out = {}
    for row in rows:
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        out[cells[0]] = cells[3]
    return out


def _share(url: str, n: int = 200) -> float:
    counts = count_bodies(url, n)
    return counts["web-v2"] / max(1, sum(counts.values()))


async def test_a_rollout_in_the_console(rig: Rig) -> None:
    from selenium.webdriver.common.by import By

    with chromium() as driver:
        base = rig.console
        # Log in; the overview lists the services with healthy/total.
        await asyncio.to_thread(_login, driver, base, "edit-all")
        await asyncio.to_thread(driver.get, base + "/")
        overview = await asyncio.to_thread(_text, driver, "#services")
        assert "default/web" in overview and "shop/cart" in overview
        await asyncio.to_thread(screenshot, driver, "overview")

        # The service page: both endpoints healthy (HDS through the gateway Envoy).
        await asyncio.to_thread(driver.get, base + "/services/default/web")
        await asyncio.to_thread(
            on_page,
            lambda: _endpoint_health(driver) == {"ep-a": "healthy", "ep-b": "healthy"},
            "both endpoints healthy on the page",
            20,
        )
        await asyncio.to_thread(screenshot, driver, "service")
        # ep-b fails its checks: the open page shows the verdict change by itself.
        await asyncio.to_thread(http_get, f"{rig.backends['web-b'].url}/__control?health=fail")
        failed_at = time.monotonic()
        await asyncio.to_thread(
            on_page,
            lambda: _endpoint_health(driver).get("ep-b") == "unhealthy",
            "ep-b unhealthy on the open page",
            20,
        )
        print(f"verdict on the page {time.monotonic() - failed_at:.1f} s after the backend failed")
        health = await asyncio.to_thread(
            lambda: on_page(lambda: _endpoint_health(driver), "rows", 5)
        )
        assert health.get("ep-a") == "healthy", health

        # The split: 90/10 through Envoy, moved to 50/50 with the editor.
        before = await asyncio.to_thread(_share, rig.gateway_url)
        assert before < 0.2, before

        def edit_split() -> None:
            weights = driver.find_elements(By.CSS_SELECTOR, "form.split input[name=weight]")
            assert [w.get_attribute("value") for w in weights] == ["90", "10"]
            for w in weights:
                w.clear()
                w.send_keys("50")
            driver.find_element(By.CSS_SELECTOR, "form.split button[type=submit]").click()
            on_page(lambda: "Saved the split" in driver.page_source, "saved", 10)

        await asyncio.to_thread(edit_split)
        await asyncio.to_thread(screenshot, driver, "split-saved")
        after = await eventually(
            lambda: _share(rig.gateway_url),
            "Envoy's traffic follows the split",
            10,
            until=lambda s: 0.35 <= s <= 0.65,
            interval=0.2,
            blocking=True,
        )
        print(f"share to web-v2 through Envoy: {before:.0%} before, {after:.0%} after the edit")

        # Topology: load through the gateway to shop/cart, which nothing has called yet;
        # the open page shows its edge's rate within 15 s.
        def edge_rps() -> float:
            edges = driver.find_elements(
                By.CSS_SELECTOR,
                'g.edge-group[data-source="gateway"][data-destination="shop/cart"]',
            )
            return float(edges[0].get_attribute("data-rps")) if edges else 0.0

        await asyncio.to_thread(driver.get, base + "/topology")
        assert await asyncio.to_thread(edge_rps) == 0.0  # (idle so far: dashed)
        load = Load(rig.gateway_url + "cart", rate=20).start()
        started = time.monotonic()
        try:
            rate = await asyncio.to_thread(on_page, edge_rps, "the edge's rate on the page", 15)
            print(
                f"edge rate on the open topology page {time.monotonic() - started:.1f} s "
                f"after the load started: {rate:.1f}/s"
            )
            await asyncio.to_thread(screenshot, driver, "topology")
        finally:
            load.stop()
        assert load.ok > 0 and not load.failed, load.failed[:3]

        # A NACK: a route configuration Envoy refuses, put in the cache as a translation bug
        # would (validation never lets one through), shows with Envoy's text.
        await asyncio.to_thread(driver.get, base + "/proxies")
        serve_rejected_route(rig.app)
        nack = await asyncio.to_thread(
            on_page, lambda: "(unclosed" in _text(driver, "#proxies"), "the NACK's text", 15
        )
        assert nack
        assert "RDS NACKed" in _text(driver, "#proxies")
        await asyncio.to_thread(screenshot, driver, "proxies")
        await asyncio.to_thread(driver.get, base + "/proxies/gw-1")
        assert "(unclosed" in await asyncio.to_thread(_text, driver, "#types")
        await asyncio.to_thread(screenshot, driver, "proxy")

        # Events: an etcd edit shows on the open page within a second.
        await asyncio.to_thread(driver.get, base + "/events")
        await asyncio.to_thread(
            on_page,
            lambda: driver.find_elements(By.CSS_SELECTOR, "main[data-feed=open]"),
            "the page's live feed open",
            10,
        )
        key = "services/default/added-by-etcdctl"
        written = time.monotonic()
        await rig.put(key, {"port": 9})
        await asyncio.to_thread(
            on_page,
            lambda: key in _text(driver, "#event-rows"),
            "the edit on the page",
            1.0,
            0.05,
        )
        print(f"etcd edit on the events page after {time.monotonic() - written:.2f} s")
        await asyncio.to_thread(screenshot, driver, "events")

        for name in ("policies", "certificates"):
            await asyncio.to_thread(driver.get, f"{base}/{name}")
            assert name.capitalize() in await asyncio.to_thread(_text, driver, "h1")
            await asyncio.to_thread(screenshot, driver, name)


async def test_a_namespace_viewer_in_the_console(rig: Rig) -> None:
    from selenium.webdriver.common.by import By

    with chromium() as driver:
        base = rig.console
        await asyncio.to_thread(_login, driver, base, "view-shop")
        for path in ("/", "/services", "/topology", "/proxies", "/events"):
            await asyncio.to_thread(driver.get, base + path)
            text = await asyncio.to_thread(_text, driver, "main")
            assert "default/" not in text and "web-v2" not in text, (path, text[:500])
        await asyncio.to_thread(driver.get, base + "/services/shop/cart")
        page = await asyncio.to_thread(lambda: driver.page_source)
        assert "Route shop/cart" in page and "form" not in _text(driver, "main").lower()
        assert not driver.find_elements(By.CSS_SELECTOR, "form.split")
        await asyncio.to_thread(driver.get, base + "/services/default/web")
        assert "outside ['shop']" in await asyncio.to_thread(_text, driver, "main")
        await asyncio.to_thread(screenshot, driver, "viewer-denied")
