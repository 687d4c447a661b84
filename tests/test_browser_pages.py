"""A real browser reads the status pages: headless Chromium, driven by selenium.

A live gateway (SQLite) and a live edge node on 127.0.0.1 carry real traffic
(``status_site.busy_site``). Chromium loads the edge status page and the
gateway admin page (logging in through its form, as an admin would), reads
the key figures by their ids and compares them with the JSON the same
servers answer (``GET /status``, ``GET …/admin/overview``) and with what the
traffic did. Screenshots are saved under the test's ``tmp_path``.

The servers run on the test's event loop; every browser call runs in a
thread (``asyncio.to_thread``), so the servers answer while the browser waits.
One browser serves the whole module. Debian packages: ``chromium`` and
``chromium-driver`` (``.ci/run`` installs them); without them the tests skip.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from edge_harness import EdgeSystem, edge_system
from harness import PREFIX, bearer
from shared.signing import fingerprint
from status_site import EDGE_AHEAD_SECONDS, WAITING_SECONDS, WEEK, busy_site

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="headless browser tests need Debian packages chromium and chromium-driver "
    f"({CHROMIUM}, {CHROMEDRIVER}); .ci/run installs them",
)

DESKTOP = (1280, 1000)
PHONE = (390, 844)  # a phone's CSS viewport


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser, with every call in a thread (the servers share our loop)."""

    def __init__(self, driver: WebDriver, shots: Path) -> None:
        self.driver = driver
        self.shots = shots

    async def load(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def value(self, element_id: str) -> str:
        """A figure's raw ``data-value``."""

        def read() -> str:
            found = self.driver.find_element(By.ID, element_id).get_attribute("data-value")
            assert found is not None, element_id
            return found

        return await asyncio.to_thread(read)

    async def cell(self, table_id: str, row_key: str, field: str) -> str:
        """The ``data-value`` of a table cell: row ``data-key``, cell ``data-field``."""

        def read() -> str:
            selector = f'#{table_id} tr[data-key="{row_key}"] [data-field="{field}"]'
            found = self.driver.find_element(By.CSS_SELECTOR, selector).get_attribute("data-value")
            assert found is not None, selector
            return found

        return await asyncio.to_thread(read)

    async def row_keys(self, table_id: str) -> list[str]:
        def read() -> list[str]:
            rows = self.driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tr[data-key]")
            return [str(r.get_attribute("data-key")) for r in rows]

        return await asyncio.to_thread(read)

    async def has(self, element_id: str) -> bool:
        def look() -> bool:
            try:
                self.driver.find_element(By.ID, element_id)
            except NoSuchElementException:
                return False
            return True

        return await asyncio.to_thread(look)

    async def text(self, element_id: str) -> str:
        return await asyncio.to_thread(lambda: self.driver.find_element(By.ID, element_id).text)

    async def submit_login(self, token: str) -> None:
        def fill() -> None:
            field = self.driver.find_element(By.ID, "token")
            field.clear()
            field.send_keys(token)
            self._click_and_wait("login")

        await asyncio.to_thread(fill)

    async def click(self, element_id: str) -> None:
        """Click a button that submits a form; return once the next page has loaded."""
        await asyncio.to_thread(self._click_and_wait, element_id)

    def _click_and_wait(self, element_id: str) -> None:
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.find_element(By.ID, element_id).click()
        wait = WebDriverWait(self.driver, 10, poll_frequency=0.05)
        wait.until(expected_conditions.staleness_of(old))
        wait.until(lambda d: d.execute_script("return document.readyState") == "complete")

    async def screenshot(self, name: str, size: tuple[int, int] = DESKTOP) -> Path:
        """A full-height screenshot at ``size``'s width; also checks that nothing
        is wider than the viewport (no sideways scrolling on a phone)."""

        def shoot() -> tuple[Path, int, int]:
            self.driver.set_window_size(*size)
            height = int(self.driver.execute_script("return document.body.scrollHeight"))
            self.driver.set_window_size(size[0], max(size[1], min(height + 150, 6000)))
            widths = self.driver.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            path = self.shots / f"{name}.png"
            assert self.driver.save_screenshot(str(path)), path
            self.driver.set_window_size(*DESKTOP)
            return path, int(widths[0]), int(widths[1])

        path, scroll_width, viewport = await asyncio.to_thread(shoot)
        assert scroll_width <= viewport, f"{name}: {scroll_width}px wide in {viewport}px"
        assert path.stat().st_size > 10_000  # a rendered page, not a blank
        return path


async def json_of(resp: Any) -> dict[str, Any]:
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


@pytest.fixture
async def site(tmp_path: Path) -> Any:
    async with edge_system(tmp_path) as system:
        await busy_site(system)
        yield system


async def test_edge_status_page_shows_what_the_api_says(
    browser: WebDriver, site: EdgeSystem, tmp_path: Path
) -> None:
    page = Page(browser, tmp_path)
    await page.load(f"{site.edge.make_url('/')}")
    api = await json_of(await site.edge.get("/status"))

    # Identity and enrollment.
    assert await page.value("node-id") == api["nodeId"] == "edge-01"
    assert await page.value("tenant-id") == api["tenantId"] == "t1"
    assert await page.value("facility-ids") == "f-001"
    assert await page.value("key-fingerprint") == fingerprint(site.node_key.public_key)
    assert await page.value("node-enrolled") == "true"
    # The gateway: reachable, and when the last forward and pull succeeded.
    assert await page.value("gateway-reachable") == "true" and api["gateway"]["reachable"]
    assert await page.value("last-forward") == api["lastForwardOk"] is not None
    assert await page.value("last-pull") == api["lastPullOk"] is not None
    # The outbox: one transition waiting, for as long as the site waited.
    assert await page.value("outbox-depth") == str(api["outboxDepth"]) == "1"
    assert float(await page.value("oldest-unsent-age")) == api["oldestUnsentAgeSeconds"]
    assert api["oldestUnsentAgeSeconds"] == WAITING_SECONDS
    # Reports, devices, rejected items with their reasons.
    assert await page.value("reports-generated") == str(api["reportsGenerated"]) == "2"
    assert await page.value("reports-forwarded") == str(api["reportsForwarded"]) == "2"
    assert await page.value("devices-paired") == str(api["pairedDevices"]) == "1"
    assert await page.value("devices-present") == "2"
    assert await page.row_keys("devices-seen-table") == ["tab-a", "tab-b"]
    assert await page.value("problems-count") == str(api["problems"]) == "1"
    assert await page.row_keys("problems-table") == [p["id"] for p in api["recentProblems"]]
    assert await page.row_keys("problems-table") == ["t-404"]
    assert "unknown_item" in await page.text("problems-table")
    assert await page.value("refused-writes-count") == str(api["refusedWrites"]) == "1"
    assert await page.row_keys("refused-writes-table") == ["r-1"]
    assert "unknown_kind" in await page.text("refused-writes-table")
    assert await page.value("health") == "attention"  # rejected items want a look

    await page.screenshot("edge-status")
    await page.screenshot("edge-status-phone", PHONE)


async def test_admin_page_after_logging_in_shows_what_the_api_says(
    browser: WebDriver, site: EdgeSystem, tmp_path: Path
) -> None:
    page = Page(browser, tmp_path)
    admin_url = f"{site.gateway.client.make_url('/admin')}"
    browser.delete_all_cookies()

    await page.load(admin_url)  # no session: the login form, no figure
    assert await page.has("token") and not await page.has("nodes-table")
    await page.screenshot("admin-login")
    await page.submit_login("phs_not_a_token")
    assert await page.has("login-error") and not await page.has("nodes-table")
    analyst = await site.gateway.token("analyst", "t1")
    await page.submit_login(analyst)  # a real token, but not an admin's
    assert await page.has("login-error") and not await page.has("nodes-table")
    await page.submit_login(site.admin_token)
    assert await page.has("nodes-table")

    [cookie] = await asyncio.to_thread(browser.get_cookies)
    assert (cookie["name"], cookie["path"], cookie["httpOnly"], cookie["sameSite"]) == (
        "phs_admin",
        "/admin",
        True,
        "Strict",
    )
    assert site.admin_token not in cookie["value"]

    api = await json_of(
        await site.gateway.client.get(f"{PREFIX}/admin/overview", headers=bearer(site.admin_token))
    )
    [node] = api["nodes"]
    assert await page.value("nodes-count") == str(len(api["nodes"])) == "1"
    assert await page.row_keys("nodes-table") == ["edge-01"]
    seen = await page.cell("nodes-table", "edge-01", "lastSeenAt")
    assert seen == node["lastSeenAt"] is not None
    offset = await page.cell("nodes-table", "edge-01", "clockOffsetSeconds")
    assert float(offset) == node["clockOffsetSeconds"] == EDGE_AHEAD_SECONDS
    assert await page.cell("nodes-table", "edge-01", "fp") == fingerprint(site.node_key.public_key)
    # The grids: which reports arrived, per facility and period.
    weekly = api["reportGrid"]["weekly"]
    assert await page.row_keys("grid-weekly") == ["f-001"]
    for key in weekly["periods"]:
        expected = len(weekly["rows"][0]["cells"][key]["nodes"])
        assert await page.cell("grid-weekly", "f-001", key) == str(expected)
    assert await page.cell("grid-weekly", "f-001", WEEK) == "1"
    assert await page.cell("grid-daily", "f-001", "2026-11-24") == "1"
    assert await page.cell("grid-daily", "f-001", "2026-11-23") == "0"
    # Events, rejected and conflicting submissions.
    assert await page.row_keys("events-table") == [str(e["seq"]) for e in api["recentEvents"]]
    rejected = api["rejected"]
    assert await page.value("rejected-transitions-count") == str(rejected["transitionsTotal"])
    assert await page.row_keys("rejected-transitions-table") == ["t-404"]
    assert await page.value("report-conflicts-count") == "1"
    assert await page.row_keys("report-conflicts-table") == [f"f-001/{WEEK}"]
    assert await page.value("refused-writes-count") == "1"
    assert await page.row_keys("refused-writes-table") == ["e-1"]

    await page.screenshot("admin-page")
    await page.screenshot("admin-page-phone", PHONE)

    await page.click("logout")  # the session ends: the form again, and no cookie
    assert await page.has("token") and not await page.has("nodes-table")
    assert await asyncio.to_thread(browser.get_cookies) == []
    await page.load(admin_url)
    assert not await page.has("nodes-table")
