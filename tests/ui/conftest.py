"""Browser fixtures for the dashboard: Debian's Chromium driven by Playwright, one Conduit server
for the module (the bundled chat model and a scripted upstream that cites its sources), and
screenshots of every page visited under test-artifacts/ui/."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import FakeUpstream, ServerProcess, start_gateway, upstream

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
TIMEOUT_MS = 20_000


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium package"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


class Screens:
    """Screenshots, one per page visited, named by the test."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    def take(self, page: Page, name: str) -> Path:
        path = self.folder / f"{name}.png"
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def screens() -> Screens:
    return Screens(ARTIFACTS)


@pytest.fixture
def page(browser: Browser, dashboard: ServerProcess) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) on the dashboard's origin; fails the test on a
    JavaScript error in the page."""
    context = browser.new_context(base_url=dashboard.url, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


@pytest.fixture(scope="module")
def cited() -> Iterator[FakeUpstream]:
    """An upstream whose answers quote the first retrieved source with a [1] marker."""
    fake = FakeUpstream("ui", mode="quote")
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def dashboard(cited: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = {
        "models": [
            {"name": "smollm2", "prices": {"input": 0.5, "output": 1.5}},
            {"name": "citer", "deployments": [upstream(cited, "quote")], "prices": {"input": 1.0, "output": 3.0}},
            {"name": "flaky", "deployments": [upstream(cited, "drop_mid")]},
        ],
        "tenants": [{"name": "acme", "budget": {"usd": 5.0}}, {"name": "globex"}],
    }
    server = start_gateway(tmp_path_factory.mktemp("ui"), config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tenant_keys(dashboard: ServerProcess) -> dict[str, str]:
    keys = {}
    for tenant in ("acme", "globex"):
        answer = httpx.post(f"{dashboard.url}/admin/keys", headers=dashboard.headers(),
                            json={"tenant": tenant, "name": f"{tenant} ui test"})
        answer.raise_for_status()
        keys[tenant] = answer.json()["key"]
    return keys


def login(page: Page, key: str, route: str = "#/overview") -> None:
    page.goto(f"/ui/{route}")
    page.get_by_label("API key").fill(key)
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("identity").wait_for()
