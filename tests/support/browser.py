"""Headless Chromium for the console's browser tests (Debian's ``chromium`` and
``chromium-driver``, driven with Selenium through that driver: nothing is downloaded).

Screenshots go to ``$CONSOLE_SCREENSHOTS`` (default ``.meshd/console-screenshots``, which
git ignores); each path is printed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.wait import wait_until

T = TypeVar("T")
SCREENSHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS", ".meshd/console-screenshots"))


def browser_binaries() -> tuple[str, str]:
    """(chromium, chromedriver); the test skips, saying what to install, without them."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "headless Chromium not installed: `make browser` (Debian chromium, chromium-driver)"
        )
    return chromium, driver


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium at a laptop's window size, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # (root in a container: the sandbox needs user namespaces)
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1366,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def on_page(
    check: Callable[[], object], what: str, timeout: float, interval: float = 0.2
) -> object:
    """:func:`tests.support.wait.wait_until` for a page that refreshes itself: an element
    replaced under the check (a live refresh) counts as "not yet"."""
    from selenium.common.exceptions import WebDriverException

    return wait_until(check, what, timeout, interval=interval, ignoring=(WebDriverException,))
